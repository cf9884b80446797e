#!/usr/bin/env python3
"""Berth on S3 storage vs boto3 talking to the same S3 endpoint directly (moto's server), and vs
CNCF distribution 2.8 with its s3 driver on the same endpoint.

The script starts moto_server, Berth (REGISTRY_STORAGE=s3) and distribution (storage: s3) on
127.0.0.1, creates the bucket, pushes and pulls one random blob through each registry with curl
(helpers shared with bench.py), then moves the same bytes with boto3 straight to moto. Berth /
boto3 is the registry's overhead; Berth / distribution compares the two registries on one S3.
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
from processes import Registry, start_berth, start_distribution, start_moto, stop_registry, wait_ready
from report import write_json
from report_s3 import markdown_s3, summarize_vs_boto3, summarize_vs_distribution
from transfers import download, make_blob, upload_chunked, upload_monolithic, verify_content


class Run:
    def __init__(self, berth: Registry, dist: Registry | None, moto: Registry) -> None:
        self.berth, self.dist, self.moto = berth, dist, moto
        self.samples: dict[str, list[float]] = {}

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(key, []).append(value)

    def step(self, key: str, fn: Callable[[], None], nbytes: int) -> None:
        """Time fn; sample the registry's peak RSS and CPU (distribution for dist_* keys, else
        Berth; only kept for registry steps) and moto's CPU."""
        os.sync()  # moto spools big objects to temp files: no writeback from the last step
        reg = self.dist if key.startswith("dist_") and self.dist else self.berth
        registry, moto = ProcSampler(reg.pid), ProcSampler(self.moto.pid)
        moto_rss = moto.rss_mib()  # logged: it must not climb from one step to the next
        registry.start()
        moto.start()
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        peak, cpu = registry.stop()
        _, moto_cpu = moto.stop()
        mbps = nbytes / elapsed / 1e6
        self.add(f"{key}_mbps", mbps)
        self.add(f"{key}_moto_cpu_s", moto_cpu)
        extra = ""
        if key.startswith(("berth_", "big_", "dist_")):
            self.add(f"{key}_peak_mib", peak)
            self.add(f"{key}_cpu_s", cpu)
            who = "distribution" if reg is self.dist else "Berth"
            extra = f", {who} peak {peak:.1f} MiB, {who} cpu {cpu:.1f} s"
        log(
            f"{key:16} {elapsed:7.2f} s {mbps:5.0f} MB/s{extra}, moto cpu {moto_cpu:.1f} s, "
            f"moto RSS {moto_rss:.0f} -> {moto.rss_mib():.0f} MiB"
        )


def machine_info(loadavg: str, busy: float, dist_binary: str | None) -> dict:
    import boto3
    import moto

    info = measure.machine_info(dist_binary or "true", loadavg, busy)
    if not dist_binary:
        info.pop("distribution", None)
    info.update(boto3=boto3.__version__, moto=f"moto_server {moto.__version__}")
    return info


def distribution_s3(endpoint: str, part_size: int) -> str:
    """distribution's storage section: its s3 driver on moto, in BUCKET under /distribution (Berth
    uses the prefix berth/). Parts and multipart-copy ranges of part_size as Berth's; downloads
    served by the registry itself (redirect disabled), as Berth does by default."""
    s3 = {
        "region": REGION,
        "regionendpoint": endpoint,  # an endpoint makes the driver use path-style URLs
        "bucket": BUCKET,
        "accesskey": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "secretkey": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "secure": "false",
        "v4auth": "true",
        "chunksize": part_size,
        "multipartcopychunksize": part_size,
        "multipartcopythresholdsize": part_size,
        "rootdirectory": "/distribution",
    }
    return "  s3:\n" + "".join(f"    {k}: {v}\n" for k, v in s3.items()) + "  redirect:\n    disable: true\n"


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
    p.add_argument("--distribution-bin", default="/usr/bin/docker-registry", help="distribution binary")
    p.add_argument("--no-distribution", action="store_true", help="skip the Berth vs distribution rows")
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
    dist_binary = None if args.no_distribution else args.distribution_bin
    machine = machine_info(measure.loadavg(), measure.cpu_busy(), dist_binary)
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
        dist = None
        if dist_binary:
            dist = start_distribution(work, dist_binary, distribution_s3(moto.url, args.part_size))
            procs.append(dist)
            wait_ready(dist)
        run = Run(berth, dist, moto)
        run.add("idle_rss_mib", ProcSampler(berth.pid).rss_mib())
        log(f"moto at {moto.url} (pid {moto.pid}), Berth at {berth.url} (pid {berth.pid})")
        if dist:
            run.add("dist_idle_rss_mib", ProcSampler(dist.pid).rss_mib())
            log(f"distribution (s3 driver, rootdirectory /distribution) at {dist.url} (pid {dist.pid})")

        blob = work / "blob.bin"
        log(f"generating {args.size} random bytes")
        digest = make_blob(blob, args.size)
        size, threads = args.size, args.boto3_threads

        def registry_steps(reg, prefix: str, label: str, rep: int) -> None:
            run.step(f"{prefix}_chunked", lambda: upload_chunked(reg, blob, digest, work), size)
            wipe_bucket(client)  # a registry skips the copy of a blob it already has
            run.step(f"{prefix}_monolithic", lambda: upload_monolithic(reg, blob, digest, work), size)
            run.step(f"{prefix}_download", lambda: download(reg, size, digest, work), size)
            if rep == 0 and not args.no_verify:
                verify_content(reg, size, digest, work)
                log(f"{label} on S3 serves content matching {digest}")
            wipe_bucket(client)

        def berth_steps(rep: int) -> None:
            registry_steps(berth, "berth", "Berth", rep)

        def dist_steps(rep: int) -> None:
            registry_steps(dist, "dist", "distribution", rep)

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

        groups = [berth_steps, *([dist_steps] if dist else []), boto3_steps]
        for rep in range(args.repeat):
            log(f"repeat {rep + 1}/{args.repeat}")
            # rotate which group goes first, so drift does not favour one side
            for steps in groups[rep % len(groups) :] + groups[: rep % len(groups)]:
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
        dist_rows = summarize_vs_distribution(run.samples, args)
        print(markdown_s3(rows, dist_rows, machine, args))
        if args.json_out:
            config = {k: getattr(args, k) for k in ("size", "repeat", "mem_size", "mem_repeat", "part_size")}
            result = {
                "machine": machine,
                "config": config | {"boto3_threads": threads, "digest": digest},
                "samples": run.samples,
                "summary": rows,
                "summary_vs_distribution": dist_rows,
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
