"""Failed logins slowed by a real gunicorn with two gevent workers (each worker counts on its
own), and the client address taken from X-Forwarded-For only when the peer is a proxy listed in
FORWARDED_ALLOW_IPS, exactly as gunicorn reads that variable."""

from __future__ import annotations

import base64
import http.client
import time

import pytest

from .process import RO, RW
from .servers import BerthServer

pytestmark = pytest.mark.e2e

BURST = 5
PROXY = "127.0.0.2"  # the only trusted proxy; tests connect from 127.0.0.1 (a client) or from it


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


WRONG = _basic(RW.username, "not-the-password")


@pytest.fixture(scope="module")
def berth(tmp_path_factory):
    server = BerthServer(
        tmp_path_factory.mktemp("failed-logins"),
        workers=2,
        extra_env={
            "REGISTRY_AUTH_FAILURE_BURST": str(BURST),
            "REGISTRY_AUTH_FAILURE_RATE": "1",
            "FORWARDED_ALLOW_IPS": PROXY,
        },
    ).start()
    yield server
    server.stop()


def get(server, authorization: str | None, source: str = "127.0.0.1", forwarded: str | None = None):
    """One request on a new connection (so either worker may take it): (status, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10, source_address=(source, 0))
    headers = {}
    if authorization:
        headers["Authorization"] = authorization
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    try:
        conn.request("GET", "/v2/", headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.headers  # case-insensitive
    finally:
        conn.close()


def test_wrong_passwords_are_slowed(berth):
    for _ in range(20):  # challenges are never counted
        assert get(berth, None)[0] == 401
    started = time.monotonic()
    statuses = [get(berth, WRONG)[0] for _ in range(60)]
    elapsed = time.monotonic() - started
    # Each worker checks BURST wrong passwords, then answers 429 without checking.
    assert BURST <= statuses.count(401) <= 2 * BURST, statuses
    assert statuses.count(429) == 60 - statuses.count(401)
    status, headers = get(berth, WRONG)
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 60
    print(
        f"60 wrong passwords in {elapsed:.2f}s: {statuses.count(401)} checked, {statuses.count(429)} refused"
    )
    # The same user from another address, and another user from this one, are not slowed.
    assert get(berth, _basic(*RW.tuple), source=PROXY, forwarded="192.0.2.50")[0] == 200
    assert get(berth, _basic(*RO.tuple))[0] == 200


def test_forwarded_for_is_believed_from_the_proxy_only(berth):
    wrong = _basic(RO.username, "not-the-password")  # a user this client has not failed yet
    # A client inventing a new X-Forwarded-For each time is still counted by its own address.
    statuses = [get(berth, wrong, forwarded=f"198.51.100.{i}")[0] for i in range(6 * BURST)]
    assert statuses.count(401) <= 2 * BURST and statuses.count(429) >= 4 * BURST, statuses
    # Through the proxy each client has its own buckets.
    a = [get(berth, wrong, source=PROXY, forwarded="192.0.2.1")[0] for _ in range(6 * BURST)]
    assert BURST <= a.count(401) <= 2 * BURST and a.count(429) >= 4 * BURST, a
    assert get(berth, wrong, source=PROXY, forwarded="192.0.2.2")[0] == 401
    assert get(berth, _basic(*RO.tuple), source=PROXY, forwarded="192.0.2.1, 192.0.2.3")[0] == 200
