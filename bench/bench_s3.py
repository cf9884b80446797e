#!/usr/bin/env python3
"""Berth on S3 storage vs boto3 talking to the same S3 endpoint directly (moto's server).

The script starts moto_server and Berth (REGISTRY_STORAGE=s3) on 127.0.0.1, creates the bucket,
pushes and pulls one random blob through Berth with curl (helpers shared with bench.py), then
moves the same bytes with boto3 straight to moto. Berth / boto3 is the registry's overhead.
Peak memory of Berth is also measured on a bigger push (--mem-size) to show it stays flat.

Needs the project venv (boto3, moto_server) and curl. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# run as a script (python bench/bench_s3.py): bench/ is sys.path[0], its modules import by plain name
import measure
from boto3_direct import (
    BUCKET,
    CREDENTIALS,
    REGION,
    boto3_seq_download,
    boto3_seq_upload,
    boto3_xfer_download,
    boto3_xfer_upload,
    s3_client,
    wipe_bucket,
)
from common import MIB, REPO_ROOT, VENV_BIN, BenchError, log, parse_size, raise_exit_on_signal
from measure import ProcSampler
from processes import Registry, start_berth, start_moto, stop_registry, wait_ready
from report import markdown_vs_boto3, summarize_vs_boto3, write_json
from transfers import download, make_blob, upload_chunked, upload_monolithic, verify_content


class Run:
    def __init__(self, berth: Registry, moto: Registry) -> None:
        self.berth, self.moto = berth, moto
        self.samples: dict[str, list[float]] = {}

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(key, []).append(value)

    def step(self, key: str, fn: Callable[[], None], nbytes: int) -> None:
        """Time fn; sample Berth's peak RSS and CPU (only meaningful for Berth steps) and moto's CPU."""
        os.sync()  # moto spools big objects to temp files: no writeback from the last step
        berth, moto = ProcSampler(self.berth.pid), ProcSampler(self.moto.pid)
        moto_rss = moto.rss_mib()  # logged: it must not climb from one step to the next
        berth.start()
        moto.start()
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        peak, cpu = berth.stop()
        _, moto_cpu = moto.stop()
        mbps = nbytes / elapsed / 1e6
        self.add(f"{key}_mbps", mbps)
        self.add(f"{key}_moto_cpu_s", moto_cpu)
        extra = ""
        if key.startswith(("berth_", "big_")):
            self.add(f"{key}_peak_mib", peak)
            self.add(f"{key}_cpu_s", cpu)
            extra = f", Berth peak {peak:.1f} MiB, Berth cpu {cpu:.1f} s"
        log(
            f"{key:16} {elapsed:7.2f} s {mbps:5.0f} MB/s{extra}, moto cpu {moto_cpu:.1f} s, "
            f"moto RSS {moto_rss:.0f} -> {moto.rss_mib():.0f} MiB"
        )


def machine_info(loadavg: str, busy: float) -> dict:
    import boto3
    import moto

    info = measure.machine_info("true", loadavg, busy)
    info.pop("distribution", None)
    info.update(boto3=boto3.__version__, moto=f"moto_server {moto.__version__}")
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=1 << 30, help="blob size (default 1G)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every step (default 3)")
    p.add_argument("--mem-size", type=parse_size, default=2 << 30,
                   help="size of the extra pushes for the memory check (default 2G)")  # fmt: skip
    p.add_argument("--mem-repeat", type=int, default=1, help="repetitions of the memory pushes (0: skip)")
    p.add_argument("--part-size", type=parse_size, default=16 * MIB,
                   help="REGISTRY_S3_PART_SIZE and boto3's part size (default 16M)")  # fmt: skip
    p.add_argument("--boto3-threads", type=int, default=10,
                   help="max_concurrency of the upload_fileobj/download_fileobj reference rows (0: skip)")  # fmt: skip
    p.add_argument("--berth-workers", type=int, help="pass -w N to gunicorn (default: gunicorn.conf.py)")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write results as JSON")
    p.add_argument("--tmpdir", help="parent dir for the blobs and moto's spool (default: system temp)")
    p.add_argument("--no-verify", action="store_true", help="skip the untimed content check")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.mem_repeat < 0:
        p.error("--repeat must be >= 1 and --mem-repeat >= 0")
    if args.part_size < 5 * MIB:
        p.error("--part-size must be at least 5M (S3's minimum part size)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # taken at the start: the commit is that of the code the servers load
    machine = machine_info(measure.loadavg(), measure.cpu_busy())
    if shutil.which("curl") is None:
        print("curl is required", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_exit_on_signal)
    signal.signal(signal.SIGHUP, raise_exit_on_signal)
    work = Path(tempfile.mkdtemp(prefix="berth-bench-s3-", dir=args.tmpdir))
    procs: list[Registry] = []
    try:
        # blob + moto's spooled parts, completed object and copy; the memory blob replaces it
        need = max(args.size, args.mem_size if args.mem_repeat else 0) * 4
        if shutil.disk_usage(work).free < need:
            raise BenchError(f"{work}: need about {need / 2**30:.1f} GiB free")
        moto = start_moto(work)
        procs.append(moto)
        wait_ready(moto)
        client = s3_client(moto.url)
        client.create_bucket(Bucket=BUCKET)
        berth_env = {
            "REGISTRY_STORAGE": "s3",
            "REGISTRY_S3_BUCKET": BUCKET,
            "REGISTRY_S3_ENDPOINT_URL": moto.url,
            "REGISTRY_S3_REGION": REGION,
            "REGISTRY_S3_PREFIX": "berth",
            "REGISTRY_S3_PART_SIZE": str(args.part_size),
            **CREDENTIALS,
        }
        berth = start_berth(work, REPO_ROOT, VENV_BIN, args.berth_workers, berth_env)
        procs.append(berth)
        wait_ready(berth)
        run = Run(berth, moto)
        run.add("idle_rss_mib", ProcSampler(berth.pid).rss_mib())
        log(f"moto at {moto.url} (pid {moto.pid}), Berth at {berth.url} (pid {berth.pid})")

        blob = work / "blob.bin"
        log(f"generating {args.size} random bytes")
        digest = make_blob(blob, args.size)
        size, threads = args.size, args.boto3_threads

        def berth_steps(rep: int) -> None:
            run.step("berth_chunked", lambda: upload_chunked(berth, blob, digest, work), size)
            wipe_bucket(client)
            run.step("berth_monolithic", lambda: upload_monolithic(berth, blob, digest, work), size)
            run.step("berth_download", lambda: download(berth, size, digest, work), size)
            if rep == 0 and not args.no_verify:
                verify_content(berth, size, digest, work)
                log(f"Berth on S3 serves content matching {digest}")
            wipe_bucket(client)

        def boto3_steps(rep: int) -> None:
            run.step("boto3_seq_up", lambda: boto3_seq_upload(client, blob, args.part_size), size)
            run.step("boto3_seq_down", lambda: boto3_seq_download(client, size), size)
            wipe_bucket(client)
            if threads:
                run.step(
                    "boto3_xfer_up", lambda: boto3_xfer_upload(client, blob, args.part_size, threads), size
                )
                run.step(
                    "boto3_xfer_down", lambda: boto3_xfer_download(client, args.part_size, threads), size
                )
                wipe_bucket(client)

        for rep in range(args.repeat):
            log(f"repeat {rep + 1}/{args.repeat}")
            for steps in (berth_steps, boto3_steps) if rep % 2 == 0 else (boto3_steps, berth_steps):
                steps(rep)

        if args.mem_repeat:
            blob.unlink()
            log(f"memory check: generating {args.mem_size} random bytes")
            big_digest = make_blob(blob, args.mem_size)
            for rep in range(args.mem_repeat):
                log(f"memory push {rep + 1}/{args.mem_repeat}")
                run.step("big_chunked", lambda: upload_chunked(berth, blob, big_digest, work), args.mem_size)
                wipe_bucket(client)
                run.step(
                    "big_monolithic",
                    lambda: upload_monolithic(berth, blob, big_digest, work),
                    args.mem_size,
                )
                wipe_bucket(client)

        rows = summarize_vs_boto3(run.samples, args)
        print(markdown_vs_boto3(rows, machine, args))
        if args.json_out:
            config = {k: getattr(args, k) for k in ("size", "repeat", "mem_size", "mem_repeat", "part_size")}
            result = {
                "machine": machine,
                "config": config | {"boto3_threads": threads, "digest": digest},
                "samples": run.samples,
                "summary": rows,
            }
            write_json(args.json_out, result)
        return 0
    except BenchError as exc:
        print(f"bench_s3: error: {exc}", file=sys.stderr)
        for reg in procs:
            print(f"--- {reg.name} log tail ---\n{reg.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_s3: interrupted", file=sys.stderr)
        return 130
    finally:
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
        for reg in reversed(procs):
            stop_registry(reg)
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            with contextlib.suppress(TypeError):
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
