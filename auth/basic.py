"""HTTP Basic credentials: parsing and constant-time checking against the configured users."""

from __future__ import annotations

import base64
import binascii
import hmac

from auth.identity import PULL, PUSH, Identity, user_principal
from errors import Unauthorized
from settings import User


def parse_basic(header_value: str) -> tuple[str, str]:
    """(username, password) from `Basic <base64>`; UNAUTHORIZED if malformed."""
    scheme, _, encoded = header_value.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Unauthorized("malformed Basic credentials")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise Unauthorized("malformed Basic credentials") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("malformed Basic credentials")
    return username, password


class BasicAuthenticator:
    def __init__(self, users: tuple[User, ...]) -> None:
        self._users = [(u.name.encode(), u.password.encode(), u) for u in users]

    def authenticate(self, username: str, password: str) -> Identity | None:
        """The matching user's identity, or None. Every configured user is compared, each in
        constant time, so timing tells nothing about which part was wrong."""
        given_user, given_pass = username.encode(), password.encode()
        found = None
        for name, secret, user in self._users:
            name_ok = hmac.compare_digest(name, given_user)
            pass_ok = hmac.compare_digest(secret, given_pass)
            if name_ok and pass_ok:
                found = user
        if found is None or not password:
            return None
        actions = frozenset({PULL, PUSH}) if found.can_push else frozenset({PULL})
        return Identity(user_principal(found.name), found.name, actions)
