"""Scheduled garbage collection inside the server (REGISTRY_GC_INTERVAL): every worker of every
instance keeps a timer, and whichever gets the collection's lease first runs it; the others find
it busy, or find in `gc/last-run` that it ran recently, and go back to sleep. A runner that
crashes loses the lease (it expires), and the next timer takes over."""

from __future__ import annotations

import json
import logging
import random
import threading
import time

from storage import paths
from storage.driver import StorageDriver, StorageError
from storage.gc import CollectionRunning, GarbageCollector

log = logging.getLogger("berth.gc")


class GcSchedule:
    def __init__(
        self, collector: GarbageCollector, driver: StorageDriver, interval: float, mode: str
    ) -> None:
        self._collector = collector
        self._driver = driver
        self._interval = interval
        self._mode = mode
        self._stop = threading.Event()

    def start(self) -> None:
        # A thread: a greenlet under gunicorn's gevent workers, which patch threading.
        threading.Thread(target=self._loop, name="berth-gc", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval * random.uniform(0.5, 1.0)):  # noqa: S311 - jitter
            try:
                self.run_if_due()
            except Exception:  # a failed run must not end the schedule; the next one retries
                log.exception("scheduled garbage collection failed")

    def run_if_due(self) -> bool:
        if time.time() - self._last_run() < self._interval * 0.9:
            return False
        try:
            report = self._collector.collect(self._mode)
        except CollectionRunning:
            return False
        self._driver.write_bytes(
            paths.GC_LAST_RUN, json.dumps({"time": time.time(), **report.as_dict()}).encode()
        )
        return True

    def _last_run(self) -> float:
        try:
            return float(json.loads(self._driver.read_bytes(paths.GC_LAST_RUN))["time"])
        except (StorageError, ValueError, KeyError, TypeError):  # none yet (ObjectNotFound) too
            return 0.0
