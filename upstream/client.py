"""An HTTP client for one upstream registry: authenticates (see tokens.py), follows redirects
without leaking credentials, and never waits past its timeouts.

urllib3 rather than requests: it is already installed (boto3 depends on it), cooperates with
gevent's monkey-patched sockets, and streams bodies with bounded memory.
"""

from __future__ import annotations

import logging
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError

from upstream.config import UpstreamRegistry
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


class UpstreamUnavailable(Exception):
    """The upstream could not answer: unreachable, timed out, failing, or refused our login."""


def new_pool(connections_per_host: int = 32) -> urllib3.PoolManager:
    # Under gevent many requests run at once per worker: without a roomy pool urllib3 opens
    # extra connections, then warns and drops them.
    return urllib3.PoolManager(num_pools=16, maxsize=connections_per_host, block=False)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class UpstreamClient:
    def __init__(
        self,
        registry: UpstreamRegistry,
        pool: urllib3.PoolManager,
        timeout: urllib3.Timeout,
        tokens: TokenCache,
    ) -> None:
        self.registry = registry
        self._pool = pool
        self._timeout = timeout
        self._tokens = tokens
        self._challenge: Challenge | None = _UNKNOWN

    def request(
        self, method: str, name: str, path: str, headers: dict[str, str] | None = None
    ) -> urllib3.BaseHTTPResponse:
        """`method /v2/<upstream name of name>/<path>`, authenticated. The body is not read:
        the caller streams it and must `discard()` or `close()` the response."""
        remote = self.registry.remote_name(name)
        url = f"{self.registry.base_url}/v2/{remote}/{path}"
        scope = f"repository:{remote}:pull"
        try:
            response = self._send(method, url, headers or {}, self._authorization(scope, renew=False))
            if response.status != 401:
                return response
            # The token expired early or was revoked, or the upstream changed its mind about
            # how to authenticate: negotiate again once.
            discard(response)
            self._tokens.invalidate(self.registry.base_url, scope)
            return self._send(method, url, headers or {}, self._authorization(scope, renew=True))
        except HTTPError as exc:
            raise UpstreamUnavailable(f"{self.registry.url}: {type(exc).__name__}: {exc}") from None
        except UpstreamAuthError as exc:
            raise UpstreamUnavailable(str(exc)) from None

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
        key = self.registry.base_url
        token = None if renew else self._tokens.get(key, scope)
        if token is None:
            with self._tokens.lock(key, scope):
                token = None if renew else self._tokens.get(key, scope)  # another greenlet's
                if token is None:
                    token, expires_in = fetch_token(
                        self._pool, self.registry, challenge, scope, self._timeout
                    )
                    self._tokens.put(key, scope, token, expires_in)
        return f"Bearer {token}"

    def _ping(self) -> Challenge | None:
        """How the upstream wants us to authenticate: None (it does not), Basic or Bearer."""
        response = self._pool.request(
            "GET", f"{self.registry.base_url}/v2/", timeout=self._timeout, retries=False
        )
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

    def _send(
        self, method: str, url: str, headers: dict[str, str], authorization: str | None
    ) -> urllib3.BaseHTTPResponse:
        """Send, following redirects by hand: urllib3 would keep the Authorization header on
        a redirect to another host (a presigned storage URL must not see our token)."""
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization is not None and _origin(url) == origin:
                sent["Authorization"] = authorization
            response = self._pool.request(
                method,
                url,
                headers=sent,
                timeout=self._timeout,
                retries=False,
                redirect=False,
                preload_content=False,
            )
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return response
            discard(response)
            url = urljoin(url, location)
            if _origin(url) != origin:
                authorization = None  # and it stays off, even if a later hop comes back
        raise UpstreamUnavailable(f"{self.registry.url}: more than {MAX_REDIRECTS} redirects")


def discard(response: urllib3.BaseHTTPResponse) -> None:
    """Done with a response, whatever is left of its body. The connection goes back to the
    pool only once the rest is drained (a reused connection with unread bytes would garble the
    next response), and only a small rest is worth draining: otherwise it is closed."""
    remaining = getattr(response, "length_remaining", None)  # 0 for HEAD; None if chunked
    if remaining is not None and remaining <= 65536:
        try:
            response.drain_conn()
            response.release_conn()
            return
        except HTTPError:
            pass
    response.close()
