"""The instance's runtime directory: one per gunicorn master, made empty at start and removed
at exit (gunicorn.conf.py). It holds the workers' metrics (`metrics/`: prometheus-client's
multiprocess files and each worker's per-request totals, `berth-<pid>.json`, which a scrape
sums), the usage walk's lock and its latest result.

Standard library only: the gunicorn master uses it. prometheus-client itself is never imported
there (its exposition module imports ssl before gevent could patch it in the workers), so the
bookkeeping for a dead worker is done here, as the library's mark_process_dead does it."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

INSTANCE_DIR_ENV = "BERTH_INSTANCE_DIR"  # set by gunicorn.conf.py for the workers
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable
# Gauge modes whose values belong to live processes only (prometheus_client.multiprocess).
LIVE_GAUGE_MODES = ("liveall", "livesum", "livemax", "livemin", "livemostrecent")


def create(parent: str | None = None) -> Path:
    """A new, empty directory for this instance under `parent` (default: the system's temp
    directory), its path published in the environment the workers inherit."""
    if parent:
        os.makedirs(parent, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"berth-{os.getpid()}-", dir=parent or None))
    (path / "metrics").mkdir()
    os.environ[INSTANCE_DIR_ENV] = str(path)
    os.environ[MULTIPROC_ENV] = str(path / "metrics")
    return path


def current() -> Path | None:
    """This instance's directory, in a worker; None outside gunicorn (tests, the CLI)."""
    value = os.environ.get(INSTANCE_DIR_ENV)
    return Path(value) if value and os.path.isdir(value) else None


def mark_process_dead(pid: int, metrics_dir: str | None = None) -> None:
    """A worker exited: drop its live gauges (uploads in flight), keep its counters."""
    metrics_dir = metrics_dir or os.environ.get(MULTIPROC_ENV)
    if not metrics_dir:
        return
    for mode in LIVE_GAUGE_MODES:
        for path in glob.glob(os.path.join(metrics_dir, f"gauge_{mode}_{pid}.db")):
            os.remove(path)


def remove(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
