"""Storage usage as gauges: walked in the background at an interval by one process per
instance, read cheaply by every scrape.

- One walker per instance: the worker holding an exclusive `flock` on `usage.lock` in the
  instance's directory (observability/instance_dir.py) walks; the others try again now and
  then, so when the walker exits another takes over. The kernel drops the lock of a dead
  process.
- The walk (storage/usage.py) runs in a background thread (a greenlet under gevent) and yields
  to requests as it goes; it never runs inside a scrape. Its result, a small JSON document,
  is written to `usage.json` in the instance's directory (atomically) and every scrape reads
  it: one small file read.
- Repository names are unbounded label values: the `REGISTRY_USAGE_TOP_REPOSITORIES` largest
  repositories get their own series, the rest are summed under `repository="_other"` (no
  repository name can start with `_`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from observability import metrics
from storage.registry import Registry
from storage.usage import StorageUsage, UsageReport

log = logging.getLogger("berth.usage")

OTHER = "_other"
RETRY_LEAD = 60.0  # seconds between two attempts of a non-walker to become the walker
RETRY_FAILED = 300.0  # seconds before a failed walk is tried again
FIRST_WALK_DELAY = 1.0  # after the start, so the walk does not compete with the first requests


def summarize(report: UsageReport, top: int, taken_at: float, seconds: float) -> dict[str, Any]:
    """The gauges' document: totals, the `top` largest repositories, the rest summed."""
    ranked = report.repositories  # largest first
    rest = ranked[top:]
    return {
        "taken_at": taken_at,
        "seconds": seconds,
        "stored_bytes": report.stored_bytes,
        "stored_blobs": report.stored_blobs,
        "linked_bytes": report.linked_bytes,
        "shared_bytes": report.shared_bytes,
        "unlinked_bytes": report.unlinked_bytes,
        "repositories_count": len(ranked),
        "repositories": [
            {"name": u.name, "bytes": u.bytes, "exclusive_bytes": u.exclusive_bytes or 0, "blobs": u.blobs}
            for u in ranked[:top]
        ],
        "other": {
            "repositories": len(rest),
            "bytes": sum(u.bytes for u in rest),
            "exclusive_bytes": sum(u.exclusive_bytes or 0 for u in rest),
            "blobs": sum(u.blobs for u in rest),
        },
    }


class UsageBoard:
    """Where the latest document is kept: `usage.json` in the instance's directory, shared by
    its workers, or this process's memory when there is no such directory."""

    def __init__(self, directory: Path | None) -> None:
        self._path = directory / "usage.json" if directory is not None else None
        self._memory: dict[str, Any] | None = None

    def publish(self, document: dict[str, Any]) -> None:
        if self._path is None:
            self._memory = document
            return
        partial = self._path.with_name(f"usage.json.{os.getpid()}")
        partial.write_text(json.dumps(document))
        os.replace(partial, self._path)

    def latest(self) -> dict[str, Any] | None:
        if self._path is None:
            return self._memory
        try:
            return json.loads(self._path.read_text())
        except (OSError, ValueError):
            return None


class UsageCollector:
    """The gauges, from the board's latest document (absent until the first walk ends)."""

    def __init__(self, board: UsageBoard) -> None:
        self._board = board

    def collect(self) -> Iterator[GaugeMetricFamily]:
        doc = self._board.latest()
        if doc is None:
            return
        totals = (
            ("berth_storage_stored_bytes", "stored_bytes", "Bytes of every blob stored, once each"),
            ("berth_storage_stored_blobs", "stored_blobs", "Blobs stored"),
            (
                "berth_storage_linked_bytes",
                "linked_bytes",
                "Bytes of blobs linked by a repository, once each",
            ),
            (
                "berth_storage_shared_bytes",
                "shared_bytes",
                "Bytes of blobs linked by two repositories or more",
            ),
            ("berth_storage_unlinked_bytes", "unlinked_bytes", "Bytes of stored blobs no repository links"),
            ("berth_storage_repositories", "repositories_count", "Repositories"),
            ("berth_storage_usage_timestamp_seconds", "taken_at", "When the last usage walk ended"),
            ("berth_storage_usage_walk_seconds", "seconds", "How long the last usage walk took"),
        )
        for name, key, help_text in totals:
            if doc.get(key) is not None:
                yield GaugeMetricFamily(name, help_text, value=doc[key])
        per_repo = (
            ("berth_repository_bytes", "bytes", "Bytes of the blobs a repository links"),
            (
                "berth_repository_exclusive_bytes",
                "exclusive_bytes",
                "Bytes of blobs only this repository links",
            ),
            ("berth_repository_blobs", "blobs", "Blobs a repository links"),
        )
        for name, key, help_text in per_repo:
            family = GaugeMetricFamily(
                name, f"{help_text} (the largest repositories; the rest under repository=\"{OTHER}\")",
                labels=["repository"],
            )  # fmt: skip
            for repo in doc["repositories"]:
                family.add_metric([repo["name"]], repo[key])
            if doc["other"]["repositories"]:
                family.add_metric([OTHER], doc["other"][key])
            yield family


class UsageRefresher:
    """Walks storage every `interval` seconds when this process holds the instance's lead."""

    def __init__(self, registry: Registry, board: UsageBoard, interval: float, top: int,
                 directory: Path | None) -> None:  # fmt: skip
        self._registry = registry
        self._board = board
        self._interval = interval
        self._top = top
        self._lock_path = directory / "usage.lock" if directory is not None else None
        self._lock_fd: int | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="storage-usage", daemon=True)
        thread.start()
        return thread

    def holds_lead(self) -> bool:
        """Whether this process is the instance's walker (taking the lead if it is free)."""
        if self._lock_path is None or self._lock_fd is not None:
            return True
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd  # held until this process exits
        return True

    def refresh(self) -> dict[str, Any] | None:
        """One walk, published; None (and a warning) if storage failed."""
        started = time.monotonic()
        try:
            # Yield to requests as the walk goes (under gevent, sleep(0) switches greenlets).
            report = StorageUsage(self._registry, progress=lambda what, n: time.sleep(0)).measure()
        except Exception:
            metrics.USAGE_REFRESHES.labels("error").inc()
            log.warning("storage usage walk failed; the gauges keep the last result", exc_info=True)
            return None
        document = summarize(report, self._top, time.time(), time.monotonic() - started)
        self._board.publish(document)
        metrics.USAGE_REFRESHES.labels("ok").inc()
        log.info(
            "storage usage: %d repositories, %d bytes stored (walk took %.1f s)",
            document["repositories_count"], document["stored_bytes"] or 0, document["seconds"],
        )  # fmt: skip
        return document

    def _run(self) -> None:
        time.sleep(FIRST_WALK_DELAY)
        while True:
            if not self.holds_lead():
                time.sleep(min(self._interval, RETRY_LEAD))
                continue
            latest = self._board.latest()  # a walker that took over waits for the next turn
            due = latest["taken_at"] + self._interval if latest else 0.0
            if time.time() >= due:
                done = self.refresh()
                # After a failure, try again sooner than a whole interval.
                due = time.time() + (self._interval if done else min(self._interval, RETRY_FAILED))
            time.sleep(max(1.0, due - time.time()))
