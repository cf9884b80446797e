"""Where Berth may connect on an upstream's behalf.

An upstream is trusted to answer for itself, not to point Berth at other hosts: a redirect, or
a token realm on another origin, could otherwise make Berth fetch from loopback services, cloud
metadata endpoints or the internal network (SSRF), and store or relay what comes back. So:

- the upstream's own origin (the scheme, host and port of its configured URL) is always fine;
- a redirect anywhere else must match the entry's `redirect_hosts`, and must not go from https
  to plain http;
- every other origin (an allowed redirect target, a token realm elsewhere) must be on a public
  address, unless the entry says `allow_private_redirects` and lists the host. The address
  checked is the one the connection actually reached (the socket's peer), so DNS that answers
  a public address to a lookup and a private one to the connection (rebinding) gains nothing.

Comparing by origin, not by "is the upstream itself private": an upstream on 127.0.0.1 (a test,
a sidecar) still cannot send Berth to another port of the same machine.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError

from upstream.config import UpstreamRegistry

Origin = tuple[str, str, int]  # scheme, host (lower-case, IPv6 without brackets), port


class TargetRefused(HTTPError):
    """A redirect or realm leads where this upstream may not send Berth. An urllib3 HTTPError,
    so it counts as a failed upstream request wherever it is raised."""


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def describe(origin: Origin) -> str:
    """An origin for logs: never a path or query (a presigned URL's query is a credential)."""
    scheme, host, port = origin
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def is_public(address: str) -> bool:
    """False for loopback, private, link-local, shared (CGNAT), multicast, reserved and
    unspecified addresses, and for IPv4 addresses in IPv6 clothing (::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) aside
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _PublicPeerOnly:
    """Refuses a connection whose peer is not a public address, once connected: the check is
    on the address really reached, whatever DNS said before."""

    host: str
    port: int

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        try:
            peer = sock.getpeername()[0]
            public = is_public(peer)
        except (OSError, ValueError):
            peer, public = "?", False
        if not public:
            sock.close()
            raise TargetRefused(f"{self.host}:{self.port} is on a non-public address ({peer})")
        return sock


class PublicHTTPConnection(_PublicPeerOnly, HTTPConnection):
    pass


class PublicHTTPSConnection(_PublicPeerOnly, HTTPSConnection):
    pass


class PublicHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = PublicHTTPConnection


class PublicHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = PublicHTTPSConnection


@dataclass(frozen=True)
class Pools:
    """Connection pools shared by every upstream of a worker: `trusted` for upstreams' own
    origins (and hosts an entry allows on private addresses), `public_only` for the rest."""

    trusted: urllib3.PoolManager
    public_only: urllib3.PoolManager


def new_pools(connections_per_host: int = 32) -> Pools:
    # Under gevent many requests run at once per worker: without a roomy pool urllib3 opens
    # extra connections, then warns and drops them.
    def pool() -> urllib3.PoolManager:
        return urllib3.PoolManager(num_pools=16, maxsize=connections_per_host, block=False)

    public_only = pool()
    public_only.pool_classes_by_scheme = {
        "http": PublicHTTPConnectionPool,
        "https": PublicHTTPSConnectionPool,
    }
    return Pools(pool(), public_only)


class OriginPolicy:
    """The rules above for one upstream: which pool may carry a request to a URL, if any."""

    def __init__(self, registry: UpstreamRegistry, pools: Pools) -> None:
        self._registry = registry
        self._pools = pools
        self.home = origin_of(registry.base_url)

    def is_home(self, url: str) -> bool:
        return origin_of(url) == self.home

    def redirect_pool(self, from_url: str, to_url: str) -> urllib3.PoolManager:
        target = origin_of(to_url)
        where = f"{self._registry.url}: redirect to {describe(target)}"
        if target[0] not in ("http", "https") or not target[1]:
            raise TargetRefused(f"{where} refused: not an http(s) URL")
        if urlsplit(from_url).scheme == "https" and target[0] == "http":
            raise TargetRefused(f"{where} refused: a downgrade from https")
        if target == self.home:
            return self._pools.trusted
        if not self._listed(target):
            raise TargetRefused(
                f"{where} refused: not the upstream's own origin; add the host to its redirect_hosts"
            )
        return self._pools.trusted if self._registry.allow_private_redirects else self._pools.public_only

    def realm_pool(self, realm_url: str) -> urllib3.PoolManager:
        """A token realm is the upstream's to name (Docker Hub's is auth.docker.io), but on
        another origin it must be public unless the entry allows that host on private ones."""
        target = origin_of(realm_url)
        if target == self.home or (self._registry.allow_private_redirects and self._listed(target)):
            return self._pools.trusted
        return self._pools.public_only

    def _listed(self, target: Origin) -> bool:
        scheme, host, port = target
        return any(p.matches(scheme, host, port) for p in self._registry.redirect_hosts)
