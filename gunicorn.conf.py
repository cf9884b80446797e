"""gunicorn settings for Berth: server knobs only. Nothing here imports the app, boto3 or ssl at
load time, so gevent can monkey-patch before they are imported (see the README).
Command-line flags (-b, -w, ...) override these; environment variables tune them."""

import os
import sys

# serving/ sits beside this file; gunicorn reads this file before it moves to --chdir.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from observability import instance_dir
from observability.log_format import logging_config
from serving.limits import LimitsError, ServerLimits, positive_int
from settings import SettingsError, log_format_from_env

# Every BERTH_* knob is checked here, in the master, before anything starts: a malformed value
# stops the server with one clear line. serving/limits.py uses the standard library only.
try:
    _limits = ServerLimits.from_env(os.environ)
    _workers = positive_int(os.environ, "WEB_CONCURRENCY", os.cpu_count() or 2)
    _worker_connections = positive_int(os.environ, "BERTH_WORKER_CONNECTIONS", 1000)
    _graceful_timeout = positive_int(os.environ, "BERTH_GRACEFUL_TIMEOUT", 120)
    _log_format = log_format_from_env(os.environ)
except (LimitsError, SettingsError) as exc:
    raise SystemExit(f"Berth: invalid settings: {exc}") from None

# Where to listen: behind a reverse proxy, keep it on loopback.
bind = os.environ.get("BERTH_BIND", "127.0.0.1:5000")

# gevent: one process serves many slow clients (uploads of big layers) at once. A worker per
# core is enough; each has `worker_connections` concurrent requests.
worker_class = "serving.worker.RegistryGeventWorker"
workers = _workers
worker_connections = _worker_connections

# With gevent, `timeout` only kills a worker whose event loop is stuck, never a long upload.
timeout = 60
# On reload/shutdown, uploads in flight get this long to finish; an upload cut short loses only
# its current request (its saved state stays consistent) and the client can resume or retry.
graceful_timeout = _graceful_timeout
# Longer than a proxy's upstream keepalive (nginx: 60 s) so the proxy closes idle connections.
# The worker (serving/worker.py) reads its other deadlines from the same BERTH_* variables.
keepalive = _limits.keepalive_timeout

# Never preload: it would import the app (and later boto3/ssl) before gevent patches them.
preload_app = False

# gunicorn 27's control socket defaults to one path per user, which several instances on one
# machine would fight over; enable it with BERTH_CONTROL_SOCKET=/path/to/socket.
_control_socket = os.environ.get("BERTH_CONTROL_SOCKET", "")
if _control_socket:
    control_socket = _control_socket
control_socket_disable = not _control_socket

# Only trust X-Forwarded-* from these addresses (the reverse proxy).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Logs: every line to stderr, as text or JSON (REGISTRY_LOG_FORMAT), with its request's id.
# Berth's worker writes one structured access line per request (REGISTRY_ACCESS_LOG), so
# gunicorn's own access log stays off unless asked for on the command line.
logconfig_dict = logging_config(_log_format)
accesslog = None

# The instance's runtime directory (metrics of every worker, the storage usage walk's lock and
# result): a new, empty one under BERTH_RUNTIME_DIR (default: the system's temp directory) for
# each start, removed at exit. observability/instance_dir.py says what is in it.
_runtime_parent = os.environ.get("BERTH_RUNTIME_DIR", "").strip() or None


def on_starting(server):
    # Validate settings once, in the master, so a typo stops the server with one clear message
    # instead of workers failing to boot in a loop. settings.py uses the standard library only.
    from settings import Settings, SettingsError

    try:
        Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"Berth: invalid settings: {exc}") from None
    try:
        # Before any worker exists: prometheus-client reads PROMETHEUS_MULTIPROC_DIR when a
        # worker first imports it.
        instance_dir.create(_runtime_parent)
    except OSError as exc:
        raise SystemExit(f"Berth: cannot create a runtime directory under BERTH_RUNTIME_DIR: {exc}") from None


def child_exit(server, worker):
    # Its counters stay (they only ever grow); its live gauges (uploads in flight) go.
    instance_dir.mark_process_dead(worker.pid)


def on_exit(server):
    instance_dir.remove(instance_dir.current())
