"""Every wait on a client has a deadline (serving/worker.py, serving/body.py,
serving/connection.py): silent and trickling clients are closed, and cannot use up the
workers' connections, while slow but moving transfers go on. Berth runs with the deadlines
set to a few seconds, so the tests stay fast."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import time

import pytest

from . import rawhttp
from .servers import BerthServer

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
CONNECTIONS = 20  # per worker: few, so that idle sockets could use them all up
TIGHT = {
    "BERTH_HEADER_TIMEOUT": "2",
    "BERTH_KEEPALIVE_TIMEOUT": "2",
    "BERTH_BODY_TIMEOUT": "1",
    "BERTH_SEND_TIMEOUT": "1",
    "BERTH_MIN_RATE": "1024",
    "BERTH_WORKER_CONNECTIONS": str(CONNECTIONS),
}


@pytest.fixture(scope="module")
def berth(registry_class, tmp_path_factory):
    if registry_class is not BerthServer:
        pytest.fail("Berth-specific: unset E2E_TARGET", pytrace=False)
    server = BerthServer(tmp_path_factory.mktemp("deadlines"), workers=1, extra_env=TIGHT).start()
    yield server
    server.stop()


def push_blob(berth, data: bytes, repo: str = "deadlines/test") -> str:
    s = berth.session()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = s.post(f"{berth.url}/v2/{repo}/blobs/uploads/", timeout=10).headers["Location"]
    r = s.put(berth.url + location, params={"digest": digest}, data=data, timeout=60)
    assert r.status_code == 201, r.text
    return digest


def test_silent_connections_are_closed_and_the_instance_keeps_serving(berth):
    """More silent sockets than the worker takes at once: each is closed after the header
    timeout, and a real client gets its answer once they are (it used to wait for ever)."""
    silent = [rawhttp.connect(berth.port) for _ in range(CONNECTIONS + 5)]
    try:
        started = time.monotonic()
        with rawhttp.connect(berth.port, timeout=30) as client:
            client.sendall(rawhttp.request("GET", "/v2/", berth.rw))
            status, _, _ = rawhttp.read_response(client)
        assert status == 200
        assert time.monotonic() - started < 12  # two waves of 2 s, with a wide margin
        for sock in silent:
            closed, received = rawhttp.closed_within(sock, 10)
            assert closed is not None, "a silent connection is still open"
            assert received == 0  # closed without an answer: it never asked anything
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.parametrize("after_a_request", [False, True], ids=["first-request", "keep-alive"])
def test_a_request_head_trickling_in_is_cut(berth, after_a_request):
    """Slowloris: one header byte every 0.25 s keeps every single read short, but the head as
    a whole must arrive within BERTH_HEADER_TIMEOUT (2 s) of its first byte."""
    with rawhttp.connect(berth.port) as sock:
        if after_a_request:
            sock.sendall(rawhttp.request("GET", "/v2/", berth.rw))
            assert rawhttp.read_response(sock)[0] == 200
        head = rawhttp.request("GET", "/v2/", berth.rw, {"X-Slow": "a" * 100})
        started = time.monotonic()
        cut_after = None
        for byte in head:
            try:
                sock.send(bytes([byte]))
            except OSError:
                cut_after = time.monotonic() - started
                break
            if select.select([sock], [], [], 0.25)[0]:
                assert sock.recv(4096) == b"", "answered a request that never ended"
                cut_after = time.monotonic() - started
                break
        assert cut_after is not None, "the trickling head was never cut"
        assert cut_after < 6


def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout(berth):
    with rawhttp.connect(berth.port) as sock:
        sock.sendall(rawhttp.request("GET", "/v2/", berth.rw))
        status, headers, _ = rawhttp.read_response(sock)
        assert status == 200 and headers["connection"] == "keep-alive"
        closed, _ = rawhttp.closed_within(sock, 12)
    assert closed is not None and 1.5 < closed < 8  # BERTH_KEEPALIVE_TIMEOUT is 2 s


def _start_chunked_patch(berth, sock: socket.socket, repo: str) -> None:
    location = berth.session().post(f"{berth.url}/v2/{repo}/blobs/uploads/", timeout=10).headers["Location"]
    sock.sendall(rawhttp.request("PATCH", location, berth.rw, {"Transfer-Encoding": "chunked"}))


def test_an_upload_trickling_in_is_cut(berth):
    """One byte every 0.3 s is far below BERTH_MIN_RATE (1 KiB/s): cut within a period
    (BERTH_BODY_TIMEOUT, 1 s of waiting), with a 400 saying why, and the connection closed."""
    with rawhttp.connect(berth.port) as sock:
        _start_chunked_patch(berth, sock, "deadlines/trickle")
        started = time.monotonic()
        answered = None
        while time.monotonic() - started < 10:
            try:
                sock.sendall(b"1\r\na\r\n")
            except OSError:
                break
            if select.select([sock], [], [], 0.3)[0]:
                answered = rawhttp.read_head(sock)
                break
        elapsed = time.monotonic() - started
        assert answered is not None, "the trickling upload was never cut"
        status, headers, body = answered
        assert status == 400 and headers["connection"] == "close"
        assert b"BLOB_UPLOAD_INVALID" in body or b"BLOB_UPLOAD_INVALID" in sock.recv(65536)
        assert elapsed < 6
        assert rawhttp.closed_within(sock, 5)[0] is not None
    assert "fewer than 1024 bytes in 1 s" in berth.log_path.read_text()


def test_a_slow_but_moving_upload_is_never_cut(berth):
    """10 KiB/s, well above the minimum rate, for two periods and more: it completes."""
    pieces = [os.urandom(2048) for _ in range(12)]

    def body():
        for piece in pieces:
            time.sleep(0.2)
            yield piece

    s = berth.session()
    location = s.post(f"{berth.url}/v2/deadlines/slow/blobs/uploads/", timeout=10).headers["Location"]
    r = s.patch(berth.url + location, data=body(), timeout=30)
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == f"0-{12 * 2048 - 1}"


@pytest.mark.parametrize("reader", ["stalled", "trickling"])
def test_a_download_whose_client_stops_reading_is_cut(berth, reader):
    """A client that takes nothing, or 400 bytes/s (below BERTH_MIN_RATE), of a blob sent from
    local disk (the worker's block-copying sendfile) is cut within about BERTH_SEND_TIMEOUT; it
    used to hold its connection for 300 s (stalled) or for ever (trickling)."""
    size = 48 * MiB  # far more than the socket buffers on both sides hold
    digest = push_blob(berth, os.urandom(size), f"deadlines/{reader}")
    cuts_before = _send_cuts(berth)
    with rawhttp.connect(berth.port, rcvbuf=4096) as sock:
        sock.sendall(rawhttp.request("GET", f"/v2/deadlines/{reader}/blobs/{digest}", berth.rw))
        status, _, body = rawhttp.read_head(sock)
        assert status == 200
        received = len(body)
        started = time.monotonic()
        while _send_cuts(berth) == cuts_before and time.monotonic() - started < 15:
            time.sleep(0.25)
            if reader == "trickling":
                received += len(sock.recv(100))
        assert _send_cuts(berth) > cuts_before, "the slow reader was never cut"
        assert time.monotonic() - started < 10
        closed, rest = rawhttp.closed_within(sock, 20)  # now read everything there is, fast
        received += rest
    assert closed is not None
    assert received < size


def _send_cuts(berth) -> int:
    return berth.log_path.read_text().count("sending the response: fewer than")


def test_a_tls_probe_that_keeps_sending_is_closed(berth):
    """The plain-HTTP answer to a TLS ClientHello waits for the client to close, but not for
    ever: a client that keeps sending is closed within a few seconds (the server's reads stop,
    so the client's writes fail)."""
    hello = bytes.fromhex("160301") + (200).to_bytes(2, "big") + b"\x01" + b"\x00" * 199
    with rawhttp.connect(berth.port) as sock:
        sock.sendall(hello)
        status, _, _ = rawhttp.read_head(sock)
        assert status == 400
        started = time.monotonic()
        closed = None
        while time.monotonic() - started < 10:
            try:
                sock.sendall(b"\x17" * 1024)
            except OSError:
                closed = time.monotonic() - started
                break
            time.sleep(0.1)
    assert closed is not None and closed < 6
