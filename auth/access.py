"""Access decisions: authenticate the request, then grant or refuse the actions it needs.

Refusals are OCI errors: 401 UNAUTHORIZED with a challenge when the client should (re)try with
credentials, 403 DENIED when a known identity lacks the right."""

from __future__ import annotations

from auth.basic import BasicAuthenticator, parse_basic
from auth.identity import ANONYMOUS_READER, Identity
from errors import Denied, Unauthorized
from settings import Settings


class AccessController:
    def __init__(self, settings: Settings) -> None:
        self._basic = BasicAuthenticator(settings.users)
        self._anonymous_pull = settings.anonymous_pull
        self._challenge = f'Basic realm="{settings.realm}", charset="UTF-8"'

    def authenticate(self, authorization: str | None) -> Identity:
        if not authorization:
            if self._anonymous_pull:
                return ANONYMOUS_READER
            raise self._unauthorized("authentication required")
        try:
            username, password = parse_basic(authorization)
        except Unauthorized:
            raise self._unauthorized("malformed credentials") from None
        identity = self._basic.authenticate(username, password)
        if identity is None:
            raise self._unauthorized("invalid username or password")
        return identity

    def authorize(self, authorization: str | None, needs: list[tuple[str | None, str]]) -> Identity:
        """The identity, if it may do every (repository, action) in `needs`."""
        identity = self.authenticate(authorization)
        for repository, action in needs:
            if not identity.may(repository, action):
                if identity.anonymous:
                    # Anonymous pull is on but this needs more: ask for credentials.
                    raise self._unauthorized("authentication required")
                raise Denied(detail={"repository": repository, "action": action})
        return identity

    def _unauthorized(self, message: str) -> Unauthorized:
        return Unauthorized(message, headers={"WWW-Authenticate": self._challenge})
