"""Observability in-process: who may read /metrics, what the storage, upload and auth metrics
count, the access line and request ids, the dashboard's metric names, the new settings.
The end-to-end versions (real gunicorn, two workers, real clients) are in
tests/e2e/test_observability.py."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from falcon import testing
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from auth.client_address import TrustedProxies
from observability import instance_dir, log_format
from observability.request_context import REQUEST_ID, RequestIdFilter, valid_request_id
from observability.requests import RequestObserver
from observability.usage_gauges import UsageBoard, UsageCollector
from settings import ObservabilitySettings, Settings, SettingsError
from storage.usage import RepositoryUsage, UsageReport
from tests.conftest import RO_PASS, RO_USER, RW_PASS, RW_USER, basic, make_settings, sha256

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token-0123456789"


def _client(tmp_path: Path, **observability) -> testing.TestClient:
    settings = make_settings(tmp_path / "data", observability=ObservabilitySettings(**observability))
    return testing.TestClient(create_app(settings))


def scrape(client: testing.TestClient) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape from loopback, by (name, sorted labels)."""
    r = client.simulate_get("/metrics", remote_addr="127.0.0.1")
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# ------------------------------------------------------------------------------ who may scrape


def test_metrics_readable_from_loopback_only_by_default(tmp_path):
    client = _client(tmp_path)
    r = client.simulate_get("/metrics", remote_addr="127.0.0.1")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE berth_http_requests_total counter" in r.text
    r = client.simulate_get("/metrics", remote_addr="10.1.2.3")
    assert r.status_code == 403
    assert r.json["errors"][0]["code"] == "DENIED"
    # Through a trusted proxy (loopback), the client is the one X-Forwarded-For names.
    r = client.simulate_get("/metrics", remote_addr="127.0.0.1", headers={"X-Forwarded-For": "203.0.113.7"})
    assert r.status_code == 403


def test_metrics_token(tmp_path):
    client = _client(tmp_path, metrics_token=TOKEN, metrics_allow=(ipaddress.ip_network("10.9.0.0/16"),))
    assert client.simulate_get("/metrics", remote_addr="10.9.3.4").status_code == 200  # allowed network
    r = client.simulate_get("/metrics", remote_addr="10.1.2.3")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="berth-metrics"'
    r = client.simulate_get("/metrics", remote_addr="10.1.2.3", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert "invalid_token" in r.headers["www-authenticate"]
    r = client.simulate_get("/metrics", remote_addr="10.1.2.3", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    # A registry user's credentials are not a metrics token.
    r = client.simulate_get("/metrics", remote_addr="10.1.2.3", headers=basic(RW_USER, RW_PASS))
    assert r.status_code == 401


def test_metrics_off_when_nobody_may_read_them(tmp_path):
    client = _client(tmp_path, metrics_allow=())
    r = client.simulate_get("/metrics", remote_addr="127.0.0.1", headers=basic(RW_USER, RW_PASS))
    assert r.status_code == 404


# ------------------------------------------------------------------------------ what is counted


def test_uploads_storage_and_auth_are_counted(tmp_path):
    client = _client(tmp_path)
    before = scrape(client)
    data = os.urandom(3000)
    r = client.simulate_post(
        "/v2/obs/count/blobs/uploads/", query_string=f"digest={sha256(data)}", body=data,
        headers=basic(RW_USER, RW_PASS),
    )  # fmt: skip
    assert r.status_code == 201
    assert client.simulate_get("/v2/", headers=basic(RW_USER, "wrong")).status_code == 401
    assert client.simulate_get("/v2/").status_code == 401
    r = client.simulate_post("/v2/obs/count/blobs/uploads/", headers=basic(RO_USER, RO_PASS))
    assert r.status_code == 403
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("berth_uploads_total", event="completed") == 1
    assert delta("berth_upload_blob_size_bytes_count") == 1
    assert delta("berth_upload_blob_size_bytes_sum") == 3000
    assert (
        delta("berth_storage_operation_duration_seconds_count", operation="writer_commit", outcome="ok") == 1
    )
    assert delta("berth_auth_failures_total", kind="bad_password") == 1
    assert delta("berth_auth_failures_total", kind="no_credentials") == 1
    assert delta("berth_auth_failures_total", kind="denied") == 1
    assert value(after, "berth_upload_requests_in_flight") == 0
    # Outside gunicorn, the process's own memory is reported.
    assert value(after, "berth_process_resident_memory_bytes", pid=str(os.getpid()), role="server") > 1e6


def test_dashboard_uses_only_exported_names(tmp_path):
    """Every berth_* series the Grafana dashboard queries is one Berth exports."""
    client = _client(tmp_path)
    text = client.simulate_get("/metrics", remote_addr="127.0.0.1").text
    board = UsageBoard(None)
    board.publish(_usage_document())
    text += "".join(f"# TYPE {f.name} gauge\n" for f in UsageCollector(board).collect())
    exported = set()
    for kind_line in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, kind = kind_line
        suffixes = {"histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
        exported.update(name + s for s in suffixes)
    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used.update(re.findall(r"\bberth_[a-z0-9_]+", target["expr"]))
    assert len(used) > 25
    assert used <= exported, sorted(used - exported)


def _usage_document():
    from observability.usage_gauges import summarize

    report = UsageReport(
        [RepositoryUsage("a/big", 300, 3, 200), RepositoryUsage("b", 20, 1, 20), RepositoryUsage("c", 10, 1, 0)],
        linked_bytes=310, linked_blobs=4, shared_bytes=100, stored_bytes=400, stored_blobs=5,
        unlinked_bytes=90,
    )  # fmt: skip
    return summarize(report, top=1, taken_at=1.0e9, seconds=0.5)


def test_usage_gauges_cap_repositories():
    board = UsageBoard(None)
    board.publish(_usage_document())
    families = {f.name: f for f in UsageCollector(board).collect()}
    repos = {s.labels["repository"]: s.value for s in families["berth_repository_bytes"].samples}
    assert repos == {"a/big": 300, "_other": 30}  # top 1, the rest summed
    exclusive = {
        s.labels["repository"]: s.value for s in families["berth_repository_exclusive_bytes"].samples
    }
    assert exclusive == {"a/big": 200, "_other": 20}
    assert families["berth_storage_stored_bytes"].samples[0].value == 400
    assert families["berth_storage_repositories"].samples[0].value == 3


# ------------------------------------------------------------------------------ logs


@pytest.fixture
def captured_log():
    """Lines of the root logger, formatted as REGISTRY_LOG_FORMAT=json formats them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_format.json_formatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def test_access_line_and_request_id_on_every_line(captured_log):
    observer = RequestObserver(TrustedProxies.parse("127.0.0.1"), json_lines=True)
    record = observer.begin("PATCH", "/v2/team/app/blobs/uploads/u-1", "127.0.0.1", "nginx-id-1")
    record.environ = {
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_X_FORWARDED_FOR": "198.51.100.4",
        "berth.route": "/v2/{name}/blobs/uploads/{upload_id}",
        "berth.repository": "team/app",
        "berth.user": "alice",
        "berth.principal": "user:alice",
        "berth.upload_id": "u-1",
    }
    try:  # deep inside the request: a storage failure with its traceback
        raise OSError("disk on fire")
    except OSError:
        logging.getLogger("berth.storage").exception("storage failed")
    observer.end(record, 202, received=1048576, sent=0)
    assert REQUEST_ID.get() == "-"  # reset for the connection's next request
    logging.getLogger("berth").info("between requests")
    deep, access, after = captured_log()
    assert deep["request_id"] == access["request_id"] == "nginx-id-1"
    assert "Traceback" in deep["exc_info"] and "disk on fire" in deep["exc_info"]
    assert after["request_id"] == "-"
    assert access["logger"] == "berth.access"
    assert {k: access[k] for k in ("method", "route", "repository", "status", "bytes_in", "bytes_out")} == {
        "method": "PATCH",
        "route": "/v2/{name}/blobs/uploads/{upload_id}",
        "repository": "team/app",
        "status": 202,
        "bytes_in": 1048576,
        "bytes_out": 0,
    }
    assert access["user"] == "alice" and access["upload_id"] == "u-1"
    assert access["client"] == "198.51.100.4"  # through the trusted proxy
    assert {"time", "level", "pid", "duration_ms"} <= set(access)


def test_request_id_from_untrusted_peers_or_of_bad_shape_is_replaced():
    observer = RequestObserver(TrustedProxies.parse("10.0.0.1"), access=False, record_metrics=False)
    for peer, header, kept in [
        ("10.0.0.1", "abc-123", True),
        ("192.0.2.9", "abc-123", False),  # not a trusted proxy
        ("10.0.0.1", "has space", False),
        ("10.0.0.1", "x" * 129, False),
        ("10.0.0.1", "bad\r\nheader", False),
        ("10.0.0.1", None, False),
    ]:
        record = observer.begin("GET", "/v2/", peer, header)
        assert (record.request_id == header) is kept, (peer, header)
        assert valid_request_id(record.request_id)
        observer.end(record, 200, 0, 0)
    assert len(observer.begin("GET", "/", "192.0.2.9", None).request_id) == 32


def test_text_access_line_escapes_control_characters(caplog):
    observer = RequestObserver(TrustedProxies.parse("127.0.0.1"), record_metrics=False)
    record = observer.begin("GET", "/v2/a\nforged line/manifests/x", "127.0.0.1", None)
    record.environ = {"REMOTE_ADDR": "127.0.0.1", "berth.user": "eve\x1b[31m"}
    with caplog.at_level(logging.INFO, logger="berth.access"):
        observer.end(record, 404, 0, 10)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "berth.access"]
    assert "\n" not in line and "\x1b" not in line
    assert line.startswith("GET /v2/a\\nforged\\x20line/manifests/x 404 in=0 out=10 ")
    assert "user=eve\\x1b[31m" in line


# ------------------------------------------------------------------------------ multiprocess files


def test_dead_worker_loses_its_live_gauges_keeps_its_counters(tmp_path):
    """instance_dir.mark_process_dead (the master cannot import prometheus_client) does what the
    library's does."""
    worker = (
        "from prometheus_client import Counter, Gauge\n"
        "Counter('t_done', 'x').inc(3)\n"
        "Gauge('t_busy', 'x', multiprocess_mode='livesum').set(2)\n"
        "import os; print(os.getpid())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pid = int(
        subprocess.run(
            [sys.executable, "-c", worker], env=env, capture_output=True, text=True, check=True
        ).stdout
    )

    def collected():
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))
        return generate_latest(registry).decode()

    assert "t_busy 2.0" in collected()
    instance_dir.mark_process_dead(pid, str(tmp_path))
    text = collected()
    assert "t_busy 2.0" not in text
    assert "t_done_total 3.0" in text


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REGISTRY_LOG_FORMAT": "xml"}, "REGISTRY_LOG_FORMAT must be 'text' or 'json'"),
        ({"REGISTRY_METRICS_TOKEN": "short"}, "REGISTRY_METRICS_TOKEN must be at least 16"),
        ({"REGISTRY_METRICS_ALLOW": "10.0.0.0/8,localhost"}, "REGISTRY_METRICS_ALLOW: 'localhost' is not"),
        ({"REGISTRY_USAGE_INTERVAL": "5"}, "REGISTRY_USAGE_INTERVAL must be 0 (off) or at least 10"),
        ({"REGISTRY_USAGE_TOP_REPOSITORIES": "5000"}, "REGISTRY_USAGE_TOP_REPOSITORIES must be at most 1000"),
        ({"REGISTRY_ACCESS_LOG": "maybe"}, "REGISTRY_ACCESS_LOG must be true or false"),
    ],
)
def test_bad_observability_settings_stop_the_start(env, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert message in str(caught.value)
    assert "short" not in str(caught.value) or "TOKEN" not in message  # a token is never quoted


def test_observability_settings_from_env():
    obs = Settings.from_env(
        {"REGISTRY_LOG_FORMAT": "JSON", "REGISTRY_METRICS_TOKEN": TOKEN, "REGISTRY_METRICS_ALLOW": "",
         "REGISTRY_USAGE_INTERVAL": "0", "REGISTRY_ACCESS_LOG": "false"}
    ).observability  # fmt: skip
    assert (obs.log_format, obs.metrics_token, obs.metrics_allow, obs.usage_interval, obs.access_log) == (
        "json", TOKEN, (), 0, False,
    )  # fmt: skip
    assert obs.metrics_enabled
    assert TOKEN not in repr(obs)
    defaults = Settings.from_env({}).observability
    assert [str(n) for n in defaults.metrics_allow] == ["127.0.0.1/32", "::1/128"]
    assert (defaults.log_format, defaults.usage_interval, defaults.usage_top_repositories) == (
        "text",
        3600,
        50,
    )


def test_per_request_metrics_are_summed_over_workers(tmp_path):
    """Each worker's per-request totals (hot_metrics.py) are published to its own file and a
    scrape sums every file, its own written afresh; an exited worker's totals stay."""
    from observability.hot_metrics import Counters, Histograms, HotMetrics

    def worker():
        requests = Counters("t_requests", "x", ("route",))
        durations = Histograms("t_seconds", "x", ("route",), (0.1, 1.0))
        return requests, durations, HotMetrics([requests, durations], tmp_path)

    requests, durations, other = worker()
    requests.inc(("/a",), 2)
    durations.observe(("/a",), 0.05)
    durations.observe(("/a",), 5.0)
    other.flush()
    (tmp_path / f"berth-{os.getpid()}.json").rename(tmp_path / "berth-999999.json")  # it exited
    requests, durations, mine = worker()
    requests.inc(("/a",))
    requests.inc(("/b",))
    durations.observe(("/a",), 0.5)
    families = {f.name: f for f in mine.collect()}  # flushes its own totals first
    totals = {s.labels["route"]: s.value for s in families["t_requests"].samples}
    assert totals == {"/a": 3, "/b": 1}
    histogram = {(s.name, s.labels.get("le")): s.value for s in families["t_seconds"].samples}
    assert histogram[("t_seconds_bucket", "0.1")] == 1
    assert histogram[("t_seconds_bucket", "1.0")] == 2
    assert histogram[("t_seconds_bucket", "+Inf")] == 3 == histogram[("t_seconds_count", None)]
    assert histogram[("t_seconds_sum", None)] == pytest.approx(5.55)


def test_metered_driver_forwards_what_it_does_not_meter(tmp_path):
    """A backend's own methods, and its overrides of the interface's defaults, are reached
    through the wrapper as they are (not the base class's defaults)."""
    from observability.metered_driver import MeteredDriver
    from storage.driver import StorageDriver
    from storage.drivers.filesystem import FilesystemDriver

    class Backend(FilesystemDriver):
        def redirect_url(self, key, expires_in=1200):
            return f"https://cdn.example/{key}"

        def backend_only(self):
            return "mine"

    metered = MeteredDriver(Backend(tmp_path))
    assert isinstance(metered, StorageDriver)
    assert metered.redirect_url("blobs/x") == "https://cdn.example/blobs/x"
    assert metered.backend_only() == "mine"
    metered.write_bytes("a/b", b"1")
    assert metered.read_bytes("a/b") == b"1"


# ------------------------------------------------------------------------ batched access lines


def _record(logger: str, message: str) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.INFO, __file__, 1, message, None, None)


def test_access_lines_are_written_in_batches_and_other_lines_keep_their_order(monkeypatch):
    stream = io.StringIO()
    handler = log_format.BatchingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    handler.emit(_record(log_format.ACCESS_LOGGER, "GET 1"))
    handler.emit(_record(log_format.ACCESS_LOGGER, "GET 2"))
    assert stream.getvalue() == ""  # held
    handler.emit(_record("berth.storage", "storage failed"))  # written at once, after them
    assert stream.getvalue().splitlines() == [
        "berth.access GET 1",
        "berth.access GET 2",
        "berth.storage storage failed",
    ]

    handler.emit(_record(log_format.ACCESS_LOGGER, "GET 3"))
    # The worker's timer (and its exit) calls flush() on the root logger's handlers.
    handler.flush()
    assert stream.getvalue().splitlines()[-1] == "berth.access GET 3"

    # A burst is written when the batch is full, without waiting for the timer.
    monkeypatch.setattr(log_format, "ACCESS_BATCH_BYTES", 100)
    for i in range(10):
        handler.emit(_record(log_format.ACCESS_LOGGER, f"GET burst {i}"))
    assert "GET burst 4" in stream.getvalue()
    # And a line held for longer than ACCESS_BATCH_SECONDS goes with the next one.
    monkeypatch.setattr(log_format, "ACCESS_BATCH_SECONDS", 0.0)
    handler.emit(_record(log_format.ACCESS_LOGGER, "GET late"))
    assert stream.getvalue().splitlines()[-1] == "berth.access GET late"
