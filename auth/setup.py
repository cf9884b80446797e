"""Builds the auth pieces from settings: the middleware every request passes, and the token
endpoint's issuer when the token flow is on. Loading the keys here makes a bad key a startup
error (SettingsError), not a failure at the first request."""

from __future__ import annotations

from auth.access import AccessController
from auth.middleware import AuthMiddleware
from auth.token_server import TokenServer
from settings import Settings


def build_auth(settings: Settings) -> tuple[AuthMiddleware, TokenServer | None]:
    tokens = settings.tokens
    if tokens.signing_key is not None or tokens.verifies_jwts:
        # Only then: the JOSE library costs ~9 MiB per worker (auth/token_shape.py).
        from auth.tokens import TokenSigner, TokenVerifier
    signer = TokenSigner(tokens.signing_key) if tokens.signing_key is not None else None
    verifier = TokenVerifier(tokens, signer) if tokens.verifies_jwts else None
    access = AccessController(settings, verifier)
    middleware = AuthMiddleware(access, tokens.realm_url, settings.trusted_proxies)
    return middleware, TokenServer(signer, tokens) if signer is not None else None
