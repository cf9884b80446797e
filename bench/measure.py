"""What the benchmarks measure besides time: peak memory (VmHWM, reset through clear_refs) and CPU
time of a server's process tree, how busy the machine is, what it is, and min/median/max."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO_ROOT, log
from processes import process_tree

CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
    return int(fields[11]) + int(fields[12])  # utime + stime


class ProcSampler:
    """Peak memory and CPU time of a registry's process tree over one step."""

    def __init__(self, root: int | None):
        self.root = root
        self._cpu_before: dict[int, int] = {}

    def start(self) -> None:
        if self.root is None:
            return
        pids = process_tree(self.root)
        for pid in pids:
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to VmRSS
            except OSError as exc:
                log(f"warning: cannot reset VmHWM of pid {pid}: {exc}")
        self._cpu_before = {pid: cpu_ticks(pid) for pid in pids}

    def stop(self) -> tuple[float | None, float | None]:
        """(sum of VmHWM in MiB, CPU seconds used since start)."""
        if self.root is None:
            return None, None
        pids = process_tree(self.root)
        hwm = sum(status_kib(pid, "VmHWM") for pid in pids) / 1024
        ticks = sum(cpu_ticks(pid) - self._cpu_before.get(pid, 0) for pid in pids)
        return hwm, ticks / CLK_TCK

    def rss_mib(self) -> float | None:
        if self.root is None:
            return None
        return sum(status_kib(pid, "VmRSS") for pid in process_tree(self.root)) / 1024

    def pss_mib(self) -> float | None:
        """Proportional set size: pages shared by forked workers are counted once overall."""
        if self.root is None:
            return None
        total = 0
        for pid in process_tree(self.root):
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        return total / 1024


def min_median_max(vals: list[float] | None) -> dict | None:
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


# --------------------------------------------------------------------------- the machine


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds` (from /proc/stat): is something else running?"""

    def sample() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def meminfo_mib(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def machine_info(dist_binary: str, loadavg_at_start: str, busy_at_start: float) -> dict:
    def cmd_out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    cpu_model = ""
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu_model = m.group(1) if m else ""
    except OSError:
        pass
    return {
        "loadavg_at_start": loadavg_at_start,
        "cpu_busy_at_start": round(busy_at_start, 3),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model,
        "mem_total_mib": meminfo_mib("MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "curl": cmd_out(["curl", "--version"]).split("\n")[0],
        "distribution": cmd_out([dist_binary, "--version"]),
        "berth_commit": cmd_out(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]),
    }
