"""Memory for request bodies under a real gunicorn (serving/worker.py, serving/body.py): a
request refused before its body is read gets no receive buffer, and its connection is closed
instead of drained; the buffers of finished uploads go back at once."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from . import rawhttp
from .servers import BerthServer

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
STRANGERS = 300


@pytest.fixture(scope="module")
def berth(registry_class, tmp_path_factory):
    if registry_class is not BerthServer:
        pytest.fail("Berth-specific: unset E2E_TARGET", pytrace=False)
    server = BerthServer(tmp_path_factory.mktemp("memory"), workers=1).start()
    yield server
    server.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_refused_uploads_get_no_buffer_and_their_connections_close(berth):
    """300 chunked PATCHes without credentials, each holding its body open: each is answered
    401 with `Connection: close` and closed at once, and the worker does not grow. (Each
    used to get a 1 MiB buffer that glibc kept, and its connection stayed open while gunicorn
    waited to drain the body.)"""
    (worker,) = berth.worker_pids()
    with rawhttp.connect(berth.port) as warm:  # the app is loaded on the first request
        warm.sendall(rawhttp.request("GET", "/v2/", headers={"Connection": "close"}))
        assert rawhttp.read_head(warm)[0] == 401
    before = rss_mib(worker)
    strangers = []
    try:
        for _ in range(STRANGERS):
            sock = rawhttp.connect(berth.port)
            path = f"/v2/team/app/blobs/uploads/{uuid.uuid4()}"
            sock.sendall(rawhttp.request("PATCH", path, headers={"Transfer-Encoding": "chunked"}))
            sock.sendall(b"10000\r\n" + b"x" * 4096)  # a 64 KiB chunk, barely started
            strangers.append(sock)
        for sock in strangers:
            status, headers, _ = rawhttp.read_head(sock)
            assert status == 401
            assert headers["connection"] == "close"
        grown = rss_mib(worker) - before
        for sock in strangers:
            closed, _ = rawhttp.closed_within(sock, 5)
            assert closed is not None, "a refused request's connection is still open"
    finally:
        for sock in strangers:
            sock.close()
    assert grown < 40, f"the worker grew by {grown:.0f} MiB for {STRANGERS} refused requests"
    assert "Traceback" not in berth.log_path.read_text()


def test_100_continue_is_sent_only_once_the_request_is_authorised(berth):
    """A client with `Expect: 100-continue` waits before sending its body: a refused one gets
    its 401 without being asked for the body (gunicorn used to say "continue" first)."""
    path = f"/v2/team/app/blobs/uploads/{uuid.uuid4()}"
    headers = {"Expect": "100-continue", "Content-Length": str(MiB)}
    with rawhttp.connect(berth.port) as sock:
        sock.sendall(rawhttp.request("PATCH", path, headers=headers))
        status, response_headers, _ = rawhttp.read_head(sock)
        assert (status, response_headers["connection"]) == (401, "close")
    location = berth.session().post(f"{berth.url}/v2/team/app/blobs/uploads/", timeout=10).headers["Location"]
    with rawhttp.connect(berth.port) as sock:
        sock.sendall(rawhttp.request("PATCH", location, berth.rw, headers))
        assert rawhttp.read_head(sock)[0] == 100
        sock.sendall(b"x" * MiB)
        status, response_headers, _ = rawhttp.read_head(sock)
        assert (status, response_headers["range"]) == (202, f"0-{MiB - 1}")


def test_the_buffers_of_finished_uploads_are_freed_at_once(berth):
    """60 uploads at once, each far enough along that its buffer has grown to 1 MiB: when they
    end, the worker is back near where it started. (The buffers used to live on until the
    garbage collector's next full pass broke the request's reference cycles.)"""
    (worker,) = berth.worker_pids()
    session = berth.session()
    locations = [
        session.post(f"{berth.url}/v2/memory/uploads/blobs/uploads/", timeout=10).headers["Location"]
        for _ in range(60)
    ]
    before = rss_mib(worker)
    piece = os.urandom(64 * 1024)
    uploads = []
    try:
        for location in locations:
            sock = rawhttp.connect(berth.port)
            sock.sendall(rawhttp.request("PATCH", location, berth.rw, {"Transfer-Encoding": "chunked"}))
            uploads.append(sock)
        for _ in range(40):  # 2.5 MiB each
            for sock in uploads:
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        for sock in uploads:
            sock.sendall(b"0\r\n\r\n")
        for sock in uploads:
            assert rawhttp.read_response(sock)[0] == 202
    finally:
        for sock in uploads:
            sock.close()
    grown = rss_mib(worker) - before
    assert grown < 25, f"the worker kept {grown:.0f} MiB after 60 uploads ended"
