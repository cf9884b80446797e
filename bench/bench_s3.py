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
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bench
from bench import MIB, BenchError, ProcSampler, Registry, log

BUCKET = "berth-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}  # moto takes any
REGION = "us-east-1"

# (label, unit, Berth sample key, boto3 sample key, decimals)
ROWS = [
    ("push, POST + chunked PATCH + PUT (docker)", "MB/s", "berth_chunked_mbps", "boto3_seq_up_mbps", 0),
    ("push, POST + PUT with body (monolithic)", "MB/s", "berth_monolithic_mbps", "boto3_seq_up_mbps", 0),
    ("pull, GET blob to /dev/null", "MB/s", "berth_download_mbps", "boto3_seq_down_mbps", 0),
    ("reference: upload_fileobj, {threads} threads", "MB/s", None, "boto3_xfer_up_mbps", 0),
    ("reference: download_fileobj, {threads} threads", "MB/s", None, "boto3_xfer_down_mbps", 0),
    ("Berth peak RSS, chunked push of {size}", "MiB", "berth_chunked_peak_mib", None, 1),
    ("Berth peak RSS, monolithic push of {size}", "MiB", "berth_monolithic_peak_mib", None, 1),
    ("Berth peak RSS, chunked push of {mem_size}", "MiB", "big_chunked_peak_mib", None, 1),
    ("Berth peak RSS, monolithic push of {mem_size}", "MiB", "big_monolithic_peak_mib", None, 1),
    ("Berth peak RSS, pull of {size}", "MiB", "berth_download_peak_mib", None, 1),
    ("Berth RSS after start (idle)", "MiB", "idle_rss_mib", None, 1),
    ("push throughput, chunked, {mem_size}", "MB/s", "big_chunked_mbps", None, 0),
    ("push throughput, monolithic, {mem_size}", "MB/s", "big_monolithic_mbps", None, 0),
    ("Berth CPU, chunked push", "s", "berth_chunked_cpu_s", None, 1),
    ("Berth CPU, monolithic push", "s", "berth_monolithic_cpu_s", None, 1),
    ("Berth CPU, pull", "s", "berth_download_cpu_s", None, 1),
    ("moto CPU, Berth chunked push / boto3 upload", "s", "berth_chunked_moto_cpu_s", "boto3_seq_up_moto_cpu_s", 1),
    ("moto CPU, Berth monolithic push / boto3 upload", "s", "berth_monolithic_moto_cpu_s", "boto3_seq_up_moto_cpu_s", 1),
    ("moto CPU, Berth pull / boto3 download", "s", "berth_download_moto_cpu_s", "boto3_seq_down_moto_cpu_s", 1),
]  # fmt: skip


# --------------------------------------------------------------------------- moto + boto3


def start_moto(work: Path) -> Registry:
    binary = bench.VENV_BIN / "moto_server"
    if not binary.exists():
        raise BenchError(f"{binary} not found (pip install 'moto[server]' into the venv)")
    port = bench.free_port()
    spill = work / "moto-tmp"  # moto spools objects over ~5 MiB to temp files: keep them here
    spill.mkdir()
    log_path = work / "moto.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, "TMPDIR": str(spill)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Registry("moto", f"http://127.0.0.1:{port}", None, proc, proc.pid, log_path)


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=REGION,
        signature_version="s3v4",
        max_pool_connections=32,
        retries={"mode": "standard", "max_attempts": 4},
        read_timeout=300,
        request_checksum_calculation="when_required",  # as Berth: no CRC32 aws-chunked trailers
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ).client("s3", endpoint_url=endpoint, config=config)


def wipe_bucket(client) -> None:
    """Delete every object and open multipart upload: moto holds them all (in memory and
    spooled temp files), and Berth must see each push as a first push (no dedup short cut)."""
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=BUCKET):
        for up in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=BUCKET, Key=up["Key"], UploadId=up["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def boto3_seq_upload(client, blob: Path, part_size: int) -> None:
    """What Berth's writer does: one multipart upload, parts of part_size sent one at a time."""
    key = "direct/seq"
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    with open(blob, "rb") as f:
        while data := f.read(part_size):
            number = len(parts) + 1
            etag = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=data)
            parts.append({"ETag": etag["ETag"], "PartNumber": number})
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )


def boto3_seq_download(client, size: int) -> None:
    """What Berth's GET does: one GetObject, body read in 1 MiB pieces (here: discarded)."""
    body = client.get_object(Bucket=BUCKET, Key="direct/seq")["Body"]
    n = 0
    while chunk := body.read(MIB):
        n += len(chunk)
    if n != size:
        raise BenchError(f"boto3 GetObject: {n} bytes, expected {size}")


def transfer_config(part_size: int, threads: int):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=threads
    )


def boto3_xfer_upload(client, blob: Path, part_size: int, threads: int) -> None:
    with open(blob, "rb") as f:
        client.upload_fileobj(f, BUCKET, "direct/xfer", Config=transfer_config(part_size, threads))


def boto3_xfer_download(client, part_size: int, threads: int) -> None:
    with open(os.devnull, "wb") as f:
        client.download_fileobj(BUCKET, "direct/xfer", f, Config=transfer_config(part_size, threads))


# --------------------------------------------------------------------------- timing


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


# --------------------------------------------------------------------------- report


def human(size: int) -> str:
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / 2**20:g} MiB"


def summarize(samples: dict[str, list[float]], args) -> list[dict]:
    def stats(key):
        vals = samples.get(key) if key else None
        if not vals:
            return None
        return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}

    names = {"size": human(args.size), "mem_size": human(args.mem_size), "threads": args.boto3_threads}
    rows = []
    for label, unit, bkey, dkey, dec in ROWS:
        b, d = stats(bkey), stats(dkey)
        if b or d:
            ratio = b["median"] / d["median"] if b and d and d["median"] else None
            rows.append(
                {"label": label.format(**names), "unit": unit, "decimals": dec, "berth_key": bkey}
                | {"boto3_key": dkey, "berth": b, "boto3": d, "ratio": ratio}
            )
    return rows


def markdown_table(rows: list[dict], machine: dict, args) -> str:
    def fmt(v, dec):
        return f"{v:.{dec}f}" if v is not None else "-"

    def rng(s, dec):
        return f"{fmt(s['min'], dec)}-{fmt(s['max'], dec)} (n={s['n']})" if s else "-"

    out = [
        f"Blob {human(args.size)} ({args.repeat} repeat(s)), memory push {human(args.mem_size)} "
        f"({args.mem_repeat} repeat(s)), part size {human(args.part_size)}; S3 = {machine['moto']} "
        f"on 127.0.0.1; nproc {machine['nproc']}, {machine['cpu']}, Python {machine['python']}, "
        f"boto3 {machine['boto3']}, {machine['curl'].split(' (')[0]}, Berth {machine['berth_commit']}",
        "",
        "| metric | unit | Berth median | boto3 direct median | ratio Berth/boto3 | Berth min-max | boto3 min-max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    if machine["cpu_busy_at_start"] >= 0.15:
        out.insert(1, f"\n**Warning:** CPUs {machine['cpu_busy_at_start']:.0%} busy before the start.")
    for r in rows:
        dec, b, d = r["decimals"], r["berth"], r["boto3"]
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        out.append(
            f"| {r['label']} | {r['unit']} | {fmt(b and b['median'], dec)} | {fmt(d and d['median'], dec)} "
            f"| {ratio} | {rng(b, dec)} | {rng(d, dec)} |"
        )
    out += [
        "",
        "boto3 direct = one multipart upload with parts of the same size sent one at a time (as Berth's",
        "writer does) and one streamed GetObject (as Berth's GET). MB/s = 10^6 bytes/s over the whole",
        "request sequence. Peak RSS = sum of VmHWM over gunicorn master + workers, reset before each step.",
    ]
    return "\n".join(out)


def machine_info(loadavg: str, busy: float) -> dict:
    import boto3
    import moto

    info = bench.machine_info("true", loadavg, busy)
    info.pop("distribution", None)
    info.update(boto3=boto3.__version__, moto=f"moto_server {moto.__version__}")
    return info


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=bench.parse_size, default=1 << 30, help="blob size (default 1G)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every step (default 3)")
    p.add_argument("--mem-size", type=bench.parse_size, default=2 << 30,
                   help="size of the extra pushes for the memory check (default 2G)")  # fmt: skip
    p.add_argument("--mem-repeat", type=int, default=1, help="repetitions of the memory pushes (0: skip)")
    p.add_argument("--part-size", type=bench.parse_size, default=16 * MIB,
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
    machine = machine_info(bench._loadavg(), bench._cpu_busy())
    if shutil.which("curl") is None:
        print("curl is required", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, bench._raise_exit)
    signal.signal(signal.SIGHUP, bench._raise_exit)
    work = Path(tempfile.mkdtemp(prefix="berth-bench-s3-", dir=args.tmpdir))
    procs: list[Registry] = []
    try:
        # blob + moto's spooled parts, completed object and copy; the memory blob replaces it
        need = max(args.size, args.mem_size if args.mem_repeat else 0) * 4
        if shutil.disk_usage(work).free < need:
            raise BenchError(f"{work}: need about {need / 2**30:.1f} GiB free")
        moto = start_moto(work)
        procs.append(moto)
        bench.wait_ready(moto)
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
        berth = bench.start_berth(work, bench.REPO_ROOT, bench.VENV_BIN, args.berth_workers, berth_env)
        procs.append(berth)
        bench.wait_ready(berth)
        run = Run(berth, moto)
        run.add("idle_rss_mib", ProcSampler(berth.pid).rss_mib())
        log(f"moto at {moto.url} (pid {moto.pid}), Berth at {berth.url} (pid {berth.pid})")

        blob = work / "blob.bin"
        log(f"generating {args.size} random bytes")
        digest = bench.make_blob(blob, args.size)
        size, threads = args.size, args.boto3_threads

        def berth_steps(rep: int) -> None:
            run.step("berth_chunked", lambda: bench.upload_chunked(berth, blob, digest, work), size)
            wipe_bucket(client)
            run.step("berth_monolithic", lambda: bench.upload_monolithic(berth, blob, digest, work), size)
            run.step("berth_download", lambda: bench.download(berth, size, digest, work), size)
            if rep == 0 and not args.no_verify:
                bench.verify_content(berth, size, digest, work)
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
            big_digest = bench.make_blob(blob, args.mem_size)
            for rep in range(args.mem_repeat):
                log(f"memory push {rep + 1}/{args.mem_repeat}")
                run.step(
                    "big_chunked", lambda: bench.upload_chunked(berth, blob, big_digest, work), args.mem_size
                )
                wipe_bucket(client)
                run.step(
                    "big_monolithic",
                    lambda: bench.upload_monolithic(berth, blob, big_digest, work),
                    args.mem_size,
                )
                wipe_bucket(client)

        rows = summarize(run.samples, args)
        print(markdown_table(rows, machine, args))
        if args.json_out:
            config = {k: getattr(args, k) for k in ("size", "repeat", "mem_size", "mem_repeat", "part_size")}
            result = {
                "machine": machine,
                "config": config | {"boto3_threads": threads, "digest": digest},
                "samples": run.samples,
                "summary": rows,
            }
            Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
            log(f"wrote {args.json_out}")
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
            bench.stop_registry(reg)
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            with contextlib.suppress(TypeError):
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
