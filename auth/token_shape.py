"""What the rest of Berth knows about tokens without the JOSE library: the error, and how to
tell a JWT from a password. auth/tokens.py (joserfc, and the `cryptography` package under it:
about 9 MiB per worker process) is imported only when JWT auth or the token flow is configured."""

from __future__ import annotations

import re

# A bound on what is parsed at all; real tokens are well under 2 KiB.
MAX_TOKEN_BYTES = 16 * 1024
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class InvalidToken(Exception):
    """The token is not acceptable. The message says why in general terms and never quotes the
    token: it may end up in a response or a log."""


def looks_like_jwt(value: str) -> bool:
    """Whether a Basic password is a compact JWS (three base64url parts) rather than a password."""
    return len(value) <= MAX_TOKEN_BYTES and bool(_JWT_SHAPE.fullmatch(value))
