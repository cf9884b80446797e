"""Berth under a real gunicorn with gevent workers: behaviour that only shows at the socket and
process level (TLS probes, memory bounded whatever the blob size, startup validation)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .process import REPO_ROOT
from .servers import BerthServer

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@pytest.fixture
def berth(make_registry, registry_class):
    if registry_class is not BerthServer:
        pytest.fail("Berth-specific: unset E2E_TARGET", pytrace=False)
    return make_registry(workers=2)


@pytest.fixture(params=["filesystem", "s3"])
def berth_on_each_storage(request, make_registry, registry_class):
    if registry_class is not BerthServer:
        pytest.fail("Berth-specific: unset E2E_TARGET", pytrace=False)
    env = request.getfixturevalue("s3_env")() if request.param == "s3" else {}
    return make_registry(workers=2, extra_env=env)


def test_tls_probe_on_the_plain_port_is_answered_at_once(berth):
    """docker/podman/skopeo send a TLS ClientHello first; a prompt plain-HTTP answer lets them
    fall back to HTTP without waiting for a handshake timeout."""
    hello = bytes.fromhex("160301") + (200).to_bytes(2, "big") + b"\x01" + b"\x00" * 199
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", berth.port), timeout=10) as s:
        s.sendall(hello)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert time.monotonic() - started < 2
    assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    # ...and the same port still serves plain HTTP.
    assert berth.session().get(f"{berth.url}/v2/", timeout=10).status_code == 200


def _peak_rss_mib(pids) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def _reset_peaks(pids) -> None:
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_memory_stays_bounded_for_big_blobs(berth_on_each_storage):
    """Push a big blob streamed (chunked, no length) and another in one PUT, then pull them: the
    workers' peak memory must not grow with the blob size (on S3: about one 5 MiB part). The S3
    blobs are smaller only because moto keeps everything in its own memory."""
    berth = berth_on_each_storage
    streamed, whole_size = (160, 96) if berth.env.get("REGISTRY_STORAGE") == "s3" else (512, 256)
    s = berth.session()
    workers = berth.worker_pids()
    assert len(workers) == 2
    base = f"{berth.url}/v2/mem/test"
    piece = os.urandom(MiB)

    def body(n_mib):
        for i in range(n_mib):
            yield i.to_bytes(8, "big") + piece[8:]

    def digest_of(n_mib):
        h = hashlib.sha256()
        for chunk in body(n_mib):
            h.update(chunk)
        return "sha256:" + h.hexdigest()

    s.get(f"{berth.url}/v2/", timeout=10)  # warm both the app and the client
    _reset_peaks(workers)
    before = _peak_rss_mib(workers)

    big = digest_of(streamed)
    r = s.post(f"{base}/blobs/uploads/", timeout=30)
    r = s.patch(berth.url + r.headers["Location"], data=body(streamed), timeout=300)  # chunked
    assert r.status_code == 202, r.text
    r = s.put(berth.url + r.headers["Location"], params={"digest": big}, timeout=60)
    assert r.status_code == 201, r.text

    mid = digest_of(whole_size)
    r = s.post(f"{base}/blobs/uploads/", timeout=30)
    whole = b"".join(body(whole_size))  # the client's copy; the server must not need one
    r = s.put(berth.url + r.headers["Location"], params={"digest": mid}, data=whole, timeout=300)
    assert r.status_code == 201, r.text
    del whole

    for digest, size in ((big, streamed * MiB), (mid, whole_size * MiB)):
        h, n = hashlib.sha256(), 0
        with s.get(f"{base}/blobs/{digest}", stream=True, timeout=300) as r:
            assert r.status_code == 200
            for chunk in r.iter_content(MiB):
                h.update(chunk)
                n += len(chunk)
        assert n == size
        assert "sha256:" + h.hexdigest() == digest

    grown = _peak_rss_mib(workers) - before
    assert grown < 64, (
        f"workers' peak memory grew by {grown:.0f} MiB for {streamed + whole_size} MiB of blobs"
    )


def _start_with(tmp_path, **settings) -> subprocess.CompletedProcess:
    """gunicorn started with `settings` added to the environment; it is expected to stop."""
    env = {**os.environ, "REGISTRY_DATA_DIR": str(tmp_path), **settings}
    return subprocess.run(
        [BerthServer.gunicorn_path(), "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0", "app:app"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_invalid_settings_stop_the_server_with_one_clear_message(tmp_path):
    proc = _start_with(tmp_path, ANONYMOUS_PULL="maybe")
    assert proc.returncode != 0
    assert "Berth: invalid settings: ANONYMOUS_PULL must be true or false, not 'maybe'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BERTH_BODY_TIMEOUT", "soon", "BERTH_BODY_TIMEOUT must be a whole number of at least 1, not 'soon'"),
        (
            "BERTH_WORKER_CONNECTIONS",
            "0",
            "BERTH_WORKER_CONNECTIONS must be a whole number of at least 1, not '0'",
        ),
    ],
)
def test_invalid_server_settings_stop_the_server_with_one_clear_message(tmp_path, name, value, message):
    proc = _start_with(tmp_path, **{name: value})
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"Berth: invalid settings: {message}"


def test_reload_lets_an_upload_in_flight_finish(berth):
    """A graceful reload (SIGHUP) while a PATCH streams: the old worker finishes the request,
    the upload completes on the new workers, and idle keep-alive connections do not hold the
    old workers back."""
    import signal
    import threading

    s = berth.session()
    idle = berth.session()
    assert idle.get(f"{berth.url}/v2/", timeout=10).status_code == 200  # now an idle keep-alive
    old_workers = berth.worker_pids()
    piece = os.urandom(MiB)

    def slow_body():
        for _ in range(20):
            yield piece
            time.sleep(0.1)

    r = s.post(f"{berth.url}/v2/reload/test/blobs/uploads/", timeout=30)
    location = berth.url + r.headers["Location"]
    result = {}

    def patch():
        result["response"] = s.patch(location, data=slow_body(), timeout=60)

    t = threading.Thread(target=patch)
    t.start()
    time.sleep(0.5)
    os.kill(berth.pid, signal.SIGHUP)
    t.join(60)
    r = result["response"]
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == f"0-{20 * MiB - 1}"
    digest = "sha256:" + hashlib.sha256(piece * 20).hexdigest()
    r = berth.session().put(berth.url + r.headers["Location"], params={"digest": digest}, timeout=30)
    assert r.status_code == 201, r.text
    # The old workers are gone soon after their last request, idle connections or not.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and berth.worker_pids() & old_workers:
        time.sleep(0.2)
    assert not berth.worker_pids() & old_workers
    assert len(berth.worker_pids()) == 2


def test_unusable_bucket_stops_the_server_with_one_clear_message(tmp_path, s3_env):
    env = {**os.environ, **s3_env(), "REGISTRY_S3_BUCKET": "no-such-bucket", "USERNAME": "u", "PASSWORD": "p"}
    proc = subprocess.run(
        [BerthServer.gunicorn_path(), "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0", "-w", "1", "app:app"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Berth cannot start: bucket 'no-such-bucket'" in proc.stderr
    assert "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes on one connection and read until the server closes it (or 10 s of quiet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def _basic(berth) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"{berth.rw.username}:{berth.rw.password}".encode())


def test_chunked_body_is_parsed_in_place_and_a_pipelined_request_follows(berth):
    """The worker reads bodies straight from the socket (serving/body.py): a chunked PATCH with
    odd chunk sizes, an extension and a trailer stores the exact bytes, and a request pipelined
    behind it on the same connection is answered."""
    session = berth.session()
    started = session.post(f"{berth.url}/v2/raw/body/blobs/uploads/", timeout=10)
    location = started.headers["Location"]
    path = location.split(berth.url, 1)[-1].encode()
    payload = os.urandom(300_000)
    chunks, pos = b"", 0
    for size in (1, 7, 65536, 100_000, 3):
        chunks += b"%x;note=x\r\n" % len(payload[pos : pos + size]) + payload[pos : pos + size] + b"\r\n"
        pos += size
    chunks += b"%x\r\n" % (len(payload) - pos) + payload[pos:] + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    request = (
        b"PATCH " + path + b" HTTP/1.1\r\nHost: x\r\n" + _basic(berth) + b"\r\n"
        b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    )
    request += b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + _basic(berth) + b"\r\nConnection: close\r\n\r\n"
    reply = _raw_exchange(berth.port, request)
    assert reply.startswith(b"HTTP/1.1 202"), reply[:300]
    assert reply.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 200" in reply.split(b"\r\n\r\n", 1)[1]
    at = reply.lower().index(b"\r\nlocation: ") + len(b"\r\nlocation: ")
    upload = reply[at : reply.index(b"\r\n", at)].decode()
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    put = session.put(upload if upload.startswith("http") else berth.url + upload, params={"digest": digest})
    assert put.status_code == 201, put.text
    got = session.get(f"{berth.url}/v2/raw/body/blobs/{digest}", timeout=10)
    assert got.content == payload


@pytest.mark.parametrize(
    "body",
    [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXY", b"1;\r\na\r\n0\r\n\r\n"],
    ids=["bad-size", "no-crlf", "bad-extension"],
)
def test_malformed_chunked_body_gets_an_oci_error_and_the_upload_is_untouched(berth, body):
    session = berth.session()
    started = session.post(f"{berth.url}/v2/raw/bad/blobs/uploads/", timeout=10)
    location = started.headers["Location"]
    path = location.split(berth.url, 1)[-1].encode()
    request = (
        b"PATCH " + path + b" HTTP/1.1\r\nHost: x\r\n" + _basic(berth) + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body
    )
    reply = _raw_exchange(berth.port, request)
    head, _, content = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), reply[:300]
    assert b"Connection: close" in head
    assert b'"code": "BLOB_UPLOAD_INVALID"' in content
    status = session.get(berth.url + location.split(berth.url, 1)[-1], timeout=10)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-0"


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_graceful_stop_that_has_to_end_transfers_says_so_in_one_line(
    make_registry, registry_class, signal_name
):
    """A download and an upload still going when the graceful timeout runs out: the worker
    ends them itself and logs one warning (before, the master killed it without a word), and
    on a reload the new workers serve."""
    import signal
    import threading

    from . import rawhttp

    if registry_class is not BerthServer:
        pytest.fail("Berth-specific: unset E2E_TARGET", pytrace=False)
    berth = make_registry(workers=1, extra_env={"BERTH_GRACEFUL_TIMEOUT": "2"})
    data = os.urandom(8 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    s = berth.session()
    location = s.post(f"{berth.url}/v2/stop/test/blobs/uploads/", timeout=10).headers["Location"]
    assert s.put(berth.url + location, params={"digest": digest}, data=data, timeout=60).status_code == 201
    location = s.post(f"{berth.url}/v2/stop/test/blobs/uploads/", timeout=10).headers["Location"]
    done = threading.Event()

    def download():  # about 1 MB/s: 8 s for the blob
        with rawhttp.connect(berth.port, rcvbuf=65536) as sock:
            sock.sendall(rawhttp.request("GET", f"/v2/stop/test/blobs/{digest}", berth.rw))
            rawhttp.read_head(sock)
            while not done.is_set() and sock.recv(65536):
                time.sleep(0.05)

    def upload():  # about 300 KB/s, for ever
        with rawhttp.connect(berth.port) as sock:
            sock.sendall(rawhttp.request("PATCH", location, berth.rw, {"Transfer-Encoding": "chunked"}))
            with contextlib.suppress(OSError):
                while not done.is_set():
                    sock.sendall(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
                    time.sleep(0.05)

    clients = [threading.Thread(target=download), threading.Thread(target=upload)]
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)
        old_workers = berth.worker_pids()
        os.kill(berth.pid, getattr(signal, signal_name))
        deadline = time.monotonic() + 10
        while berth.worker_pids() & old_workers and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not berth.worker_pids() & old_workers, "the old worker is still running"
    finally:
        done.set()
        for client in clients:
            client.join(10)
    log = berth.log_path.read_text()
    lines = [line for line in log.splitlines() if "raceful timeout" in line]
    assert len(lines) == 1, lines
    assert "[WARNING]" in lines[0] and "closing 2 connection(s)" in lines[0]
    assert "Traceback" not in log and "Error handling request" not in log
    if signal_name == "SIGHUP":
        assert s.get(f"{berth.url}/v2/", timeout=10).status_code == 200
