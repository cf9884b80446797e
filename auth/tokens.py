"""JSON Web Tokens: verifying them and signing the token endpoint's. The only module that touches
the JOSE library (joserfc, Authlib's JOSE implementation; `authlib.jose` itself is deprecated in
favour of it).

Each key is used with the one algorithm its type fixes (settings.jwk_algorithm): the algorithm
in a token's header is never trusted to choose, so `alg: none` and HS256 keyed with the public
key both fail like any wrong signature."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
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

from auth.token_shape import InvalidToken, VerifiedToken, looks_like_jwt
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


@dataclass(frozen=True)
class _Policy:
    """The claims a key's tokens must carry. `issued_here`: the token flow's own rules."""

    issued_here: bool
    registry: jwt.JWTClaimsRegistry  # built once: it reads the clock on every validate()

    def validate(self, claims: dict[str, Any]) -> None:
        self.registry.validate(claims)


def _policy(issued_here: bool, audience: str | None, issuer: str | None) -> _Policy:
    options: dict[str, Any] = {"exp": {"essential": True}}
    if audience:
        options["aud"] = {"essential": True, "value": audience}
    if issuer:
        options["iss"] = {"essential": True, "value": issuer}
    return _Policy(issued_here, jwt.JWTClaimsRegistry(leeway=LEEWAY_SECONDS, **options))


class TokenVerifier:
    """Checks a token's signature against the configured keys, then its `exp` (required), `nbf`,
    `iat`, and `aud`/`iss` by the rules of the key that verified it:

    - the token flow's own key (REGISTRY_TOKEN_PRIVATE_KEY's public half): `aud` and `iss` must
      be this registry's own, exactly what its token endpoint writes (REGISTRY_AUTH_AUDIENCE /
      REGISTRY_AUTH_ISSUER, else the service name). Another instance sharing the key pair (a
      staging registry) issues tokens for its own service: they are refused here.
    - JWT_REGISTRY_TOKENS_PUBLIC_KEY (an external issuer; serverless-registry's tooling mints
      without `aud`): `aud` and `iss` are checked when configured.
    - the same key pair configured as both: tokens the endpoint issued pass the first rule;
      others (minted with the private key elsewhere, e.g. without `iss`) must still carry this
      registry's `aud`, so the shared key cannot carry tokens across services either.

    Returns the claims and whether the token flow's own rules accepted them."""

    def __init__(self, settings: TokenSettings, signer: TokenSigner | None = None) -> None:
        # (key, its algorithms, the policies a token verified with it may pass, in order)
        self._keys: list[tuple[Key, list[str], list[_Policy]]] = []
        external = _policy(False, settings.audience, settings.issuer)
        external_key = None
        if settings.public_key is not None:
            external_key = _import(settings.public_key, "JWT_REGISTRY_TOKENS_PUBLIC_KEY")
        if signer is not None:
            policies = [_policy(True, settings.own_audience, settings.own_issuer)]
            if external_key is not None and external_key.thumbprint() == signer.public_key.thumbprint():
                policies.append(_policy(False, settings.own_audience, settings.issuer))
                external_key = None
            self._keys.append((signer.public_key, signer.algorithms, policies))
        if external_key is not None:
            assert settings.public_key is not None
            self._keys.append((external_key, _algorithms(settings.public_key), [external]))

    def verify(self, token: str) -> VerifiedToken:
        if not looks_like_jwt(token):
            raise InvalidToken("malformed token")
        refusal = InvalidToken("token signature is invalid or not from a trusted key")
        for key, algorithms, policies in self._keys:
            try:
                claims = jwt.decode(token, key, algorithms=algorithms).claims
            except (JoseError, ValueError, TypeError, UnicodeError):
                # Wrong key, wrong algorithm, bad signature, garbage: try the next key.
                continue
            for policy in policies:
                try:
                    policy.validate(claims)
                except ExpiredTokenError:
                    refusal = InvalidToken("token has expired")
                except MissingClaimError as exc:
                    refusal = InvalidToken(f"token lacks a required claim ({exc.claim})")
                except InvalidClaimError as exc:
                    refusal = InvalidToken(f"token claim {exc.claim!r} is not acceptable")
                except (JoseError, ValueError, TypeError):
                    refusal = InvalidToken("token claims are not acceptable")
                else:
                    return VerifiedToken.of(token, claims, policy.issued_here)
        raise refusal
