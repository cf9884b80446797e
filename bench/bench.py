#!/usr/bin/env python3
"""Side-by-side registry benchmark: Berth vs CNCF distribution 2.8, with nginx serving the same
blob file as a reference.

Both registries run on 127.0.0.1 with filesystem storage in a temp dir (with --via-nginx, each
behind its own nginx running deploy/nginx.conf, TLS included). Blob pushes and pulls are driven
by curl subprocesses (so the client is not the bottleneck), 50 parallel pulls by one curl, and
manifest GET/HEAD at 50 connections by wrk and ab; this script times them and samples /proc
for the servers' peak memory (VmHWM) and CPU time.

Standard library only, plus curl, nginx, openssl, wrk and ab (apache2-utils). See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

# run as a script (python bench/bench.py): bench/ is sys.path[0], its modules import by plain name
from common import MIB, REPO_ROOT, VENV_BIN, BenchError, log, parse_size, raise_exit_on_signal
from measure import ProcSampler, cpu_busy, loadavg, machine_info
from nginx import NGINX, make_certificate, nginx_version, start_proxy, start_static
from processes import Registry, start_berth, start_distribution, stop_registry, wait_ready
from report import markdown_vs_distribution, summarize_vs_distribution, write_json
from steps import Blob, build_steps, prepare, run_step
from transfers import make_blob, verify_content

PACKAGES = ["curl", "wrk", "apache2-utils", "openssl", "nginx"]


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
    p.add_argument("--parallel", type=int, default=50,
                   help="number of simultaneous downloads of the small blob (default 50; 0: skip)")  # fmt: skip
    p.add_argument("--parallel-size", type=parse_size, default=10 * MIB,
                   help="size of the blob downloaded in parallel (default 10M)")  # fmt: skip
    p.add_argument("--rps-seconds", type=int, default=10,
                   help="duration of each manifest GET/HEAD load run (default 10; 0: skip)")  # fmt: skip
    p.add_argument("--connections", type=int, default=50, help="connections of the load runs (default 50)")
    p.add_argument("--load-threads", type=int, default=2,
                   help="wrk -t for the GETs, number of ab processes for the HEADs (default 2)")  # fmt: skip
    p.add_argument("--via-nginx", action="store_true",
                   help="put nginx with deploy/nginx.conf (TLS) in front of each registry")  # fmt: skip
    p.add_argument("--no-static-nginx", action="store_true",
                   help="skip the reference: nginx serving the blob files")  # fmt: skip
    p.add_argument("--no-verify", action="store_true", help="skip the untimed content check")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.parallel < 0 or args.rps_seconds < 0 or args.connections < 1:
        p.error("--repeat and --connections must be >= 1, --parallel and --rps-seconds >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loadavg_at_start = loadavg()
    busy_at_start = cpu_busy()
    tools = ["curl", *(["wrk", "ab"] if args.rps_seconds else []), *(["openssl"] if args.via_nginx else [])]
    if args.via_nginx or not args.no_static_nginx:
        tools.append(NGINX)
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"missing: {' '.join(missing)} (apt-get install -y {' '.join(PACKAGES)})", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_exit_on_signal)
    signal.signal(signal.SIGHUP, raise_exit_on_signal)

    names = [args.only] if args.only else ["berth", "distribution"]
    work = Path(tempfile.mkdtemp(prefix="berth-bench-", dir=args.tmpdir))
    regs: dict[str, Registry] = {}
    static: Registry | None = None
    try:
        free = shutil.disk_usage(work).free
        need = (args.size + args.parallel_size) * (1 + len(names)) * 2
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
        tls = make_certificate(work / "tls") if args.via_nginx else None
        if tls:
            for reg in regs.values():
                proxy = start_proxy(work, reg, tls)
                wait_ready(proxy)
                log(f"{reg.name} behind nginx (deploy/nginx.conf) at {reg.url} (pid {proxy.pid})")

        www = work / "www"  # what the nginx file server serves
        www.mkdir()
        blob = Blob(www / "blob.bin", args.size, "")
        small = Blob(www / "small.bin", args.parallel_size, "")
        log(f"generating {args.size} random bytes in {blob.path}")
        blob.digest = make_blob(blob.path, args.size)
        log(f"blob digest {blob.digest}")
        if args.parallel:
            small.digest = make_blob(small.path, small.size)
        if not args.no_static_nginx:
            static = start_static(work, www, tls)
            wait_ready(static)
            log(f"nginx serving {www} at {static.url} (pid {static.pid})")
        prepare(list(regs.values()), args, small, work)

        steps = build_steps(args, blob, small, static, work)
        for rep in range(args.repeat):
            log(f"repeat {rep + 1}/{args.repeat}")
            for step in steps:
                order = [*regs.values(), *([static] if static and step.with_nginx else [])]
                # alternate which server goes first, so drift does not favour one side
                for reg in order if rep % 2 == 0 else order[::-1]:
                    run_step(reg, step)
        if not args.no_verify:
            for reg in regs.values():
                verify_content(reg, args.size, blob.digest, work)
                log(f"{reg.name}: served content matches {blob.digest}")

        machine = machine_info(args.distribution_bin, loadavg_at_start, busy_at_start)
        machine["nginx"] = nginx_version()
        servers = {n: r.samples for n, r in regs.items()} | ({"nginx": static.samples} if static else {})
        rows = summarize_vs_distribution(servers, args)
        print(markdown_vs_distribution(rows, machine, args))
        if args.json_out:
            result = {
                "machine": machine,
                "config": {
                    "size": args.size,
                    "repeat": args.repeat,
                    "registries": names,
                    "digest": blob.digest,
                    "parallel": args.parallel,
                    "parallel_size": args.parallel_size,
                    "rps_seconds": args.rps_seconds,
                    "connections": args.connections,
                    "via_nginx": args.via_nginx,
                },
                "registries": {n: {"url": r.url, "samples": r.samples} for n, r in regs.items()},
                "nginx_file_server": static.samples if static else None,
                "summary": rows,
            }
            write_json(args.json_out, result)
        return 0
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        for reg in regs.values():
            for server in (reg, reg.proxy):
                if server is not None and server.proc is not None:
                    print(f"--- {server.name} log tail ---\n{server.log_tail()}", file=sys.stderr)
        if static is not None:
            print(f"--- nginx file server log tail ---\n{static.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        # do not let a second Ctrl-C or SIGTERM skip the cleanup
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
        for reg in [*regs.values(), *([static] if static else [])]:
            stop_registry(reg)  # and the proxy in front of it
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
