"""Memory and CPU of each gunicorn process, read from /proc at scrape time.

prometheus-client's process collector describes the one process that serves the scrape, and
its multiprocess mode cannot sum what it reports. So a scrape reads, for the master and each
of its workers, /proc/<pid>/statm and /proc/<pid>/stat: two small reads per process, nothing
stored, and a worker that exited is simply no longer listed. Labels: `pid` and `role`
(master, worker); `server` outside gunicorn. Linux only: elsewhere the series are absent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import CounterMetricFamily

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _sample(pid: int) -> tuple[int, float] | None:
    """(resident bytes, CPU seconds) of a process, or None if it is gone."""
    try:
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return resident_pages * PAGE_SIZE, cpu


class ProcessCollector:
    def __init__(self, under_gunicorn: bool) -> None:
        self._under_gunicorn = under_gunicorn

    def _processes(self) -> list[tuple[int, str]]:
        if not self._under_gunicorn:
            return [(os.getpid(), "server")]
        master = os.getppid()
        if master == 1:  # the master is gone (this worker exits soon): only itself
            return [(os.getpid(), "worker")]
        return [(master, "master")] + [(pid, "worker") for pid in sorted(children(master))]

    def collect(self) -> Iterator:
        memory = GaugeMetricFamily(
            "berth_process_resident_memory_bytes",
            "Resident memory of each server process",
            labels=["pid", "role"],
        )
        cpu = CounterMetricFamily(
            "berth_process_cpu_seconds", "CPU time of each server process", labels=["pid", "role"]
        )
        workers = 0
        for pid, role in self._processes():
            sample = _sample(pid)
            if sample is None:
                continue
            workers += role == "worker"
            memory.add_metric([str(pid), role], sample[0])
            cpu.add_metric([str(pid), role], sample[1])
        yield memory
        yield cpu
        if self._under_gunicorn:
            yield GaugeMetricFamily("berth_workers", "gunicorn worker processes running", value=workers)
