"""The client address seen through trusted proxies (auth/client_address.py), and that its reading of
FORWARDED_ALLOW_IPS is gunicorn 27's own: the same values accepted, the same peers trusted."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from gunicorn.config import validate_string_to_addr_list
from gunicorn.http.message import _ip_in_allow_list

from auth.client_address import DEFAULT_TRUSTED_PROXIES, TrustedProxies

VALUES = [
    "127.0.0.1,::1",
    "10.0.0.0/8",
    "10.0.0.5, 192.168.0.0/16 ,2001:db8::/32",
    "*",
    "10.0.0.1,*",
    "",
    "192.168.1.1/24",  # host bits set: gunicorn refuses it
    "nginx.internal",
    "10.0.0.300",
    "::ffff:10.0.0.1",
]
PEERS = ["127.0.0.1", "::1", "10.1.2.3", "192.168.9.9", "2001:db8::5", "203.0.113.9", "::ffff:10.0.0.1"]


def _gunicorn_accepts(value: str) -> bool:
    try:
        validate_string_to_addr_list(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("value", VALUES)
def test_same_values_as_gunicorn(value):
    ours = None
    with contextlib.suppress(ValueError):
        ours = TrustedProxies.parse(value)
    assert (ours is not None) == _gunicorn_accepts(value)
    if ours is None:
        return
    allow = validate_string_to_addr_list(value)
    networks = [ipaddress.ip_network(a) for a in allow if a != "*"]
    for peer in PEERS:
        trusted = ours.client_address({"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": "198.51.100.1"})
        assert (trusted == "198.51.100.1") == _ip_in_allow_list(peer, allow, networks), peer


def env(peer: str | None, forwarded: str | None = None) -> dict[str, str]:
    e = {}
    if peer is not None:
        e["REMOTE_ADDR"] = peer
    if forwarded is not None:
        e["HTTP_X_FORWARDED_FOR"] = forwarded
    return e


@pytest.mark.parametrize(
    "allow,peer,forwarded,client",
    [
        ("127.0.0.1,::1", "203.0.113.9", "192.0.2.1", "203.0.113.9"),  # untrusted peer: its own address
        ("127.0.0.1,::1", "127.0.0.1", None, "127.0.0.1"),  # the proxy itself
        ("127.0.0.1,::1", "127.0.0.1", "192.0.2.1", "192.0.2.1"),
        ("127.0.0.1,::1", "::1", " 2001:DB8::1 ", "2001:db8::1"),  # normalised
        ("127.0.0.1,::1", "127.0.0.1", "6.6.6.6, 192.0.2.1", "192.0.2.1"),  # the proxy's own hop
        ("127.0.0.1,::1", "127.0.0.1", "6.6.6.6,192.0.2.1,127.0.0.1", "192.0.2.1"),  # proxies skipped
        ("10.0.0.0/8,127.0.0.1", "127.0.0.1", "192.0.2.1, 10.0.0.7", "192.0.2.1"),  # CDN then nginx
        ("*", "127.0.0.1", "192.0.2.1, 10.0.0.7", "10.0.0.7"),  # with *, the last hop only
        ("127.0.0.1,::1", "127.0.0.1", "unknown", "127.0.0.1"),  # garbage: the peer
        ("127.0.0.1,::1", "127.0.0.1", "192.0.2.1, garbage", "127.0.0.1"),
        ("127.0.0.1,::1", "127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1,::1", None, "192.0.2.1", "192.0.2.1"),  # a UNIX socket: trusted (gunicorn)
        ("127.0.0.1,::1", None, None, ""),
    ],
)
def test_client_address(allow, peer, forwarded, client):
    assert TrustedProxies.parse(allow).client_address(env(peer, forwarded)) == client


def test_default_is_gunicorns():
    assert TrustedProxies.parse("127.0.0.1,::1") == DEFAULT_TRUSTED_PROXIES
    assert TrustedProxies.parse("").client_address(env("127.0.0.1", "192.0.2.1")) == "127.0.0.1"


def test_memory_is_bounded():
    proxies = TrustedProxies.parse("*")
    for i in range(5000):
        assert (
            proxies.client_address(env("127.0.0.1", f"10.0.{i // 256}.{i % 256}"))
            == f"10.0.{i // 256}.{i % 256}"
        )
    assert proxies.client_address(env("127.0.0.1", "1" * 10_000)) == "127.0.0.1"
    assert len(proxies._seen) <= 1024
