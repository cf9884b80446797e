"""Keys and tokens for the JWT tests: real key pairs made here, tokens signed with them, and
forged ones (alg none, HS256 keyed with the public key) built by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey


def keypair(kind: str = "EC") -> tuple[dict[str, Any], dict[str, Any]]:
    """(private JWK, public JWK): EC P-256 (ES256), RSA 2048 (RS256) or OKP Ed25519 (EdDSA)."""
    if kind == "EC":
        key = ECKey.generate_key("P-256")
    elif kind == "RSA":
        key = RSAKey.generate_key(2048)
    else:
        key = OKPKey.generate_key("Ed25519")
    return dict(key.as_dict(private=True)), dict(key.as_dict(private=False))


def b64(jwk: dict[str, Any]) -> str:
    """How JWT_REGISTRY_TOKENS_PUBLIC_KEY takes a key (serverless-registry: btoa(JSON))."""
    return base64.b64encode(json.dumps(jwk).encode()).decode()


ALGORITHMS = {"EC": "ES256", "RSA": "RS256", "OKP": "EdDSA"}


def mint(private_jwk: dict[str, Any], ttl: int | None = 300, **claims: Any) -> str:
    """A token signed with `private_jwk`; `exp` is now + ttl unless given (ttl None: no exp)."""
    if ttl is not None:
        claims.setdefault("exp", int(time.time()) + ttl)
    alg = ALGORITHMS[private_jwk["kty"]]
    return jwt.encode(
        {"alg": alg, "typ": "JWT"}, claims, JWKRegistry.import_key(private_jwk), algorithms=[alg]
    )


def _part(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None = None) -> str:
    """An unsigned (`alg: none`) token, or one HMAC-SHA256-signed with `secret`."""
    signing_input = f"{_part(header)}.{_part(claims)}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    return {"exp": int(time.time()) + 300, **extra}
