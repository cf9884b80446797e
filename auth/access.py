"""Access decisions: authenticate the request, then grant or refuse the actions it needs.

Credentials: `Basic` with a configured user's password, `Basic` with a JWT as the password (any
username, as serverless-registry takes them), or `Bearer <jwt>` (from the token endpoint or
minted elsewhere). Refusals are OCI errors: 401 UNAUTHORIZED with a challenge when the client
should (re)try with credentials, 403 DENIED when a known identity lacks the right.

With a signing key (the token flow) challenges are `Bearer realm=...,service=...,scope=...`, so
docker, podman and skopeo fetch a token from /v2/token; otherwise they are `Basic`.

Failed logins are counted per client address (and username) and slowed past a burst with 429
TOOMANYREQUESTS (auth/failures.py). While a client is slowed its passwords are not checked at
all, right or wrong: if a right one got through, the answer would tell a guesser so. Tokens
cannot be guessed, so they are still checked and a valid one passes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from auth.basic import BasicAuthenticator, parse_basic
from auth.claims import challenge_scopes, identity_from_claims
from auth.failures import FailedLoginLimiter
from auth.identity import ANONYMOUS_READER, Identity
from auth.token_shape import InvalidToken, looks_like_jwt
from errors import Denied, TooManyRequests, Unauthorized
from observability.metrics import auth_failure
from settings import Settings

if TYPE_CHECKING:  # auth.tokens loads the JOSE library: only when JWTs are configured
    from auth.tokens import TokenVerifier

Needs = list[tuple[str | None, str]]
# The client's address, asked for only when failed logins need it (it costs a few microseconds).
ClientAddress = Callable[[], str]
log = logging.getLogger("berth.auth")


class _Refused(Exception):
    def __init__(self, message: str, bad_token: bool = False, kind: str = "bad_password") -> None:
        super().__init__(message)
        self.bad_token = bad_token
        self.kind = "bad_token" if bad_token else kind  # for the auth failure metric


class AccessController:
    def __init__(
        self,
        settings: Settings,
        verifier: TokenVerifier | None = None,
        limiter: FailedLoginLimiter | None = None,
    ) -> None:
        self._basic = BasicAuthenticator(settings.users)
        limits = settings.failed_logins
        self._limiter = limiter or FailedLoginLimiter(limits.burst, limits.per_minute)
        self._anonymous_pull = settings.anonymous_pull
        self._verifier = verifier
        self._token_flow = settings.tokens.token_flow
        self._service = settings.tokens.service
        self._basic_challenge = f'Basic realm="{settings.realm}", charset="UTF-8"'
        self._basic_realm = settings.realm

    @property
    def token_flow(self) -> bool:
        return self._token_flow

    def authenticate(
        self, authorization: str | None, realm_url: str = "", needs: Needs = (), client: ClientAddress = str
    ) -> Identity:
        """The identity behind the request's credentials; anonymous ones only with anonymous
        pull. In the token flow the version check (`needs` empty) always wants credentials or a
        token, so clients learn where to get one (docker's ping decides that once). `client` gives
        the client's address (failed logins are counted by it)."""
        if not authorization:
            if self._anonymous_pull and (needs or not self._token_flow):
                return ANONYMOUS_READER
            auth_failure("no_credentials")
            raise self._unauthorized("authentication required", realm_url, needs)
        try:
            return self._identify(authorization, client)
        except _Refused as exc:
            auth_failure(exc.kind)
            bearer = authorization.lstrip().lower().startswith("bearer")
            raise self._unauthorized(str(exc), realm_url, needs, exc.bad_token, bearer) from None

    def authorize(
        self, authorization: str | None, needs: Needs, realm_url: str = "", client: ClientAddress = str
    ) -> Identity:
        """The identity, if it may do every (repository, action) in `needs`."""
        identity = self.authenticate(authorization, realm_url, needs, client)
        for repository, action in needs:
            if not identity.may(repository, action):
                if identity.anonymous:
                    # Anonymous pull is on but this needs more: ask for credentials.
                    auth_failure("no_credentials")
                    raise self._unauthorized("authentication required", realm_url, needs)
                auth_failure("denied")
                headers = {}
                if self._token_flow and authorization and authorization.lstrip().lower().startswith("bearer"):
                    # RFC 6750: a token that lacks the scope gets 403 with insufficient_scope.
                    headers["WWW-Authenticate"] = self._bearer(realm_url, needs, "insufficient_scope")
                raise Denied(detail={"repository": repository, "action": action}, headers=headers)
        return identity

    def authenticate_for_token(self, authorization: str | None, client: ClientAddress = str) -> Identity:
        """Who asks the token endpoint: a Basic user (password or JWT), a Bearer JWT, or without
        credentials an anonymous client, which gets only what anonymous pull allows. Its
        challenge is always Basic: a Bearer one would send the client back here."""
        if not authorization:
            if self._anonymous_pull:
                return ANONYMOUS_READER
            auth_failure("no_credentials")
            raise Unauthorized("authentication required", headers={"WWW-Authenticate": self._basic_challenge})
        try:
            identity = self._identify(authorization, client)
        except _Refused as exc:
            auth_failure(exc.kind)
            raise Unauthorized(str(exc), headers={"WWW-Authenticate": self._basic_challenge}) from None
        if identity.expires_at is not None and identity.expires_at <= time.time():
            # Accepted within the clock-skew leeway, but a token issued for it would be born
            # expired: the client must come back with a live credential.
            raise Unauthorized("token has expired", headers={"WWW-Authenticate": self._basic_challenge})
        return identity

    # --------------------------------------------------------------------------- internals

    def _identify(self, authorization: str, client: ClientAddress) -> Identity:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            try:
                if self._verifier is None:
                    raise _Refused("bearer tokens are not accepted by this registry", kind="bad_token")
                return self._from_token(credentials.strip())
            except _Refused:
                self._failed(client, None)
                raise
        try:
            username, password = parse_basic(authorization)
        except Unauthorized:
            self._failed(client, None)
            raise _Refused("malformed credentials", kind="malformed") from None
        slowed = self._limiter.retry_after(client(), username) if self._limiter.counting else None
        if slowed:
            # No password comparison while slowed (its answer is what a guesser wants), but a
            # token cannot be guessed: a valid one still gets in.
            if self._verifier is not None and looks_like_jwt(password):
                try:
                    return self._from_token(password)
                except _Refused:
                    pass
            raise self._too_many(slowed)
        identity = self._basic.authenticate(username, password)
        if identity is not None:
            return identity
        try:
            if self._verifier is not None and looks_like_jwt(password):
                return self._from_token(password)
            raise _Refused("invalid username or password")
        except _Refused:
            self._failed(client, username)
            raise

    def _failed(self, client_address: ClientAddress, username: str | None) -> None:
        """Count a failure, or if this client is already slowed answer 429 (and count nothing:
        these credentials were refused unexamined, or would have been)."""
        if not self._limiter.enabled:
            return
        client = client_address()
        slowed = self._limiter.retry_after(client, username)
        if slowed:
            raise self._too_many(slowed)
        self._limiter.record_failure(client, username)
        slowed = self._limiter.retry_after(client, username)
        if slowed:
            # Once per spent burst (then once per refill). Never the username: people type
            # passwords into it.
            log.warning("failed logins from %s: slowed down, next check in %d s", client or "-", slowed)

    @staticmethod
    def _too_many(retry_after: int) -> TooManyRequests:
        auth_failure("throttled")
        return TooManyRequests(
            "too many failed logins from this address: retry later",
            headers={"Retry-After": str(retry_after)},
        )

    def _from_token(self, token: str) -> Identity:
        assert self._verifier is not None
        try:
            return identity_from_claims(self._verifier.verify(token))
        except InvalidToken as exc:
            raise _Refused(str(exc), bad_token=True) from None

    def _unauthorized(
        self, message: str, realm_url: str, needs: Iterable, bad_token: bool = False, bearer: bool = False
    ) -> Unauthorized:
        error = "invalid_token" if bad_token else None
        if self._token_flow:
            challenge = self._bearer(realm_url, needs, error)
        elif bearer:
            # A client that spoke Bearer without a token flow: say its token is bad.
            challenge = f'Bearer realm="{self._basic_realm}",error="invalid_token"'
        else:
            challenge = self._basic_challenge
        return Unauthorized(message, headers={"WWW-Authenticate": challenge})

    def _bearer(self, realm_url: str, needs: Iterable, error: str | None = None) -> str:
        parts = [f'realm="{realm_url}"', f'service="{self._service}"']
        scopes = challenge_scopes(needs)
        if scopes:
            parts.append(f'scope="{" ".join(str(s) for s in scopes)}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)
