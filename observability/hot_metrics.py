"""The per-request metrics (HTTP requests, durations and bytes; storage operations), counted
in plain dicts by each worker and summed across workers at scrape time.

Every request updates them several times: a manifest GET is ten values (a request, a
duration, bytes sent, three storage reads with their latency). Through prometheus-client's
multiprocess values each one costs 1.5-3.5 us (a lock, a pid check, a write into a mapped
file); here an update is a dict lookup and a few integer additions. Each worker writes its
totals every FLUSH_SECONDS to `berth-<pid>.json` in the instance's metrics directory (next to
the library's own files) and a scrape sums every worker's file, its own written afresh, into
the library's metric families: the equivalent of the multiprocess mode for these families.
Totals only grow, and the file of a worker that exited stays, so counters never go back. What
another worker counted reaches a scrape up to FLUSH_SECONDS late. Outside gunicorn (tests, no
instance directory) a scrape reads this process's totals directly."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

log = logging.getLogger("berth.metrics")

FLUSH_SECONDS = 1.0
FILE_PREFIX = "berth-"


class Histograms:
    """One histogram family: per label values, [count, sum, count per bucket (not cumulative)]."""

    def __init__(
        self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: Iterable[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = tuple(float(b) for b in buckets)  # +Inf is implied
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0, 0.0] + [0] * (len(self.bounds) + 1)
        series[0] += 1
        series[1] += value
        series[2 + bisect_left(self.bounds, value)] += 1

    def family(self, merged: dict[tuple[str, ...], list[float]]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for labels, series in sorted(merged.items()):
            cumulative, buckets = 0, []
            for edge, count in zip(edges, series[2:], strict=True):
                cumulative += count
                buckets.append((edge, cumulative))
            family.add_metric(list(labels), buckets, series[1])
        return family


class Counters:
    """One counter family: per label values, a total."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.series: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        self.series[labels] = self.series.get(labels, 0) + amount

    def family(self, merged: dict[tuple[str, ...], float]) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in sorted(merged.items()):
            family.add_metric(list(labels), value)
        return family


class HotMetrics:
    """This process's per-request families, written to its file and merged with the others'."""

    def __init__(self, families: Iterable[Histograms | Counters], directory: Path | None = None) -> None:
        self.families = {f.name: f for f in families}
        self._directory = directory
        self._lock = threading.Lock()  # a scrape's flush and the background one
        self._flusher: threading.Thread | None = None

    # ------------------------------------------------------------------------------ writing

    def snapshot(self) -> dict[str, list]:
        return {name: [[list(k), v] for k, v in list(f.series.items())] for name, f in self.families.items()}

    def flush(self) -> None:
        """Write this process's totals (atomically) for the scrapes of every worker."""
        if self._directory is None:
            return
        path = self._directory / f"{FILE_PREFIX}{os.getpid()}.json"
        with self._lock:
            partial = path.with_suffix(".tmp")
            partial.write_text(json.dumps(self.snapshot()))
            os.replace(partial, path)

    def start_flushing(self) -> None:
        """Every FLUSH_SECONDS in the background (a greenlet under gevent), once per process."""
        if self._directory is None or self._flusher is not None:
            return
        self._flusher = threading.Thread(target=self._flush_forever, name="metrics-flush", daemon=True)
        self._flusher.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except OSError:
                log.warning("could not write this worker's metrics", exc_info=True)

    # ------------------------------------------------------------------------------ reading

    def collect(self) -> Iterator:
        """The families summed over every worker of the instance (for a scrape)."""
        snapshots = [self.snapshot()]  # this process's, from memory
        if self._directory is not None:
            own = f"{FILE_PREFIX}{os.getpid()}.json"
            for path in self._directory.glob(f"{FILE_PREFIX}*.json"):
                if path.name == own:
                    continue
                try:
                    snapshots.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue  # replaced under us: the next scrape reads it
        for name, family in self.families.items():
            merged: dict[tuple[str, ...], Any] = {}
            for snapshot in snapshots:
                for labels, value in snapshot.get(name, ()):
                    key = tuple(labels)
                    if isinstance(value, list):
                        into = merged.setdefault(key, [0] * len(value))
                        for i, v in enumerate(value):
                            into[i] += v
                    else:
                        merged[key] = merged.get(key, 0) + value
            yield family.family(merged)
