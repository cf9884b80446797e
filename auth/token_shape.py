"""What the rest of Berth knows about tokens without the JOSE library: the error, and how to
tell a JWT from a password. auth/tokens.py (joserfc, and the `cryptography` package under it:
about 9 MiB per worker process) is imported only when JWT auth or the token flow is configured."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

# A bound on what is parsed at all; real tokens are well under 2 KiB.
MAX_TOKEN_BYTES = 16 * 1024
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class InvalidToken(Exception):
    """The token is not acceptable. The message says why in general terms and never quotes the
    token: it may end up in a response or a log."""


@dataclass(frozen=True)
class VerifiedToken:
    """A token whose signature and claims passed. `issued_here`: verified with the token flow's
    own key under its own rules (`aud` and `iss` this registry's), so its claims are what our
    token endpoint wrote; otherwise it comes from an external issuer
    (JWT_REGISTRY_TOKENS_PUBLIC_KEY)."""

    claims: dict[str, Any]
    issued_here: bool
    # sha256 of the token itself: names the principal of a token without a subject. Never the
    # token: this may be logged or stored with an upload.
    digest: str = field(repr=False)

    @classmethod
    def of(cls, token: str, claims: dict[str, Any], issued_here: bool) -> VerifiedToken:
        return cls(claims, issued_here, hashlib.sha256(token.encode()).hexdigest())


def looks_like_jwt(value: str) -> bool:
    """Whether a Basic password is a compact JWS (three base64url parts) rather than a password."""
    return len(value) <= MAX_TOKEN_BYTES and bool(_JWT_SHAPE.fullmatch(value))
