#!/usr/bin/env python3
"""What one garbage collection costs on a big store (issue #11): wall time, peak RSS and, on S3,
the requests it makes by operation (R2 bills per operation).

The store is written straight through the storage driver, in Berth's layout (storage/paths.py),
with threads: per repository two tagged image manifests, each with a config and two layers of
its own and one layer of a shared pool, and one layer linked but referenced by no manifest;
then blob data that no repository links, up to --blobs in all. With the defaults: 20,000 blobs
in 2,000 repositories, 51,000 objects. Then a fresh process (so its memory is the collection's
own, not the builder's) runs one collection (which takes the 2,000 unreferenced links and the
3,000 blobs nothing needs), then a second one (nothing left: what a scheduled run usually costs),
and reports each: time, CPU, RSS before and peak RSS during (VmHWM, reset through clear_refs),
and on S3 every HTTP request the collector's boto3 client sent (retries included), by operation.

    .venv/bin/python bench/gc_scale.py                     # local disk
    .venv/bin/python bench/gc_scale.py --backend s3        # moto's server
    .venv/bin/python bench/gc_scale.py --repositories 200 --blobs 2000   # quick look

See bench/README.md for figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO_ROOT, BenchError, log, raise_exit_on_signal

sys.path.insert(0, str(REPO_ROOT))

BUCKET = "berth-gc-scale"
PREFIX = "registry"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def make_driver(backend: str, where: str):
    if backend == "s3":
        import boto3

        from settings import S3Settings
        from storage.drivers.s3 import S3Driver

        settings = S3Settings(bucket=BUCKET, endpoint_url=where, region="us-east-1", prefix=PREFIX)
        return S3Driver(settings, session=boto3.session.Session(**CREDENTIALS))
    from storage.drivers.filesystem import FilesystemDriver

    return FilesystemDriver(where)


# -- building the store ---------------------------------------------------------------------------


def _blob(label: str, size: int) -> tuple[str, bytes]:
    data = hashlib.sha256(label.encode()).digest() * (size // 32 + 1)
    data = label.encode() + data[: max(0, size - len(label))]
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def build(driver, repositories: int, blobs: int, blob_size: int, threads: int) -> dict[str, int]:
    """Write the store; returns what a collection should take."""
    from storage import paths
    from storage.digests import Digest

    pool = [_blob(f"shared-{i}", blob_size) for i in range(max(1, repositories // 2))]
    writes: list[tuple[str, bytes]] = [(paths.blob_data(Digest.parse(d)), b) for d, b in pool]
    now = f"{time.time():.6f}"
    for r in range(repositories):
        name = f"team-{r // 100}/app-{r}"
        linked = []
        for m in range(2):
            own = [_blob(f"{name}-{m}-{k}", blob_size) for k in range(3)]
            shared = pool[(r * 2 + m) % len(pool)]
            config, layers = own[0], [*own[1:], shared]
            doc = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": len(config[1])},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(b)} for d, b in layers],
            }  # fmt: skip
            body = json.dumps(doc).encode()
            digest = Digest.parse("sha256:" + hashlib.sha256(body).hexdigest())
            writes += [(paths.blob_data(Digest.parse(d)), b) for d, b in own]
            writes.append((paths.blob_data(digest), body))
            link = {"mediaType": OCI_MANIFEST, "size": len(body), "linked": time.time()}
            writes.append((paths.manifest_link(name, digest), json.dumps(link).encode()))
            writes.append((paths.tag(name, f"v{m}"), str(digest).encode()))
            linked += [config[0], *(d for d, _ in layers)]
        orphan = _blob(f"{name}-orphan", blob_size)  # linked, referenced by no manifest
        writes.append((paths.blob_data(Digest.parse(orphan[0])), orphan[1]))
        linked.append(orphan[0])
        writes += [(paths.layer_link(name, Digest.parse(d)), f"{d} {now}".encode()) for d in set(linked)]
    stored = sum(1 for key, _ in writes if key.endswith("/data"))
    unlinked = max(0, blobs - stored)
    for i in range(unlinked):
        d, b = _blob(f"unlinked-{i}", blob_size)
        writes.append((paths.blob_data(Digest.parse(d)), b))
    log(f"writing {len(writes)} objects ({stored + unlinked} blobs) with {threads} threads")
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool_exec:
        for _ in pool_exec.map(lambda kv: driver.write_bytes(*kv), writes, chunksize=64):
            pass
    log(f"written in {time.monotonic() - started:.1f} s")
    return {
        "objects": len(writes),
        "blobs": stored + unlinked,
        "repositories": repositories,
        "expected_layer_links": repositories,
        "expected_blobs": repositories + unlinked,
    }


# -- one collection, measured in its own process ----------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/self/status")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def collect_measured(backend: str, where: str, mode: str) -> list[dict]:
    from storage.gc import GarbageCollector

    driver = make_driver(backend, where)
    requests: Counter[str] = Counter()
    if backend == "s3":
        # Every HTTP request boto3 sends (retries too): event names are before-send.s3.<Operation>.
        driver.client.meta.events.register(
            "before-send.s3", lambda event_name, **_: requests.update([event_name.rsplit(".", 1)[-1]])
        )
        driver.client.list_buckets()  # connections and credentials warm, not counted below
        requests.clear()
    collector = GarbageCollector(driver, grace=0.0, upload_ttl=86400.0)
    runs = []
    for label in ("first", "second"):
        requests.clear()
        rss_before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS
        cpu, started = _cpu(), time.monotonic()
        report = collector.collect(mode)
        runs.append(
            {
                "run": label,
                "seconds": round(time.monotonic() - started, 2),
                "cpu_seconds": round(_cpu() - cpu, 2),
                "rss_before_mib": round(rss_before / 1024, 1),
                "peak_rss_mib": round(_status_kib("VmHWM") / 1024, 1),
                "report": report.as_dict(),
                "requests": dict(sorted(requests.items())),
                "requests_total": sum(requests.values()),
            }
        )
    return runs


# -- the script ------------------------------------------------------------------------------------


def print_runs(args: argparse.Namespace, built: dict, runs: list[dict]) -> None:
    print(
        f"## gc_scale: {args.backend}, {built['blobs']} blobs ({args.blob_size} B each) in "
        f"{built['repositories']} repositories, {built['objects']} objects, mode {args.mode}\n"
    )
    print(
        "| run | wall s | CPU s | RSS before MiB | peak RSS MiB | links removed | blobs removed | spared | requests |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        r = run["report"]
        total = run["requests_total"] if args.backend == "s3" else "-"
        print(
            f"| {run['run']} | {run['seconds']} | {run['cpu_seconds']} | {run['rss_before_mib']} | "
            f"{run['peak_rss_mib']} | {r['layer_links']} | {r['blobs']} | {r['spared']} | {total} |"
        )
    if args.backend == "s3":
        ops = sorted({op for run in runs for op in run["requests"]})
        print("\n| S3 operation | " + " | ".join(run["run"] for run in runs) + " |")
        print("|---|" + "---:|" * len(runs))
        for op in ops:
            print(f"| {op} | " + " | ".join(str(run["requests"].get(op, 0)) for run in runs) + " |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("disk", "s3"), default="disk")
    p.add_argument("--repositories", type=int, default=2000)
    p.add_argument(
        "--blobs", type=int, default=20000, help="blob data objects in all (at least 9 per repository)"
    )
    p.add_argument("--blob-size", type=int, default=64, help="bytes per layer (manifests are what they are)")
    p.add_argument("--mode", choices=("unreferenced", "untagged"), default="unreferenced")
    p.add_argument("--threads", type=int, default=16, help="writers building the store")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--tmpdir", type=Path, default=None)
    p.add_argument("--collect", nargs=2, metavar=("BACKEND", "WHERE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.collect:  # the measuring child
        print(json.dumps(collect_measured(*args.collect, args.mode)))
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_exit_on_signal)
    work = Path(tempfile.mkdtemp(prefix="gc-scale-", dir=args.tmpdir))
    moto = None
    try:
        if args.backend == "s3":
            import boto3
            from processes import start_moto, wait_ready

            moto = start_moto(work)
            wait_ready(moto)
            boto3.session.Session(**CREDENTIALS).client("s3", endpoint_url=moto.url).create_bucket(
                Bucket=BUCKET
            )
            where = moto.url
        else:
            where = str(work / "data")
        built = build(
            make_driver(args.backend, where), args.repositories, args.blobs, args.blob_size, args.threads
        )
        time.sleep(1.2)  # everything older than the store's clock (whole seconds on S3) says is now
        log("collecting in a fresh process")
        child = subprocess.run(
            [sys.executable, __file__, "--mode", args.mode, "--collect", args.backend, where],
            capture_output=True,
            text=True,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"},
            check=False,
        )
        if child.returncode != 0:
            raise BenchError(f"the collection failed:\n{child.stderr[-3000:]}")
        runs = json.loads(child.stdout.strip().splitlines()[-1])
        print_runs(args, built, runs)
        first = runs[0]["report"]
        if (first["layer_links"], first["blobs"]) != (built["expected_layer_links"], built["expected_blobs"]):
            raise BenchError(
                f"expected {built['expected_layer_links']} links and {built['expected_blobs']} blobs "
                f"removed, got {first['layer_links']} and {first['blobs']}"
            )
        if args.json:
            args.json.write_text(json.dumps({"store": built, "runs": runs}, indent=1))
        return 0
    except BenchError as exc:
        log(str(exc))
        return 1
    finally:
        if moto is not None:
            from processes import stop_registry

            stop_registry(moto)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
