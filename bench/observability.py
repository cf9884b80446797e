#!/usr/bin/env python3
"""What observability costs: manifest GET by tag with wrk, Berth with metrics and JSON access
logs on against the same Berth with them off, in one run.

- on: REGISTRY_LOG_FORMAT=json, one access line per request (written to a file, as a process
  manager would), metrics recorded and /metrics scraped every second (Prometheus scrapes every
  15-60 s), the storage usage walker on.
- off: REGISTRY_ACCESS_LOG=false, REGISTRY_METRICS_ALLOW= (metrics off), REGISTRY_USAGE_INTERVAL=0.
- text: the access line in the default text format, metrics off.
- --baseline DIR adds a third Berth started from another checkout (e.g. the code before
  observability) with its defaults.

Both servers run side by side with the same number of workers and take turns (which goes
first alternates), --repeat times each. Reported: each run's requests/s, the medians, and
on/off (the issue asks for at least 0.9). Standard library only, plus wrk.

    .venv/bin/python bench/observability.py                  # 5 repeats of 10 s, 2 workers
    .venv/bin/python bench/observability.py --repeat 3 --seconds 5 --baseline /path/to/old/berth
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import REPO_ROOT, VENV_BIN, BenchError, log
from load import manifest_load, push_image
from measure import cpu_ticks
from processes import Registry, process_tree, start_berth, stop_registry, wait_ready

TICKS = os.sysconf("SC_CLK_TCK")

ON = {"REGISTRY_LOG_FORMAT": "json", "REGISTRY_ACCESS_LOG": "true", "REGISTRY_USAGE_INTERVAL": "60"}
OFF = {"REGISTRY_ACCESS_LOG": "false", "REGISTRY_METRICS_ALLOW": "", "REGISTRY_USAGE_INTERVAL": "0"}
# Text access lines (the default format), metrics off: "JSON logs and metrics off" read as
# the default log format rather than no access log at all.
TEXT = {"REGISTRY_LOG_FORMAT": "text", "REGISTRY_METRICS_ALLOW": "", "REGISTRY_USAGE_INTERVAL": "0"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="runs per configuration (default 5)")
    p.add_argument("--seconds", type=int, default=10, help="duration of each wrk run (default 10)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn -w for every Berth (default 2)")
    p.add_argument(
        "--scrape-interval", type=float, default=1.0, help="seconds between scrapes when on (0: no scrapes)"
    )
    p.add_argument("--baseline", type=Path, help="another Berth checkout to run with its defaults")
    p.add_argument("--split", action="store_true", help="also run with only the JSON log, only metrics")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    # manifest_load's names
    args.load_threads, args.rps_seconds = args.threads, args.seconds
    return args


class Scraper(threading.Thread):
    """GET /metrics every `interval` seconds while a run lasts; counts failures."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.stop = threading.Event()
        self.scrapes = self.failures = 0

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                self.scrapes += 1
            except OSError:
                self.failures += 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="berth-bench-obs-"))
    configs = {"on": (REPO_ROOT, ON), "off": (REPO_ROOT, OFF), "text": (REPO_ROOT, TEXT)}
    if args.baseline:
        configs["baseline"] = (args.baseline.resolve(), {})
    if args.split:
        configs["log-only"] = (REPO_ROOT, {**ON, "REGISTRY_METRICS_ALLOW": ""})
        configs["metrics-only"] = (REPO_ROOT, {**ON, "REGISTRY_ACCESS_LOG": "false"})
    servers: dict[str, Registry] = {}
    results: dict[str, list[float]] = {name: [] for name in configs}
    cpu_us: dict[str, list[float]] = {name: [] for name in configs}  # server CPU per request
    try:
        for name, (root, env) in configs.items():
            (work / name).mkdir()
            reg = start_berth(work / name, root, VENV_BIN, args.workers, env)
            reg.name = f"berth-{name}"
            servers[name] = reg
            wait_ready(reg)
            push_image(reg, work / name)
        order = list(configs)
        for repeat in range(args.repeat):
            for name in order if repeat % 2 == 0 else order[::-1]:
                reg = servers[name]
                scraping = name in ("on", "metrics-only") and args.scrape_interval > 0
                scraper = Scraper(f"{reg.url}/metrics", args.scrape_interval) if scraping else None
                if scraper:
                    scraper.start()
                cpu_before = tree_cpu(reg)
                result = manifest_load(reg, "GET", False, args, work / name)
                cpu_us[name].append((tree_cpu(reg) - cpu_before) / result["requests"] * 1e6)
                if scraper:
                    scraper.stop.set()
                    scraper.join()
                    if scraper.failures or not scraper.scrapes:
                        raise BenchError(f"scrapes: {scraper.scrapes} ok, {scraper.failures} failed")
                results[name].append(result["rps"])
                log(
                    f"{name} run {repeat + 1}: {result['rps']:.0f} req/s, {cpu_us[name][-1]:.0f} us of server "
                    f"CPU per request ({result['errors']} socket errors)"
                )
                time.sleep(1)
        lines = count_access_lines(servers["on"])
        log(f"on: {lines} access lines written")
    finally:
        for reg in servers.values():
            stop_registry(reg)
    medians = {name: statistics.median(v) for name, v in results.items()}
    cpu = {name: statistics.median(v) for name, v in cpu_us.items()}
    print("| configuration | runs (req/s) | median req/s | server CPU per request (median, min) |")
    print("|---|---|---|---|")
    for name, values in results.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {runs} | {medians[name]:.0f} | {cpu[name]:.0f} us, {min(cpu_us[name]):.0f} us |")
    ratio = medians["on"] / medians["off"]
    print(
        f"\non/off requests/s: {ratio:.3f} (medians of {args.repeat} runs of {args.seconds} s, -c{args.connections})"
    )
    print(
        f"off/on server CPU per request: {cpu['off'] / cpu['on']:.3f} (minima: {min(cpu_us['off']) / min(cpu_us['on']):.3f})"
    )
    if "text" in medians:
        print(
            f"on/text requests/s: {medians['on'] / medians['text']:.3f} (JSON and metrics on / text, metrics off)"
        )
        print(f"text/on server CPU per request: {cpu['text'] / cpu['on']:.3f}")
    for name in medians:
        if name not in ("on", "off"):
            print(f"{name}/off requests/s: {medians[name] / medians['off']:.3f}")
    if args.json_out:
        summary = {"runs": results, "cpu_us": cpu_us, "medians": medians, "ratio": ratio}
        Path(args.json_out).write_text(json.dumps(summary, indent=2))
    return 0


def tree_cpu(reg: Registry) -> float:
    """CPU seconds used so far by the server's master and workers."""
    return sum(cpu_ticks(pid) for pid in process_tree(reg.pid)) / TICKS


def count_access_lines(reg: Registry) -> int:
    if reg.log_path is None:
        return 0
    with open(reg.log_path, "rb") as f:
        return sum(1 for line in f if b'"berth.access"' in line)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
