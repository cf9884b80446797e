"""An HTTP client for one upstream registry: authenticates (see tokens.py), follows redirects
only where the upstream's entry allows (see origins.py) and without leaking credentials, and
never waits past its timeouts or reads more than it can hold (see bodies.py).

urllib3 rather than requests: it is already installed (boto3 depends on it), cooperates with
gevent's monkey-patched sockets, and streams bodies with bounded memory.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urljoin

import urllib3
from urllib3.exceptions import HTTPError

from upstream import bodies
from upstream.config import UpstreamRegistry, UpstreamSettings
from upstream.origins import OriginPolicy, Pools, TargetRefused, describe, new_pools, origin_of
from upstream.pacing import retry_after_seconds
from upstream.tokens import (
    Challenge,
    TokenCache,
    UpstreamAuthError,
    basic_header,
    fetch_token,
    parse_challenges,
)

log = logging.getLogger("berth.upstream")

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_UNKNOWN = Challenge("unknown")  # not pinged yet (None means: no authentication needed)

__all__ = ["UpstreamClient", "UpstreamThrottled", "UpstreamUnavailable", "new_pools"]


class UpstreamUnavailable(Exception):
    """The upstream could not answer: unreachable, timed out, failing, refused our login, sent
    Berth somewhere it may not go, or broke a size or time bound."""


class UpstreamThrottled(UpstreamUnavailable):
    """The upstream answered 429 (too many requests), now or recently: nothing is sent to it
    until its Retry-After has passed."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamClient:
    def __init__(
        self,
        registry: UpstreamRegistry,
        pools: Pools,
        settings: UpstreamSettings,
        tokens: TokenCache,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._pools = pools
        self._policy = OriginPolicy(registry, pools)
        self._timeout = urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout)
        self._tokens = tokens
        self._token_key = f"{registry.base_url} {registry.username or ''}"  # one account's tokens
        self._challenge: Challenge | None = _UNKNOWN
        self._quiet_until = 0.0  # monotonic: no requests before (an answered 429's Retry-After)

    def request(
        self, method: str, name: str, path: str, headers: dict[str, str] | None = None
    ) -> urllib3.BaseHTTPResponse:
        """`method /v2/<upstream name of name>/<path>`, authenticated. The body is not read:
        the caller reads it within bounds (bodies.py) and must `discard()` or `close()` the
        response."""
        remote = self.registry.remote_name(name)
        url = f"{self.registry.base_url}/v2/{remote}/{path}"
        scope = f"repository:{remote}:pull"
        left = self._quiet_until - time.monotonic()
        if left > 0:
            raise UpstreamThrottled(f"{self.registry.url}: backing off for {left:.0f} s after a 429", left)
        try:
            response = self._send(method, url, headers or {}, self._authorization(scope, renew=False))
            if response.status != 401:
                return response
            # The token expired early or was revoked, or the upstream changed its mind about
            # how to authenticate: negotiate again once.
            self.discard(response)
            self._tokens.invalidate(self._token_key, scope)
            return self._send(method, url, headers or {}, self._authorization(scope, renew=True))
        except HTTPError as exc:
            raise UpstreamUnavailable(f"{self.registry.url}: {type(exc).__name__}: {exc}") from None
        except UpstreamAuthError as exc:
            raise UpstreamUnavailable(str(exc)) from None

    # -- bodies ------------------------------------------------------------------------------

    def read_small(self, response: urllib3.BaseHTTPResponse) -> bytes:
        """A small answer (a token realm's) whole: at most 64 KiB, within its deadline."""
        limit = bodies.SMALL_BODY_MAX
        return bodies.read_capped(response, limit, self.settings.body_seconds(limit))

    def discard(self, response: urllib3.BaseHTTPResponse) -> None:
        bodies.discard(response, self.settings.body_seconds(bodies.SMALL_BODY_MAX))

    def realm_request(
        self, method: str, url: str, headers: dict[str, str], body: str | None = None
    ) -> urllib3.BaseHTTPResponse:
        """A request to a token realm. Redirects are not followed: a realm answers itself, and
        a POST carrying the password must not be replayed to wherever a Location says."""
        pool = self._policy.realm_pool(url)
        return pool.request(
            method,
            url,
            body=body,
            headers=headers,
            timeout=self._timeout,
            retries=False,
            redirect=False,
            preload_content=False,
        )

    # -- authentication ----------------------------------------------------------------------

    def _authorization(self, scope: str, renew: bool) -> str | None:
        if renew or self._challenge is _UNKNOWN:
            self._challenge = self._ping()
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if self.registry.username is None:
                raise UpstreamAuthError(f"{self.registry.url} wants credentials and none are configured")
            return basic_header(self.registry.username, self.registry.password or "")
        key = self._token_key
        # After a 401 the refused token was invalidated (here and in the shared files), so a
        # token found now is a newer one another greenlet or worker negotiated meanwhile.
        token = self._tokens.get(key, scope)
        if token is None:
            with self._tokens.lock(key, scope):
                token = self._tokens.get(key, scope)  # another greenlet's or worker's
                if token is None:
                    token, expires_in = fetch_token(self, challenge, scope)
                    self._tokens.put(key, scope, token, expires_in)
        return f"Bearer {token}"

    def _ping(self) -> Challenge | None:
        """How the upstream wants us to authenticate: None (it does not), Basic or Bearer.
        Only the status and headers matter: the body is never read beyond a small drain."""
        response = self._send("GET", f"{self.registry.base_url}/v2/", {}, None)
        self.discard(response)
        if response.status == 200:
            return None
        if response.status != 401:
            raise UpstreamUnavailable(f"{self.registry.url}: /v2/ answered {response.status}")
        challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        for scheme in ("bearer", "basic"):
            for challenge in challenges:
                if challenge.scheme == scheme:
                    return challenge
        raise UpstreamUnavailable(f"{self.registry.url}: 401 without a Basic or Bearer challenge")

    # -- sending -----------------------------------------------------------------------------

    def _send(
        self, method: str, url: str, headers: dict[str, str], authorization: str | None
    ) -> urllib3.BaseHTTPResponse:
        """Send, following redirects by hand: only where the origin policy allows, and with
        the Authorization header only while every hop stayed on the upstream's own origin (a
        presigned storage URL must not see our token)."""
        pool = self._pools.trusted
        at_home = True
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization is not None and at_home:
                sent["Authorization"] = authorization
            response = pool.request(
                method,
                url,
                headers=sent,
                timeout=self._timeout,
                retries=False,
                redirect=False,
                preload_content=False,
            )
            if response.status == 429:
                self._throttled(response)
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return response
            self.discard(response)
            target = urljoin(url, location)
            try:
                pool = self._policy.redirect_pool(url, target)
            except ValueError:  # a Location urllib cannot even parse (a bad port...)
                raise TargetRefused(f"{self.registry.url}: unusable redirect Location") from None
            at_home = at_home and self._policy.is_home(target)
            url = target
        where = describe(origin_of(url))
        raise TargetRefused(f"{self.registry.url}: more than {MAX_REDIRECTS} redirects (last to {where})")

    def _throttled(self, response: urllib3.BaseHTTPResponse) -> None:
        """A 429: keep quiet for its Retry-After (every request of this process to this
        upstream fails at once meanwhile; a stored tag is served, a miss answered 429)."""
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        self.discard(response)
        self._quiet_until = max(self._quiet_until, time.monotonic() + wait)
        log.warning(
            "upstream %s answered 429 (too many requests): nothing sent to it for %.0f s",
            self.registry.url,
            wait,
        )
        raise UpstreamThrottled(f"{self.registry.url}: answered 429", wait)
