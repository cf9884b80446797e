"""JSON Web Tokens: verifying them and signing the token endpoint's. The only module that touches
the JOSE library (joserfc, Authlib's JOSE implementation; `authlib.jose` itself is deprecated in
favour of it).

Each key is used with the one algorithm its type fixes (settings.jwk_algorithm): the algorithm
in a token's header is never trusted to choose, so `alg: none` and HS256 keyed with the public
key both fail like any wrong signature."""

from __future__ import annotations

import time
import warnings
from typing import Any

from joserfc import jwt
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    SecurityWarning,
)
from joserfc.jwk import JWKRegistry, Key

from auth.token_shape import InvalidToken, looks_like_jwt
from settings import SettingsError, TokenSettings, jwk_algorithm

# Clock skew tolerated on `exp`, `nbf` and `iat`.
LEEWAY_SECONDS = 30
# RFC 9864 renames EdDSA to Ed25519; both are accepted and EdDSA, which every verifier knows, is
# what Ed25519 tokens are signed with. joserfc would warn about it on every token.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)


def _algorithms(jwk: dict[str, Any]) -> list[str]:
    alg = jwk_algorithm(jwk)
    # An Ed25519 signature is named EdDSA (RFC 8037) or Ed25519 (RFC 9864): the same signature.
    return ["EdDSA", "Ed25519"] if alg == "EdDSA" else [alg]


def _import(jwk: dict[str, Any], variable: str) -> Key:
    try:
        key = JWKRegistry.import_key(dict(jwk))
    except (JoseError, ValueError, TypeError, KeyError):
        # e.g. an EC point that is not on its curve; never echo the key.
        raise SettingsError(f"{variable} is not a usable {jwk.get('kty')} key") from None
    if jwk.get("kty") == "RSA" and key.raw_value.key_size < 2048:
        raise SettingsError(f"{variable}: RSA keys must have at least 2048 bits")
    return key


class TokenSigner:
    """Signs the token endpoint's tokens with REGISTRY_TOKEN_PRIVATE_KEY."""

    def __init__(self, jwk: dict[str, Any]) -> None:
        self._key = _import(jwk, "REGISTRY_TOKEN_PRIVATE_KEY")
        self._algorithm = _algorithms(jwk)[0]
        public = self._key.as_dict(private=False)
        self.public_key = _import(public, "REGISTRY_TOKEN_PRIVATE_KEY")
        self.public_jwk = public
        self.algorithms = _algorithms(jwk)
        # A private JWK whose `d` does not match its public members would sign tokens nobody
        # can verify: find out at start, not at the first push.
        probe = self.sign({"probe": True, "exp": int(time.time()) + 60})
        try:
            jwt.decode(probe, self.public_key, algorithms=self.algorithms)
        except JoseError:
            raise SettingsError(
                "REGISTRY_TOKEN_PRIVATE_KEY: its private and public parts do not match"
            ) from None

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            {"alg": self._algorithm, "typ": "JWT"}, claims, self._key, algorithms=[self._algorithm]
        )


class TokenVerifier:
    """Checks a token's signature against the configured keys, then its `exp` (required), `nbf`,
    `iat`, and `aud`/`iss` when configured. Returns the claims."""

    def __init__(self, settings: TokenSettings, signer: TokenSigner | None = None) -> None:
        self._keys: list[tuple[Key, list[str]]] = []
        if signer is not None:
            self._keys.append((signer.public_key, signer.algorithms))
        if settings.public_key is not None:
            key = _import(settings.public_key, "JWT_REGISTRY_TOKENS_PUBLIC_KEY")
            self._keys.append((key, _algorithms(settings.public_key)))
        options: dict[str, Any] = {"exp": {"essential": True}}
        if settings.audience:
            options["aud"] = {"essential": True, "value": settings.audience}
        if settings.issuer:
            options["iss"] = {"essential": True, "value": settings.issuer}
        self._options = options

    def verify(self, token: str) -> dict[str, Any]:
        if not looks_like_jwt(token):
            raise InvalidToken("malformed token")
        claims = None
        for key, algorithms in self._keys:
            try:
                claims = jwt.decode(token, key, algorithms=algorithms).claims
                break
            except (JoseError, ValueError, TypeError, UnicodeError):
                # Wrong key, wrong algorithm, bad signature, garbage: try the next key.
                continue
        if claims is None:
            raise InvalidToken("token signature is invalid or not from a trusted key")
        registry = jwt.JWTClaimsRegistry(leeway=LEEWAY_SECONDS, **self._options)
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise InvalidToken("token has expired") from None
        except MissingClaimError as exc:
            raise InvalidToken(f"token lacks a required claim ({exc.claim})") from None
        except InvalidClaimError as exc:
            raise InvalidToken(f"token claim {exc.claim!r} is not acceptable") from None
        except (JoseError, ValueError, TypeError):
            raise InvalidToken("token claims are not acceptable") from None
        return claims
