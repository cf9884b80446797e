#!/usr/bin/env python3
"""Side-by-side blob upload/download benchmark: Berth vs CNCF distribution 2.8.

Both registries run on 127.0.0.1 with filesystem storage in a temp dir. The data path is
driven by curl subprocesses (so the client is not the bottleneck); this script only times
them and samples /proc for the registries' peak memory (VmHWM) and CPU time.

Standard library only (plus curl). See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

# run as a script (python bench/bench.py): bench/ is sys.path[0], its modules import by plain name
from common import REPO_ROOT, VENV_BIN, BenchError, log, parse_size, raise_exit_on_signal
from measure import ProcSampler, cpu_busy, loadavg, machine_info
from processes import Registry, start_berth, start_distribution, stop_registry, wait_ready
from report import markdown_vs_distribution, summarize_vs_distribution, write_json
from transfers import download, make_blob, upload_chunked, upload_monolithic, verify_content


def run_step(reg: Registry, step: str, fn, nbytes: int) -> None:
    os.sync()  # flush the previous step's dirty pages so writeback does not land in this one
    sampler = ProcSampler(reg.pid)
    sampler.start()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    peak, cpu = sampler.stop()
    mbps = nbytes / elapsed / 1e6
    reg.add(f"{step}_mbps", mbps)
    reg.add(f"{step}_peak_mib", peak)
    reg.add(f"{step}_cpu_s", cpu)
    extra = f", peak {peak:.1f} MiB, cpu {cpu:.2f} s" if peak is not None else ""
    log(f"{reg.name:12} {step:18} {elapsed:7.2f} s  {mbps:7.0f} MB/s{extra}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size",
        type=parse_size,
        default=1 << 30,
        help="blob size, binary units (default 1G = 1 GiB)",
    )
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every step (default 3)")
    p.add_argument("--only", choices=["berth", "distribution"], help="benchmark one registry alone")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write results as JSON")
    p.add_argument(
        "--tmpdir",
        help="parent dir for the blob and registry data (default: system temp)",
    )
    p.add_argument(
        "--berth-url",
        help="use an already running Berth at this URL instead of starting one",
    )
    p.add_argument("--berth-pid", type=int, help="with --berth-url: root pid to sample memory/CPU")
    p.add_argument("--berth-auth", default=os.environ.get("BENCH_BERTH_AUTH"),
                   help="with --berth-url: user:password for pushes (env BENCH_BERTH_AUTH)")  # fmt: skip
    p.add_argument(
        "--berth-workers",
        type=int,
        help="pass -w N to gunicorn (default: gunicorn.conf.py)",
    )
    p.add_argument("--distribution-url", help="use an already running distribution at this URL")
    p.add_argument("--distribution-pid", type=int, help="with --distribution-url: pid to sample")
    p.add_argument(
        "--distribution-bin",
        default="/usr/bin/docker-registry",
        help="distribution binary",
    )
    p.add_argument(
        "--repo-root",
        type=Path,
        default=REPO_ROOT,
        help="Berth repo root (default: from __file__)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the untimed content check")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loadavg_at_start = loadavg()
    busy_at_start = cpu_busy()
    if shutil.which("curl") is None:
        print("curl is required", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_exit_on_signal)
    signal.signal(signal.SIGHUP, raise_exit_on_signal)

    names = [args.only] if args.only else ["berth", "distribution"]
    work = Path(tempfile.mkdtemp(prefix="berth-bench-", dir=args.tmpdir))
    regs: dict[str, Registry] = {}
    try:
        free = shutil.disk_usage(work).free
        need = args.size * (1 + len(names)) * 2
        if free < need:
            raise BenchError(f"{work}: {free / 2**30:.1f} GiB free, need about {need / 2**30:.1f} GiB")

        for name in names:
            if name == "berth":
                if args.berth_url:
                    regs[name] = Registry(
                        name,
                        args.berth_url.rstrip("/"),
                        args.berth_auth,
                        pid=args.berth_pid,
                    )
                else:
                    regs[name] = start_berth(work, args.repo_root, VENV_BIN, args.berth_workers)
            elif args.distribution_url:
                url = args.distribution_url.rstrip("/")
                regs[name] = Registry(name, url, None, pid=args.distribution_pid)
            else:
                regs[name] = start_distribution(work, args.distribution_bin)
        for reg in regs.values():
            wait_ready(reg)
            reg.add("idle_rss_mib", ProcSampler(reg.pid).rss_mib())
            reg.add("idle_pss_mib", ProcSampler(reg.pid).pss_mib())
            log(f"{reg.name} ready at {reg.url} (pid {reg.pid})")

        blob = work / "blob.bin"
        log(f"generating {args.size} random bytes in {blob}")
        digest = make_blob(blob, args.size)
        log(f"blob digest {digest}")

        steps = [
            ("upload_monolithic", lambda r: upload_monolithic(r, blob, digest, work)),
            ("upload_chunked", lambda r: upload_chunked(r, blob, digest, work)),
            ("download", lambda r: download(r, args.size, digest, work)),
        ]
        order = list(regs.values())
        for rep in range(args.repeat):
            log(f"repeat {rep + 1}/{args.repeat}")
            for step, fn in steps:
                # alternate which registry goes first, so drift does not favour one side
                for reg in order if rep % 2 == 0 else order[::-1]:
                    run_step(reg, step, lambda fn=fn, reg=reg: fn(reg), args.size)
        if not args.no_verify:
            for reg in regs.values():
                verify_content(reg, args.size, digest, work)
                log(f"{reg.name}: served content matches {digest}")

        machine = machine_info(args.distribution_bin, loadavg_at_start, busy_at_start)
        rows = summarize_vs_distribution({n: r.samples for n, r in regs.items()})
        print(markdown_vs_distribution(rows, machine, args))
        if args.json_out:
            result = {
                "machine": machine,
                "config": {
                    "size": args.size,
                    "repeat": args.repeat,
                    "registries": names,
                    "digest": digest,
                },
                "registries": {n: {"url": r.url, "samples": r.samples} for n, r in regs.items()},
                "summary": rows,
            }
            write_json(args.json_out, result)
        return 0
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        for reg in regs.values():
            if reg.proc is not None:
                print(f"--- {reg.name} log tail ---\n{reg.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        # do not let a second Ctrl-C or SIGTERM skip the cleanup
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
        for reg in regs.values():
            stop_registry(reg)
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
