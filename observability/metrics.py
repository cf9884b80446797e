"""Every Prometheus metric Berth exports, declared once (deploy/grafana-dashboard.json and the
README use these names), and the few helpers instrumented code calls.

Under gunicorn every worker writes its values to files in the instance's directory
(prometheus-client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR, set up by gunicorn.conf.py;
the per-request families through observability/hot_metrics.py) and a scrape, served by any
worker, sums them (observability/scrape.py). Without it (tests, the CLI) the values live in
this process.

Labels are bounded: routes are URL templates (never repository names), methods a fixed set,
statuses a class, operations and outcomes fixed lists. Repository names appear only on the
storage usage gauges, capped (observability/usage_gauges.py)."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from observability.hot_metrics import Counters, Histograms, HotMetrics
from observability.instance_dir import MULTIPROC_ENV

# Request latency: from 1 ms (a manifest from the page cache) to 10 min (a layer at WAN speed).
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Blob sizes: 1 KiB (configs) to 16 GiB, by factors of 4.
SIZE_BUCKETS = tuple(float(1024 * 4**i) for i in range(13))

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The per-request families: kept by each worker in plain dicts, summed at scrape time
# (observability/hot_metrics.py says why).
HTTP_REQUESTS = Counters(
    "berth_http_requests",
    "HTTP requests answered, by route template, method and status class (2xx, 4xx...; none: "
    "the connection ended before an answer)",
    ("route", "method", "status_class"),
)
HTTP_DURATION = Histograms(
    "berth_http_request_duration_seconds",
    "Time from a request's head being read to its last byte sent, by route template and method",
    ("route", "method"),
    DURATION_BUCKETS,
)
HTTP_RECEIVED = Counters(
    "berth_http_received_bytes", "Request body bytes received (blob uploads, manifests)", ("route", "method")
)
HTTP_SENT = Counters(
    "berth_http_sent_bytes", "Response body bytes sent (blob and manifest downloads)", ("route", "method")
)
STORAGE_OPERATIONS = Histograms(
    "berth_storage_operation_duration_seconds",
    "Storage driver operations by operation and outcome (ok, not_found, busy, full, "
    "invalid_key, error), with their latency (the driver's own retries included); _count "
    "counts them",
    ("operation", "outcome"),
    STORAGE_BUCKETS,
)
PER_REQUEST = HotMetrics(
    [HTTP_REQUESTS, HTTP_DURATION, HTTP_RECEIVED, HTTP_SENT, STORAGE_OPERATIONS],
    Path(os.environ[MULTIPROC_ENV]) if os.environ.get(MULTIPROC_ENV) else None,
)

UPLOAD_REQUESTS_IN_FLIGHT = Gauge(
    "berth_upload_requests_in_flight",
    "Upload requests (POST, PATCH, PUT of blob uploads) being served now",
    multiprocess_mode="livesum",
)
UPLOADS = Counter(
    "berth_uploads",
    "Blob upload sessions by event: started, completed (a blob published), cancelled, mounted",
    ["event"],
)
UPLOAD_SIZE = Histogram(
    "berth_upload_blob_size_bytes", "Sizes of the blobs whose upload completed", buckets=SIZE_BUCKETS
)

S3_REQUESTS = Counter(
    "berth_s3_requests",
    "Every HTTP attempt boto3 makes to the object store, by S3 operation and outcome "
    "(ok, not_found, precondition_failed, throttled, client_error, server_error, network_error)",
    ["operation", "outcome"],
)
S3_RETRIES = Counter("berth_s3_retries", "S3 attempts that were boto3 retries", ["operation"])

PULLTHROUGH_REQUESTS = Counter(
    "berth_pullthrough_requests",
    "Pull-through lookups by kind (manifest, blob) and result: hit (stored here), fetched (from "
    "an upstream), not_found (no upstream has it), error (an upstream failed)",
    ["kind", "result"],
)
PULLTHROUGH_BYTES = Counter("berth_pullthrough_bytes", "Bytes received from upstream registries", ["kind"])

AUTH_FAILURES = Counter(
    "berth_auth_failures",
    "Refused requests by kind: no_credentials (the challenge), bad_password, bad_token, "
    "malformed, throttled (429 after failed logins), denied (403)",
    ["kind"],
)

GC_RUNS = Counter(
    "berth_gc_runs",
    "Garbage collection runs in the server (the endpoint and the schedule) by outcome: ok, "
    "dry_run, busy (another run held the lease), error",
    ["outcome"],
)
GC_RECLAIMED = Counter("berth_gc_reclaimed_bytes", "Bytes deleted by garbage collection (blobs and uploads)")
GC_REMOVED = Counter(
    "berth_gc_removed",
    "What garbage collection deleted, by kind: layer_links, manifests, referrers, blobs, uploads, "
    "multipart_uploads",
    ["kind"],
)

USAGE_REFRESHES = Counter(
    "berth_storage_usage_refreshes", "Background storage usage walks by outcome (ok, error)", ["outcome"]
)


def auth_failure(kind: str) -> None:
    AUTH_FAILURES.labels(kind).inc()


def upload_event(event: str, size: int | None = None) -> None:
    UPLOADS.labels(event).inc()
    if size is not None:
        UPLOAD_SIZE.observe(size)


def pullthrough(kind: str, result: str, received: int = 0) -> None:
    PULLTHROUGH_REQUESTS.labels(kind, result).inc()
    if received:
        PULLTHROUGH_BYTES.labels(kind).inc(received)


GC_REMOVED_KINDS = ("layer_links", "manifests", "referrers", "blobs", "uploads", "multipart_uploads")


def gc_run(outcome: str, removed: dict[str, int] | None = None, reclaimed_bytes: int = 0) -> None:
    """A garbage collection run in a server process has ended (observability/metered_gc.py)."""
    GC_RUNS.labels(outcome).inc()
    for kind, count in (removed or {}).items():
        if count:
            GC_REMOVED.labels(kind).inc(count)
    if reclaimed_bytes:
        GC_RECLAIMED.inc(reclaimed_bytes)
