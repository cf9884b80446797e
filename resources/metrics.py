"""`GET /metrics`: Prometheus metrics for this instance, not for the public.

Readable by a scraper at an address in REGISTRY_METRICS_ALLOW (default loopback; the client's
address as seen through the trusted proxies of FORWARDED_ALLOW_IPS, so a request relayed by
nginx counts as its client's, not as nginx's), or by one sending `Authorization: Bearer
<REGISTRY_METRICS_TOKEN>`. Anyone else gets 401 when a token could let them in, 403 when
nothing could. With neither setting allowing anyone, the route does not exist."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

import falcon

from auth.client_address import TrustedProxies
from errors import Denied, Unauthorized
from settings import ObservabilitySettings

CHALLENGE = 'Bearer realm="berth-metrics"'


class Metrics:
    scope = "public"  # the auth middleware lets it through: its own rules are below

    def __init__(
        self,
        scrape: Callable[[str | None], tuple[bytes, str]],
        settings: ObservabilitySettings,
        proxies: TrustedProxies,
    ) -> None:
        self._scrape = scrape
        self._token = settings.metrics_token.encode() if settings.metrics_token else None
        self._allow = settings.metrics_allow
        self._proxies = proxies

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._check(req)
        resp.data, resp.content_type = self._scrape(req.get_header("Accept"))

    def _check(self, req: falcon.Request) -> None:
        if self._allowed_address(self._proxies.client_address(req.env)):
            return
        if self._token is None:
            raise Denied("metrics are not readable from this address")
        scheme, _, credentials = (req.get_header("Authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._token):
            return
        challenge = CHALLENGE + (',error="invalid_token"' if scheme else "")
        raise Unauthorized("a metrics token is required", headers={"WWW-Authenticate": challenge})

    def _allowed_address(self, client: str) -> bool:
        if not self._allow:
            return False
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._allow)
