"""The client's address as seen through trusted reverse proxies. Standard library only (settings
parses FORWARDED_ALLOW_IPS with it in the gunicorn master, before gevent patches anything).

Behind a proxy, the peer (REMOTE_ADDR) is the proxy and the client is in `X-Forwarded-For`,
which nginx's `$proxy_add_x_forwarded_for` ends with the address it saw. Anyone can send that
header, so it is believed only from a trusted peer, using the list gunicorn itself trusts for
`X-Forwarded-Proto` (FORWARDED_ALLOW_IPS, default `127.0.0.1,::1`), read with gunicorn 27's rules:
comma-separated addresses or CIDR networks (host bits must be clear), `*` trusts every peer, and
a peer without an IP address (a UNIX socket) is trusted.

From a trusted peer, hops are read from the right: the first address that is not itself a
trusted proxy is the client (so a CDN in front of nginx, both listed, still yields the client).
With `*` only the last hop is believed: every earlier one was written by whoever connected to
the proxy. A hop that is not a plain IP address ends the walk at the last good one."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,::1"
MAX_REMEMBERED = 1024
MAX_ADDRESS_TEXT = 64  # the longest IPv6 text (with an IPv4 tail and a zone) is shorter
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[_Network, ...] = ()
    trust_all: bool = False  # "*"
    # value -> (canonical address or None, trusted): parsing and matching cost microseconds, and
    # few clients are active at once. Cleared when full.
    _seen: dict[str, tuple[str | None, bool]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, value: str) -> TrustedProxies:
        """FORWARDED_ALLOW_IPS as gunicorn 27 reads it; ValueError names a bad entry."""
        entries = [e.strip() for e in value.split(",") if e.strip()]
        networks = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                networks.append(ipaddress.ip_network(entry))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
        return cls(tuple(networks), "*" in entries)

    def _trusts(self, address: _Address) -> bool:
        return self.trust_all or any(address in network for network in self.networks)

    def _classify(self, value: str) -> tuple[str | None, bool]:
        """(the address in canonical form, or None if it is not one; whether it is a proxy)."""
        if len(value) > MAX_ADDRESS_TEXT:
            return None, False
        known = self._seen.get(value)
        if known is None:
            try:
                address = ipaddress.ip_address(value)
                known = (str(address), self._trusts(address))
            except ValueError:
                known = (None, False)
            if len(self._seen) >= MAX_REMEMBERED:
                self._seen.clear()
            self._seen[value] = known
        return known

    def trusts_peer(self, environ: Mapping[str, Any]) -> bool:
        """Whether the peer is a trusted proxy, whose X-Forwarded-* headers may be believed."""
        peer_ip, trusted = self._classify(str(environ.get("REMOTE_ADDR") or ""))
        return trusted or peer_ip is None

    def client_address(self, environ: Mapping[str, Any]) -> str:
        """The client's address for a WSGI request: the peer, or what trusted proxies say."""
        peer = str(environ.get("REMOTE_ADDR") or "")
        peer_ip, trusted = self._classify(peer)
        if peer_ip is not None and not trusted:
            return peer_ip
        client = peer_ip if peer_ip is not None else peer
        # gunicorn joins repeated header lines with ",": one list, oldest hop first.
        for hop in reversed(str(environ.get("HTTP_X_FORWARDED_FOR") or "").split(",")):
            hop_ip, trusted = self._classify(hop.strip())
            if hop_ip is None:
                break
            client = hop_ip
            if self.trust_all or not trusted:
                break
        return client


DEFAULT_TRUSTED_PROXIES = TrustedProxies.parse(DEFAULT_FORWARDED_ALLOW_IPS)
