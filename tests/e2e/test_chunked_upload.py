"""Chunked uploads whose requests land on different registry processes.

An upload's state must live in shared storage, not in one process's memory: gunicorn may hand
each request of one upload to a different worker, and several instances may serve the same
data directory behind a load balancer."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from urllib.parse import urljoin, urlsplit, urlunsplit

import pytest
import requests

from .servers import Registry

pytestmark = pytest.mark.e2e

TIMEOUT = 30


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _on(server: Registry, location: str, answered_by: Registry) -> str:
    """The upload URL ``location`` (as returned by ``answered_by``) pointed at ``server``."""
    parts = urlsplit(urljoin(answered_by.url + "/", location))
    return urlunsplit(("http", server.host, parts.path, parts.query, ""))


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos = [], 0
    for n in sizes:
        chunks.append(data[pos : pos + n])
        pos += n
    if pos < len(data):
        chunks.append(data[pos:])
    return chunks


def _patch(url, chunk, start, creds, session=None, close=False):
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{start}-{start + len(chunk) - 1}",
        "Content-Length": str(len(chunk)),
    }
    if close:
        headers["Connection"] = "close"
    send = session.patch if session is not None else requests.patch
    return send(url, data=chunk, headers=headers, auth=creds.tuple, timeout=TIMEOUT)


def _check_blob(server: Registry, repo: str, data: bytes) -> None:
    digest = _digest(data)
    s = server.session()
    r = s.head(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=TIMEOUT)
    assert r.status_code == 200, (server.name, r.status_code)
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.headers["Docker-Content-Digest"] == digest
    r = s.get(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=TIMEOUT)
    assert r.status_code == 200, (server.name, r.status_code, r.text[:200])
    assert len(r.content) == len(data)
    assert r.content == data


def test_chunked_upload_alternating_between_two_instances(make_registry, tmp_path_factory, repo):
    """Two registry processes on one data directory; each request goes to the other one."""
    data_dir = tmp_path_factory.mktemp("shared-data")
    a = make_registry(data_dir=data_dir, auth=True, workers=1)
    b = make_registry(data_dir=data_dir, auth=True, workers=1)
    pair = [a, b]
    creds = a.rw
    data = os.urandom(3 * 1024 * 1024 + 12345)
    chunks = _split(data, [1, 65536, 1024 * 1024 - 7, 333, 1024 * 1024, 700 * 1024])
    assert len(chunks) >= 6

    s = requests.Session()
    s.auth = creds.tuple
    r = s.post(f"{a.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT)
    assert r.status_code == 202, r.text
    location, answered_by = r.headers["Location"], a
    uuid = r.headers.get("Docker-Upload-UUID")

    offset = 0
    for i, chunk in enumerate(chunks):
        server = pair[(i + 1) % 2]
        r = _patch(_on(server, location, answered_by), chunk, offset, creds, session=s)
        assert r.status_code == 202, (i, server.name, r.status_code, r.text)
        offset += len(chunk)
        assert r.headers["Range"] == f"0-{offset - 1}", (i, server.name, r.headers)
        if uuid and "Docker-Upload-UUID" in r.headers:
            assert r.headers["Docker-Upload-UUID"] == uuid
        location, answered_by = r.headers["Location"], server

        # Upload status, asked of the process that did not take this chunk.
        other = pair[i % 2]
        st = s.get(_on(other, location, answered_by), timeout=TIMEOUT)
        assert st.status_code == 204, (i, other.name, st.status_code, st.text)
        assert st.headers["Range"] == f"0-{offset - 1}", (i, other.name, st.headers)

    # A chunk that does not start where the upload ends is refused (416), by either process,
    # and changes nothing. (distribution 2.8 ignores Content-Range: it would append.)
    for server in pair if a.checks_content_range else []:
        r = _patch(_on(server, location, answered_by), b"x" * 10, offset + 5, creds, session=s)
        assert r.status_code == 416, (server.name, r.status_code, r.text)
        st = s.get(_on(server, location, answered_by), timeout=TIMEOUT)
        assert st.status_code == 204 and st.headers["Range"] == f"0-{offset - 1}"

    # Close on the process that took the first chunk.
    digest = _digest(data)
    r = s.put(_on(b, location, answered_by), params={"digest": digest}, timeout=TIMEOUT)
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == digest
    for server in pair:
        _check_blob(server, repo, data)


ACCESS_LINE = re.compile(r"^<?(\d+)>? (\w+) (\S+) HTTP/[\d.]+ (\d{3})\s*$")


def _patch_pids(access_log, upload_id: str) -> list[int]:
    pids = []
    try:
        text = access_log.read_text(errors="replace")
    except FileNotFoundError:
        return pids
    for line in text.splitlines():
        m = ACCESS_LINE.match(line.strip())
        if m and m.group(2) == "PATCH" and f"/blobs/uploads/{upload_id}" in m.group(3):
            pids.append(int(m.group(1)))
    return pids


def test_chunked_upload_across_gunicorn_workers(make_registry, registry_class, repo):
    """One instance, two gevent workers: PATCHes on fresh connections until both workers
    served part of the same upload; the blob must still be whole."""
    if not registry_class.is_gunicorn:
        pytest.skip(f"{registry_class.kind} is a single process: there are no workers to alternate between")
    server = make_registry(auth=True, workers=2, access_log=True)
    deadline = time.monotonic() + 20
    while len(server.worker_pids()) < 2:
        assert time.monotonic() < deadline, f"gunicorn did not start 2 workers: {server.worker_pids()}"
        time.sleep(0.1)
    creds = server.rw

    r = requests.post(
        f"{server.url}/v2/{repo}/blobs/uploads/",
        auth=creds.tuple,
        headers={"Connection": "close"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    upload_id = r.headers.get("Docker-Upload-UUID") or urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1]

    # Left alone, one idle worker tends to win every accept(). Background clients hitting
    # GET /v2/ on fresh connections keep the workers busy so new connections spread over
    # both. Every PATCH goes on its own new connection (Connection: close), in order.
    stop = threading.Event()

    def noise():
        with contextlib.suppress(Exception):
            while not stop.is_set():
                requests.get(f"{server.url}/v2/", headers={"Connection": "close"}, timeout=TIMEOUT)

    threads = [threading.Thread(target=noise, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    parts: list[bytes] = []
    offset = 0
    try:
        for n in range(150):
            chunk = os.urandom(16 * 1024 + n)
            r = _patch(_on(server, location, server), chunk, offset, creds, close=True)
            assert r.status_code == 202, (n, r.status_code, r.text)
            parts.append(chunk)
            offset += len(chunk)
            assert r.headers["Range"] == f"0-{offset - 1}"
            location = r.headers["Location"]
            if n >= 3 and len(set(_patch_pids(server.access_log_path, upload_id))) >= 2:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=TIMEOUT + 5)

    # Access log lines are written just after each response: wait for all of them.
    deadline = time.monotonic() + 10
    pids = _patch_pids(server.access_log_path, upload_id)
    while len(pids) < len(parts) and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = _patch_pids(server.access_log_path, upload_id)
    assert len(pids) == len(parts), f"{len(pids)} PATCH lines in the access log for {len(parts)} PATCHes"
    workers = server.worker_pids()
    assert set(pids) <= workers, (set(pids), workers)
    assert len(set(pids)) == 2, (
        f"all {len(parts)} PATCHes (each on a new connection) were served by worker(s) {set(pids)}; "
        f"gunicorn workers: {workers}"
    )

    data = b"".join(parts)
    r = requests.put(
        _on(server, location, server),
        params={"digest": _digest(data)},
        auth=creds.tuple,
        headers={"Connection": "close"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == _digest(data)
    _check_blob(server, repo, data)
