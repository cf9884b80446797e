"""Blob GETs when storage misbehaves, or the client goes away, under a real gunicorn: OCI errors
while nothing is sent yet, the connection closed at once when a body cannot be completed, one
log line per event and no traceback (resources/blobs.py, serving/worker.py,
serving/connection.py). Storage faults come from tests/e2e/faulty_app.py."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from . import rawhttp
from .faulty_app import marker
from .servers import BerthServer

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def berth(registry_class, tmp_path_factory):
    if registry_class is not BerthServer:
        pytest.fail("Berth-specific: unset E2E_TARGET", pytrace=False)
    server = BerthServer(
        tmp_path_factory.mktemp("faulty"),
        workers=1,
        app="tests.e2e.faulty_app:app",
        extra_env={"BERTH_SEND_TIMEOUT": "2"},
    ).start()
    yield server
    server.stop()


def push(berth, data: bytes) -> str:
    s = berth.session()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = s.post(f"{berth.url}/v2/faults/blob/blobs/uploads/", timeout=10).headers["Location"]
    r = s.put(berth.url + location, params={"digest": digest}, data=data, timeout=60)
    assert r.status_code == 201, r.text
    return digest


def log_lines(berth, needle: str, wait: float = 5) -> list[str]:
    """The log lines holding `needle`, waiting up to `wait` seconds for the first."""
    deadline = time.monotonic() + wait
    while True:
        lines = [line for line in berth.log_path.read_text().splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def assert_no_traceback(berth) -> None:
    log = berth.log_path.read_text()
    assert "Traceback" not in log
    assert "Error handling request" not in log


def test_a_blob_read_through_a_stream_is_served_whole_and_by_range(berth):
    data = marker("streamed") + os.urandom(3 * MiB)
    digest = push(berth, data)
    s = berth.session()
    assert s.get(f"{berth.url}/v2/faults/blob/blobs/{digest}", timeout=30).content == data
    r = s.get(
        f"{berth.url}/v2/faults/blob/blobs/{digest}", headers={"Range": "bytes=1000-2099999"}, timeout=30
    )
    assert r.status_code == 206
    assert r.content == data[1000:2100000]


def test_storage_failing_before_the_first_byte_is_a_503_oci_error(berth):
    digest = push(berth, marker("fail-first") + os.urandom(2 * MiB))
    r = berth.session().get(f"{berth.url}/v2/faults/blob/blobs/{digest}", timeout=30)
    assert r.status_code == 503
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Retry-After"]
    assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert_no_traceback(berth)


@pytest.mark.parametrize("fault", ["fail-mid", "short", "short-file"])
def test_a_blob_body_storage_cannot_complete_closes_the_connection_at_once(berth, fault):
    """Storage fails, or returns fewer bytes than the Content-Length, once the headers are out:
    the client sees the connection close at once (it used to wait for the keep-alive timeout,
    75 s), and the log says so in one warning line."""
    size = len(marker(fault)) + 3 * MiB
    digest = push(berth, marker(fault) + os.urandom(3 * MiB))
    with rawhttp.connect(berth.port) as sock:
        sock.sendall(rawhttp.request("GET", f"/v2/faults/blob/blobs/{digest}", berth.rw))
        status, headers, body = rawhttp.read_head(sock)
        assert status == 200
        promised = int(headers["content-length"])
        assert promised == size + (1000 if fault == "short-file" else 0)
        closed, received = rawhttp.closed_within(sock, 10)
    assert closed is not None and closed < 3
    assert len(body) + received < promised
    (line,) = [line for line in log_lines(berth, digest) if "berth.access" not in line]  # not its access line
    assert "WARNING" in line and "connection closed" in line
    assert_no_traceback(berth)


def test_a_client_taking_a_streamed_blob_too_slowly_is_cut(berth):
    """The iterated path (storage without a file, as S3): a reader taking 400 bytes/s, below
    BERTH_MIN_RATE, is cut within about BERTH_SEND_TIMEOUT (2 s here)."""
    size = 48 * MiB
    digest = push(berth, marker("streamed") + os.urandom(size))
    with rawhttp.connect(berth.port, rcvbuf=4096) as sock:
        sock.sendall(rawhttp.request("GET", f"/v2/faults/blob/blobs/{digest}", berth.rw))
        assert rawhttp.read_head(sock)[0] == 200
        started = time.monotonic()
        while not log_lines(berth, "sending the response: fewer than", wait=0):
            assert time.monotonic() - started < 10, "the slow reader was never cut"
            time.sleep(0.25)
            sock.recv(100)
        closed, received = rawhttp.closed_within(sock, 20)
    assert closed is not None and received < size


@pytest.mark.parametrize("path", ["file", "streamed"])
def test_a_client_leaving_mid_download_is_one_info_line(berth, path):
    """Through the worker's sendfile (local file) and through the iterated body (streamed):
    one info line, not a traceback (and, for files, no longer nothing at all)."""
    data = (marker("streamed") if path == "streamed" else b"") + os.urandom(32 * MiB)
    digest = push(berth, data)
    with rawhttp.connect(berth.port) as sock:
        sock.sendall(rawhttp.request("GET", f"/v2/faults/blob/blobs/{digest}", berth.rw))
        assert rawhttp.read_head(sock)[0] == 200
        sock.recv(MiB)
    lines = log_lines(berth, f"GET /v2/faults/blob/blobs/{digest}: the client went away")
    assert len(lines) == 1 and "[INFO]" in lines[0]
    assert_no_traceback(berth)
