#!/usr/bin/env python3
"""Fairness under load: Berth vs CNCF distribution 2.8, side by side.

For each connection count (default 200 and 1000), each registry in turn gets `wrk --latency`
with that many keep-alive connections asking for a manifest by tag, while a probe opens a fresh
connection every 100 ms and times how long the new client waits for its first response byte.
A listening socket's accept queue (Recv-Q in `ss -ltn`) is sampled too: connections the kernel
accepted that the registry has not picked up yet. Reported: latency p50/p90/p99/max and req/s
(wrk), the probe's p50/p99/max, the deepest accept queue, and Berth/distribution ratios.

Standard library only, plus wrk and ss. See bench/README.md ("fairness.py").
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# run as a script (python bench/fairness.py): bench/ is sys.path[0], its modules import by plain name
from common import REPO_ROOT, VENV_BIN, BenchError, log, raise_exit_on_signal
from load import OCI_MANIFEST, WRK_SCRIPT, manifest_url, push_image
from measure import ProcSampler, cpu_busy, loadavg, machine_info
from processes import Registry, start_berth, start_distribution, stop_registry, wait_ready

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--connections", default="200,1000", help="comma-separated wrk -c values (default 200,1000)"
    )
    p.add_argument("--seconds", type=int, default=20, help="duration of each wrk run (default 20)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--repeat", type=int, default=1, help="runs per registry and connection count (default 1)")
    p.add_argument(
        "--probe-interval", type=float, default=0.1, help="seconds between probe connections (0.1)"
    )
    p.add_argument("--only", choices=["berth", "distribution"], help="benchmark one registry alone")
    p.add_argument("--berth-workers", type=int, help="pass -w N to gunicorn (default: gunicorn.conf.py)")
    p.add_argument("--distribution-bin", default="/usr/bin/docker-registry", help="distribution binary")
    p.add_argument(
        "--repo-root", type=Path, default=REPO_ROOT, help="Berth repo root (default: from __file__)"
    )
    p.add_argument("--tmpdir", help="parent dir for the registries' data (default: system temp)")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write results as JSON")
    args = p.parse_args(argv)
    try:
        args.connection_counts = [int(c) for c in args.connections.split(",")]
    except ValueError:
        p.error("--connections: comma-separated integers, e.g. 200,1000")
    if args.seconds < 1 or args.repeat < 1 or min(args.connection_counts) < 1 or args.probe_interval <= 0:
        p.error("--seconds, --repeat and --connections must be >= 1, --probe-interval > 0")
    return args


def raise_open_files_limit(needed: int) -> None:
    """wrk, the registries (started after this) and the probe each hold a descriptor per
    connection; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        raise BenchError(f"open files limit {want} < {needed}: raise it (ulimit -Hn)")


# --------------------------------------------------------------------------- the new client


class Probe:
    """Every `interval`, a new connection sends one manifest GET (Connection: close); records
    the time from connect() to the first byte of the answer, or the error."""

    def __init__(self, url: str, interval: float, timeout: float) -> None:
        m = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url)
        if not m:
            raise BenchError(f"probe: cannot parse {url}")
        self._addr = (m[1], int(m[2]))
        self._request = (
            f"GET {m[3]} HTTP/1.1\r\nHost: {m[1]}:{m[2]}\r\nAccept: {OCI_MANIFEST}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        self._interval, self._timeout = interval, timeout
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self.waits: list[float] = []
        self.errors: list[str] = []

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        self._ticker.join()
        for t in self._threads:
            t.join(self._timeout + 1)

    def _tick(self) -> None:
        # one thread per probe: a probe left waiting must not delay the next one
        next_at = time.monotonic()
        while not self._stop.is_set():
            t = threading.Thread(target=self._one, daemon=True)
            t.start()
            self._threads.append(t)
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _one(self) -> None:
        started = time.monotonic()
        try:
            with socket.create_connection(self._addr, timeout=self._timeout) as s:
                s.sendall(self._request)
                if not s.recv(1):
                    raise OSError("closed without an answer")
            self.waits.append(time.monotonic() - started)
        except OSError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")


class AcceptQueue:
    """Samples the listening socket's accept queue (Recv-Q of `ss -ltn`) every 0.2 s."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[int] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            out = subprocess.run(
                ["ss", "-ltnH", f"sport = :{self._port}"], capture_output=True, text=True, check=False
            ).stdout
            queued = [int(line.split()[1]) for line in out.splitlines() if line.split()[1:2]]
            if queued:
                self.samples.append(max(queued))


# --------------------------------------------------------------------------- one run


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise BenchError(f"wrk: cannot read the duration {text!r}")
    return float(m[1]) * _UNITS[m[2]]


def parse_wrk(out: str) -> dict:
    def find(pattern: str) -> re.Match:
        m = re.search(pattern, out, re.M)
        if not m:
            raise BenchError(f"no {pattern!r} in wrk's output:\n{out[-1500:]}")
        return m

    latency = find(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)")
    result = {"max_s": _seconds(latency[3])}
    for pct in ("50", "90", "99"):
        result[f"p{pct}_s"] = _seconds(find(rf"^\s*{pct}%\s+(\S+)")[1])
    result["rps"] = float(find(r"^Requests/sec:\s+([\d.]+)")[1])
    result["requests"] = int(find(r"^\s*(\d+) requests in")[1])
    result["non2xx"] = int(find(r"^bench-non2xx (\d+)")[1])
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    kinds = ("connect", "read", "write", "timeout")
    result["socket_errors"] = dict(zip(kinds, map(int, sock.groups()), strict=True)) if sock else {}
    return result


def load_run(reg: Registry, connections: int, args, work: Path) -> dict:
    script = work / "wrk-fairness.lua"
    script.write_text(WRK_SCRIPT.format(accept=OCI_MANIFEST, close=""))
    port = int(reg.url.rsplit(":", 1)[1])
    probe = Probe(manifest_url(reg), args.probe_interval, timeout=args.seconds + 30)
    queue = AcceptQueue(port)
    sampler = ProcSampler(reg.pid)
    cmd = ["wrk", f"-t{args.threads}", f"-c{connections}", f"-d{args.seconds}s", "--latency",
           "--timeout", "30s", "-s", str(script), manifest_url(reg)]  # fmt: skip
    sampler.start()
    wrk = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(min(2.0, args.seconds / 4))  # let wrk open its connections before probing
    probe.start()
    queue.start()
    out, err = wrk.communicate()
    probe.stop()
    queue.stop()
    peak_mib, cpu_s = sampler.stop()
    if wrk.returncode != 0:
        raise BenchError(f"wrk failed ({wrk.returncode}): {err.strip()} {out[-800:]}")
    result = parse_wrk(out)
    waits = sorted(probe.waits)
    result.update(
        probe_n=len(waits),
        probe_errors=probe.errors[:10],
        probe_error_count=len(probe.errors),
        probe_p50_s=statistics.median(waits) if waits else None,
        probe_p99_s=waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else None,
        probe_max_s=waits[-1] if waits else None,
        probe_over_100ms=sum(1 for w in waits if w > 0.1),
        accept_queue_max=max(queue.samples, default=0),
        peak_mib=peak_mib,
        cpu_s=cpu_s,
    )
    if result["non2xx"]:
        raise BenchError(f"{reg.name}: {result['non2xx']} non-2xx responses under load")
    log(
        f"{reg.name} -c{connections}: {result['rps']:.0f} req/s, p50 {_ms(result['p50_s'])}, "
        f"p99 {_ms(result['p99_s'])}, max {_ms(result['max_s'])}; new client p50 "
        f"{_ms(result['probe_p50_s'])} max {_ms(result['probe_max_s'])} "
        f"({result['probe_error_count']} errors); accept queue up to {result['accept_queue_max']}"
    )
    return result


# --------------------------------------------------------------------------- report


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.2f} ms" if v < 0.1 else f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def _median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


ROWS = [
    ("rps", "requests/s (wrk)", lambda v: f"{v:,.0f}"),
    ("p50_s", "latency p50", _ms),
    ("p90_s", "latency p90", _ms),
    ("p99_s", "latency p99", _ms),
    ("max_s", "latency max", _ms),
    ("probe_p50_s", "new connection, first byte, p50", _ms),
    ("probe_p99_s", "new connection, first byte, p99", _ms),
    ("probe_max_s", "new connection, first byte, max", _ms),
    ("probe_over_100ms", "new connections waiting > 100 ms", lambda v: f"{v:.0f}"),
    ("accept_queue_max", "deepest accept queue (ss Recv-Q)", lambda v: f"{v:.0f}"),
    ("cpu_s", "registry CPU time", lambda v: f"{v:.1f} s"),
]


def markdown(results: dict, names: list[str], machine: dict, args) -> str:
    lines = [
        f"Manifest GET by tag, `wrk -t{args.threads} -d{args.seconds}s --latency` keep-alive, a new "
        f"connection every {args.probe_interval * 1000:.0f} ms; medians of {args.repeat} run(s). "
        f"{machine['nproc']} CPUs ({machine['cpu']}), load average at start {machine['loadavg_at_start']}, "
        f"CPUs {machine['cpu_busy_at_start'] * 100:.0f} % busy at start.",
        "",
    ]
    for connections in args.connection_counts:
        lines += [f"**{connections} connections**", ""]
        header = "| | " + " | ".join(names) + (" | Berth / distribution |" if len(names) == 2 else " |")
        lines += [header, "|---" * (len(names) + 1 + (len(names) == 2)) + "|"]
        for key, label, fmt in ROWS:
            vals = [_median(results[n][connections], key) for n in names]
            cells = [fmt(v) if v is not None else "-" for v in vals]
            if len(names) == 2:
                a, b = vals
                cells.append(f"{a / b:.2f}" if a is not None and b else "-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loadavg_at_start, busy_at_start = loadavg(), cpu_busy()
    missing = [tool for tool in ("wrk", "ss") if shutil.which(tool) is None]
    if missing:
        print(f"missing: {' '.join(missing)} (apt-get install -y wrk iproute2)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_exit_on_signal)
    signal.signal(signal.SIGHUP, raise_exit_on_signal)
    names = [args.only] if args.only else ["berth", "distribution"]
    work = Path(tempfile.mkdtemp(prefix="berth-fairness-", dir=args.tmpdir))
    regs: dict[str, Registry] = {}
    try:
        raise_open_files_limit(3 * max(args.connection_counts) + 1024)
        for name in names:
            if name == "berth":
                regs[name] = start_berth(work, args.repo_root, VENV_BIN, args.berth_workers)
            else:
                regs[name] = start_distribution(work, args.distribution_bin)
        for reg in regs.values():
            wait_ready(reg)
            push_image(reg, work)
            log(f"{reg.name} ready at {reg.url} (pid {reg.pid}), image pushed")
        results: dict[str, dict[int, list[dict]]] = {
            n: {c: [] for c in args.connection_counts} for n in names
        }
        turn = 0
        for rep in range(args.repeat):
            for connections in args.connection_counts:
                order = list(regs.values())
                for reg in order if turn % 2 == 0 else order[::-1]:  # alternate who goes first
                    results[reg.name][connections].append(load_run(reg, connections, args, work))
                    time.sleep(2)  # let the closed connections' TIME_WAIT and CPU settle
                turn += 1
            log(f"repeat {rep + 1}/{args.repeat} done")
        machine = machine_info(args.distribution_bin, loadavg_at_start, busy_at_start)
        machine["loadavg_at_end"] = loadavg()
        print(markdown(results, names, machine, args))
        if args.json_out:
            out = {
                "machine": machine,
                "config": vars(args) | {"repo_root": str(args.repo_root)},
                "runs": results,
            }
            Path(args.json_out).write_text(json.dumps(out, indent=2, default=str) + "\n")
            log(f"wrote {args.json_out}")
        return 0
    except BenchError as exc:
        print(f"fairness: error: {exc}", file=sys.stderr)
        for reg in regs.values():
            print(f"--- {reg.name} log tail ---\n{reg.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fairness: interrupted", file=sys.stderr)
        return 130
    finally:
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
        for reg in regs.values():
            stop_registry(reg)
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
