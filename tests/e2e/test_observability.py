"""Observability under a real gunicorn with two gevent workers and real clients: /metrics
after a skopeo push and pull agrees with what was sent and with the JSON access log of both
workers; unauthorised scrapes are refused; a docker push is followed by its request ids."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from observability.log_format import ACCESS_BATCH_SECONDS

from . import images
from .servers import BerthServer

pytestmark = pytest.mark.e2e

TOKEN = "e2e-metrics-token-0123456789"
LAYER_SIZE = 300 * 1024
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
UPLOAD_ROUTES = ("/v2/{name}/blobs/uploads/", "/v2/{name}/blobs/uploads/{upload_id}")


@pytest.fixture
def observed(make_registry, registry_class):
    if registry_class is not BerthServer:
        pytest.skip("Berth's own metrics and logs")

    def start(**env) -> BerthServer:
        base = {"REGISTRY_LOG_FORMAT": "json", "REGISTRY_METRICS_TOKEN": TOKEN}
        return make_registry(workers=2, extra_env={**base, **env})

    return start


def access_lines(server: BerthServer) -> list[dict]:
    """The access lines written so far, once every line of a request already answered is out:
    workers write access lines in batches, at least every ACCESS_BATCH_SECONDS."""
    time.sleep(ACCESS_BATCH_SECONDS + 0.25)
    lines = []
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["logger"] == "berth.access":
                lines.append(entry)
    return lines


def eventually(find, timeout: float = 5.0):
    """What `find()` returns once it is truthy: a worker writes a request's access line just
    after its last byte, so the client may look before it is there."""
    deadline = time.monotonic() + timeout
    while not (found := find()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def scrape(server: BerthServer, **headers) -> requests.Response:
    return requests.get(f"{server.url}/metrics", headers=headers, timeout=10)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_after_skopeo_push_and_pull_match_what_was_sent(observed, skopeo, tmp_path):
    server = observed(REGISTRY_USAGE_INTERVAL="10")
    workers = server.worker_pids()
    img = images.make_image(LAYER_SIZE, n_layers=2)
    repo = "obs/skopeo"
    src = images.write_oci_layout(tmp_path / "src", img, "v1")
    creds = server.rw.colon
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, src, f"docker://{server.host}/{repo}:v1")
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, f"docker://{server.host}/{repo}:v1",
           f"oci:{tmp_path / 'pulled'}:v1")  # fmt: skip
    # The requests were spread over both workers (new connections go to either); a few more
    # make sure, so the totals below are sums over two processes.
    for _ in range(100):
        if {e["pid"] for e in access_lines(server)} >= workers:
            break
        requests.get(f"{server.url}/v2/", timeout=5, headers={"Connection": "close"})
    assert {e["pid"] for e in access_lines(server)} == workers

    # Requests: the metrics count exactly the access lines, per route, method and status
    # class. Each worker publishes its per-request totals every second: scrape until the other
    # worker's are in.
    def counts():
        r = scrape(server)  # from loopback: allowed by default
        assert r.status_code == 200
        metrics = samples(r.text)
        log = [e for e in access_lines(server) if e["route"] != "/metrics"]
        logged = Counter((e["route"], e["method"], f"{e['status'] // 100}xx") for e in log)
        counted = {
            (dict(labels)["route"], dict(labels)["method"], dict(labels)["status_class"]): v
            for (name, labels), v in metrics.items()
            if name == "berth_http_requests_total" and dict(labels)["route"] != "/metrics"
        }
        return metrics, log, counted, dict(logged)

    eventually(lambda: (c := counts())[2] == c[3], timeout=10)
    metrics, log, counted, logged = counts()
    assert counted == logged

    # Bytes: what skopeo sent and received, blob for blob, in the log and in the metrics.
    blobs = [img.config, *img.layers]
    pushed = sum(b.size for b in blobs)
    uploaded = sum(e["bytes_in"] for e in log if e["route"] in UPLOAD_ROUTES)
    assert uploaded == pushed
    received = sum(v for (n, labels), v in metrics.items()
                   if n == "berth_http_received_bytes_total" and dict(labels)["route"] in UPLOAD_ROUTES)  # fmt: skip
    assert received == pushed
    downloads = [e for e in log if e["route"] == "/v2/{name}/blobs/{digest}" and e["method"] == "GET"]
    assert sorted(e["bytes_out"] for e in downloads) == sorted(b.size for b in blobs)
    assert (
        metrics[("berth_http_sent_bytes_total", (("method", "GET"), ("route", "/v2/{name}/blobs/{digest}")))]
        == pushed
    )
    manifest_put = [
        e for e in log if e["method"] == "PUT" and e["route"] == "/v2/{name}/manifests/{reference}"
    ]
    assert [e["bytes_in"] for e in manifest_put] == [img.manifest.size]

    # Histograms: as many observations as requests, cumulative buckets ending at the count.
    for route, method in {(e["route"], e["method"]) for e in log}:
        key = (("method", method), ("route", route))
        count = metrics[("berth_http_request_duration_seconds_count", key)]
        assert count == sum(1 for e in log if (e["route"], e["method"]) == (route, method))
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (n, labels), v in metrics.items()
            if n == "berth_http_request_duration_seconds_bucket"
            and (dict(labels)["route"], dict(labels)["method"]) == (route, method)
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)
        assert buckets[-1] == (float("inf"), count)

    # Uploads: one completed per blob, with its size; none in flight now.
    assert metrics[("berth_uploads_total", (("event", "completed"),))] == len(blobs)
    assert metrics[("berth_upload_blob_size_bytes_count", ())] == len(blobs)
    assert metrics[("berth_upload_blob_size_bytes_sum", ())] == pushed
    assert metrics[("berth_upload_requests_in_flight", ())] == 0
    commits = (("operation", "writer_commit"), ("outcome", "ok"))
    assert metrics[("berth_storage_operation_duration_seconds_count", commits)] == len(blobs)
    # Each worker's memory, and the master's.
    memory = {
        dict(labels)["pid"]: v
        for (n, labels), v in metrics.items()
        if n == "berth_process_resident_memory_bytes"
    }
    assert {int(pid) for pid in memory} == workers | {server.proc.pid}
    assert all(v > 10 * 2**20 for v in memory.values())

    # Storage usage: the next background walk (every 10 s) sees the image.
    expected = pushed + img.manifest.size
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        usage = samples(scrape(server).text)
        if usage.get(("berth_repository_bytes", (("repository", repo),))) == expected:
            break
        time.sleep(0.5)
    assert usage[("berth_repository_bytes", (("repository", repo),))] == expected
    assert usage[("berth_storage_stored_bytes", ())] == expected
    walkers = {e["pid"] for e in _lines(server) if e["logger"] == "berth.usage"}
    assert len(walkers) == 1  # one walker per instance


def _lines(server: BerthServer) -> list[dict]:
    return [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]


def test_unauthorised_scrapes_are_refused(observed):
    server = observed()
    relayed = {"X-Forwarded-For": "198.51.100.7"}  # a client behind the trusted proxy (loopback)
    assert scrape(server, **relayed).status_code == 401
    r = scrape(server, **relayed, Authorization="Bearer not-the-token")
    assert r.status_code == 401
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    r = scrape(server, **relayed, Authorization=server.rw.basic_header)
    assert r.status_code == 401
    assert scrape(server, **relayed, Authorization=f"Bearer {TOKEN}").status_code == 200
    refused = eventually(
        lambda: (
            [e for e in access_lines(server) if e["route"] == "/metrics" and e["status"] == 401][2:]
            and [e for e in access_lines(server) if e["route"] == "/metrics" and e["status"] == 401]
        )
    )
    assert len(refused) == 3 and all(e["client"] == "198.51.100.7" for e in refused)


def test_docker_push_followed_by_request_ids(observed, docker_daemon, skopeo, tmp_path):
    server = observed(REGISTRY_AUTH_FAILURE_BURST="1")
    workers = server.worker_pids()
    img = images.make_image(LAYER_SIZE, n_layers=3)
    archive = tmp_path / "image.tar"
    skopeo(
        "copy", images.write_oci_layout(tmp_path / "src", img, "v1"), f"docker-archive:{archive}:obs/local:v1"
    )
    docker_daemon.docker("load", "-i", str(archive))
    target = f"{server.host}/obs/docker:v1"
    docker_daemon.docker("tag", "obs/local:v1", target)
    docker_daemon.login(server.host, server.rw)
    try:
        docker_daemon.docker("push", target, timeout=120)
    finally:
        docker_daemon.docker("logout", server.host, check=False)
        docker_daemon.docker("rmi", "-f", target, "obs/local:v1", check=False)

    push = [e for e in access_lines(server) if e["repository"] == "obs/docker"]
    routes = Counter((e["method"], e["route"]) for e in push)
    assert routes[("PUT", "/v2/{name}/manifests/{reference}")] == 1
    assert routes[("PUT", "/v2/{name}/blobs/uploads/{upload_id}")] == 4  # config and 3 layers
    ids = [e["request_id"] for e in push]
    assert all(REQUEST_ID.fullmatch(i) for i in ids) and len(set(ids)) == len(ids)
    # docker uploads layers over parallel connections, which the two workers share.
    assert {e["pid"] for e in push} == workers
    # Each upload's requests can be followed by its upload id, and each request by its id:
    # `grep <id>` finds exactly its own access line, whichever worker wrote it.
    text = server.log_path.read_text()
    for entry in push:
        assert text.count(entry["request_id"]) == 1
        assert entry["user"] == server.rw.username and entry["principal"] == f"user:{server.rw.username}"
    uploads = Counter(e["upload_id"] for e in push if e["route"].startswith("/v2/{name}/blobs/uploads"))
    assert len(uploads) == 4 and None not in uploads

    # Lines logged deep inside a request carry its id too (here the failed-login limiter's,
    # inside auth), and the id is the one the client got back.
    bad = requests.get(f"{server.url}/v2/", auth=("mallory", "guess"), timeout=10)
    assert bad.status_code == 401
    rid = bad.headers["X-Request-Id"]
    mine = eventually(
        lambda: (
            [e for e in _lines(server) if e.get("request_id") == rid][1:]
            and [e for e in _lines(server) if e.get("request_id") == rid]
        )
    )
    assert [e["logger"] for e in mine] == ["berth.auth", "berth.access"]
    assert "failed logins from 127.0.0.1" in mine[0]["message"]
    assert "guess" not in server.log_path.read_text()

    # An id from a trusted proxy (loopback, FORWARDED_ALLOW_IPS's default) is kept.
    r = requests.get(f"{server.url}/v2/", headers={"X-Request-Id": "nginx-0123"}, timeout=10)
    assert r.headers["X-Request-Id"] == "nginx-0123"
    kept = eventually(lambda: [e["status"] for e in access_lines(server) if e["request_id"] == "nginx-0123"])
    assert kept == [401]
