"""Berth under a real gunicorn on an S3 store that fails: moto's server behind the
fault-injecting proxy (tests/e2e/s3_faults.py). A worker killed in the middle of the closing
PUTs, and skopeo pushing and pulling while every kind of fault hits a few percent of calls."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time

import pytest
import requests

from . import images
from .process import CommandError
from .s3_servers import R2StrictProxy

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


@pytest.fixture
def fault_proxy(moto_s3, tmp_path_factory):
    """A fault proxy of its own in front of the session's moto server."""
    proxy = R2StrictProxy(tmp_path_factory.mktemp("fault-proxy"), moto_s3.upstream_port).start()
    yield proxy
    proxy.stop()
    assert not proxy.violations, f"multipart uploads R2 would refuse: {proxy.violations}"


@pytest.fixture
def faulty_berth(make_registry, registry_class, s3_env, fault_proxy, monkeypatch):
    """Berth with one gevent worker on the faulty store; `store` sees its prefix directly."""
    from settings import S3Settings
    from storage.drivers.s3 import S3Driver
    from tests.e2e.servers import BerthServer

    if registry_class is not BerthServer:
        pytest.fail("S3 fault tests run against Berth only (unset E2E_TARGET)", pytrace=False)
    env = s3_env()
    env["REGISTRY_S3_ENDPOINT_URL"] = fault_proxy.url
    server = make_registry(workers=1, access_log=True, extra_env=env)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env["AWS_SECRET_ACCESS_KEY"])
    server.store = S3Driver(
        S3Settings(
            bucket=env["REGISTRY_S3_BUCKET"],
            endpoint_url=f"http://127.0.0.1:{fault_proxy.upstream_port}",
            region="us-east-1",
            prefix=env["REGISTRY_S3_PREFIX"],
        )
    )
    return server


def _pattern(n: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    return (block * (n // len(block) + 1))[:n]


def _wait_for_delays(proxy, expected: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.faults.injected() >= expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"the delayed calls never came: {proxy.faults.report()}")


def test_worker_killed_in_each_closing_step_loses_nothing(faulty_berth, fault_proxy):
    """Four uploads are each held by the store in a different step (a delay on that call) when
    the worker is SIGKILLed. The store then carries out the held calls, as a real one would.
    Each client's retry of the same request waits for the dead worker's lease, finishes the
    upload and the blob verifies; nothing is left in the bucket."""
    from tests.s3_endpoint import unreferenced_multipart_uploads, upload_objects

    server = faulty_berth
    session = server.session()
    uploads = []
    for i in range(4):
        # Two parts of 5 MiB: a multipart upload, then a copy. The fourth upload's second PATCH
        # dies while it uploads the second part (its first PATCH recorded the multipart upload).
        size = 6 * MiB + 123 if i < 3 else 11 * MiB + 5
        data = _pattern(size, seed=i)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        loc = session.post(f"{server.url}/v2/faults/kill/blobs/uploads/", timeout=30).headers["Location"]
        first = size if i < 3 else 5 * MiB + 7
        r = session.patch(f"{server.url}{loc}", data=data[:first], headers={"Content-Range": f"0-{first - 1}"}, timeout=60)  # fmt: skip
        assert r.status_code == 202, r.text
        uploads.append((data, digest, loc, loc.rsplit("/", 1)[1], first))
    (_, _, _, id0, _), (_, digest1, _, _, _), (_, _, _, id2, _), (_, _, _, id3, _) = uploads
    # Held long enough for all four to get there on a busy machine (the kill comes as soon as
    # they have), and shorter than the lease the retries wait out.
    hold = {"action": "delay", "delay": 6, "nth": [1]}
    fault_proxy.faults.set(
        [
            {"op": "CompleteMultipartUpload", "key": f"uploads/{id0}/data$", **hold},
            {"op": "UploadPartCopy", "key": digest1.split(":")[1], **hold},
            {"op": "DeleteObject", "key": f"uploads/{id2}/data$", **hold},
            {"op": "UploadPart", "key": f"uploads/{id3}/data$", **hold},
        ]
    )

    def request(i):
        data, digest, loc, _, first = uploads[i]
        if i < 3:
            return session.put(f"{server.url}{loc}?digest={digest}", timeout=60)
        return session.patch(f"{server.url}{loc}", data=data[first:], headers={"Content-Range": f"{first}-{len(data) - 1}"}, timeout=60)  # fmt: skip

    failures = []

    def doomed(i):
        with contextlib.suppress(requests.RequestException):  # the worker dies under it
            failures.append((i, request(i).status_code))

    threads = [threading.Thread(target=doomed, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    _wait_for_delays(fault_proxy, 4)
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join()
    assert failures == []  # every request died with the worker
    server.wait_ready()
    started = time.monotonic()
    answers = [None] * 4

    def retry(i):
        answers[i] = request(i).status_code

    threads = [threading.Thread(target=retry, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [201, 201, 201, 202]
    assert time.monotonic() - started < 40  # a lapsed lease, not a minute's lockout
    data, digest, loc, _, _ = uploads[3]
    assert session.put(f"{server.url}{loc}?digest={digest}", timeout=60).status_code == 201
    for _data, digest, *_ in uploads:
        got = session.get(f"{server.url}/v2/faults/kill/blobs/{digest}", timeout=60)
        assert got.status_code == 200
        assert hashlib.sha256(got.content).hexdigest() == digest.split(":")[1]
    assert upload_objects(server.store) == []
    assert unreferenced_multipart_uploads(server.store) == []


# Every kind of fault on a few percent of all calls.
FAULTS = [
    {"op": "*", "action": "error", "status": 500, "code": "InternalError", "p": 0.04},
    {"op": "*", "action": "error", "status": 503, "code": "SlowDown", "p": 0.01},
    {"op": "*", "action": "reset", "p": 0.04},
    {"op": "*", "action": "drop_response", "p": 0.04},
    {"op": "GetObject", "action": "truncate", "p": 0.08},
    {"op": "GetObject", "action": "reset_mid_response", "p": 0.05},
    {"op": "*", "action": "delay", "delay": 0.3, "p": 0.03},
]


def test_skopeo_push_and_pull_through_a_failing_store(faulty_berth, fault_proxy, skopeo, tmp_path):
    """What the clients see of a flaky store: nothing but slower requests. Every pull that
    succeeds has the right bytes, and no multipart upload is left that no session knows."""
    from tests.s3_endpoint import unreferenced_multipart_uploads

    server = faulty_berth
    img = images.make_image(6 * MiB, n_layers=2)  # multipart layers, plus small config/manifest
    src = images.write_oci_layout(tmp_path / "src", img, "v1")
    fault_proxy.faults.set(FAULTS, seed=10)
    dest = f"docker://{server.host}/faults/skopeo:v1"
    creds = server.rw.colon
    attempts = {"push": 0, "pull": 0}
    for _ in range(3):
        attempts["push"] += 1
        try:
            skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, src, dest, timeout=120)
            break
        except CommandError:
            continue
    else:
        raise AssertionError("three pushes failed")
    pulled = 0
    for n in range(4):
        attempts["pull"] += 1
        out = tmp_path / f"back-{n}"
        try:
            skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, dest, f"oci:{out}:v1", timeout=120)
        except CommandError:
            continue
        _desc, manifest = images.read_oci_layout(out, "v1")
        assert manifest == img.manifest.data
        for blob in img.blobs():
            assert images.read_oci_blob(out, blob.digest) == blob.data
        pulled += 1
    report = fault_proxy.faults.report()
    injected = sum(rule["injected"] for rule in report["rules"])
    assert injected >= 15, report  # the store really failed
    assert pulled >= 3, (attempts, report)
    errors_seen = [
        line for line in server.access_log_path.read_text().splitlines() if line.split()[-1].startswith("5")
    ]
    assert len(errors_seen) <= 2, errors_seen  # Berth absorbed the faults
    fault_proxy.faults.clear()
    assert unreferenced_multipart_uploads(server.store, report["dropped_uploads"]) == []
