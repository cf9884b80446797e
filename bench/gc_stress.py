#!/usr/bin/env python3
"""Garbage collection under load (issue #11), as a script that prints counts: the workload of
tests/e2e/test_gc_stress.py (tests/gc_workload.py) at any size, on local disk or on moto's S3
server. Clients push images that share layers (HEAD-then-skip, mounts, re-pushes under new tags,
indexes), pull them back and delete tags, while collections run back to back in this process
against the same storage and a second collector contends for the lease (directly and through
`POST /v2/<name>/gc`). Then one more collection past the grace, every live manifest pulled and
verified, and an independent walk of the storage (tests/gc_audit.py).

    .venv/bin/python bench/gc_stress.py                                # disk, 8 clients, 200 images
    .venv/bin/python bench/gc_stress.py --backend s3 --instances 2     # moto, two instances
    .venv/bin/python bench/gc_stress.py --clients 16 --images 1000 --seconds 120 --grace 2

Exit status 1 if anything was lost, an unexpected answer came, or the last collection left
something behind. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

# run as a script (python bench/gc_stress.py): bench/ is sys.path[0]; the repo root for tests/
from common import REPO_ROOT, VENV_BIN, BenchError, log, raise_exit_on_signal
from processes import start_berth, start_moto, stop_registry, wait_ready

sys.path.insert(0, str(REPO_ROOT))

from tests.gc_audit import MUST_BE_ZERO, DiskView, S3View
from tests.gc_workload import Config, Workload

BUCKET = "berth-gc-stress"
PREFIX = "registry"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}

ORDER = [
    ("pushes", ["images_acknowledged", "repushes_acknowledged", "indexes_acknowledged", "pushes_abandoned"]),
    (
        "layers",
        [
            "layers_skipped",
            "layers_mounted",
            "mounts_refused",
            "layers_uploaded_monolithic",
            "layers_uploaded_chunked",
            "sessions_abandoned",
            "children_skipped",
            "children_pushed",
        ],
    ),
    (
        "pushes without a pause",
        ["push_seconds_p50", "push_seconds_p90", "push_seconds_max", "pushes_slower_than_grace"],
    ),
    (
        "refusals",
        [
            "refusals_prompt",
            "refusals_slow",
            "refusals_after_wait",
            "retried_503",
        ],
    ),
    ("deletes", ["tags_deleted", "manifests_deleted"]),
    ("pulls", ["pulls_verified", "pulls_raced_a_delete", "final_pulls_verified"]),
    (
        "collections",
        [
            "gc_runs",
            "gc_runs_unreferenced",
            "gc_runs_untagged",
            "gc_runs_one_repository",
            "gc_busy",
            "endpoint_runs",
            "endpoint_busy",
        ],
    ),
    (
        "removed",
        [f"removed_{k}" for k in ("layer_links", "manifests", "blobs", "uploads", "multipart_uploads")],
    ),
    ("spared", ["removed_spared"]),
    (
        "last collection",
        [f"final_{k}" for k in ("layer_links", "manifests", "blobs", "uploads", "multipart_uploads")],
    ),
    (
        "garbage before it",
        [
            f"before_{k}"
            for k in ("collectable_links", "collectable_manifests", "collectable_blobs", "uploads")
        ],
    ),
    ("left after it", [f"left_{k}" for k in MUST_BE_ZERO]),
    (
        "store after it",
        ["left_blobs", "left_layer_links", "left_manifests", "left_untagged_manifests", "left_tags"],
    ),
    ("outcome", ["losses", "errors", "seconds_busy"]),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("disk", "s3"), default="disk")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--images", type=int, default=200, help="new images to push (at least)")
    p.add_argument("--seconds", type=float, default=0.0, help="and keep pushing for at least this long")
    p.add_argument("--repositories", type=int, default=4)
    p.add_argument("--pool", type=int, default=40, help="shared layers the images draw from")
    p.add_argument("--grace", type=float, default=1.5, help="REGISTRY_GC_GRACE of servers and collectors")
    p.add_argument("--slow", type=float, default=0.15, help="share of pushes waiting up to 2x grace")
    p.add_argument("--instances", type=int, default=1, help="Berth instances sharing the storage")
    p.add_argument("--workers", type=int, default=2, help="gevent workers per instance")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between collections")
    p.add_argument("--layers", default="2-4", help="pool layers per image, min-max")
    p.add_argument("--pull", type=float, default=0.3, help="share of rounds that pull an image")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--json", type=Path, help="also write the counts here")
    p.add_argument("--tmpdir", type=Path, default=None)
    return p.parse_args(argv)


def print_counts(counts: dict, args: argparse.Namespace) -> None:
    print(
        f"## gc_stress: {args.backend}, {args.instances} instance(s) x {args.workers} worker(s), "
        f"{args.clients} clients, {args.images} images, grace {args.grace} s\n"
    )
    print("| group | count | value |\n|---|---|---:|")
    for group, keys in ORDER:
        for key in keys:
            print(f"| {group} | {key} | {counts.get(key, 0)} |")


def print_tracebacks(log_path: Path | None, most: int = 3) -> None:
    """The servers' tracebacks (a 500), before the temp dir with their logs goes."""
    if log_path is None or not log_path.exists():
        return
    lines = log_path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")][:most]
    for i in starts:
        end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith((" ", "\t"))), len(lines))
        print(f"\n{log_path.name}:\n" + "\n".join(lines[max(0, i - 1) : end + 1]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_exit_on_signal)
    work = Path(tempfile.mkdtemp(prefix="gc-stress-", dir=args.tmpdir))
    servers = []
    try:
        data = work / "data"
        # One user for every instance (start_berth would give each its own password).
        auth = ("bench", secrets.token_urlsafe(18))
        env = {
            "REGISTRY_GC_GRACE": str(args.grace),
            "REGISTRY_DATA_DIR": str(data),
            "USERNAME": auth[0],
            "PASSWORD": auth[1],
        }
        if args.backend == "s3":
            import boto3

            from settings import S3Settings
            from storage.drivers.s3 import S3Driver

            moto = start_moto(work)
            servers.append(moto)
            wait_ready(moto)
            session = boto3.session.Session(**CREDENTIALS)
            session.client("s3", endpoint_url=moto.url).create_bucket(Bucket=BUCKET)
            env.update(
                REGISTRY_STORAGE="s3",
                REGISTRY_S3_BUCKET=BUCKET,
                REGISTRY_S3_ENDPOINT_URL=moto.url,
                REGISTRY_S3_REGION="us-east-1",
                REGISTRY_S3_PREFIX=PREFIX,
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
            )
            settings = S3Settings(bucket=BUCKET, endpoint_url=moto.url, region="us-east-1", prefix=PREFIX)

            def make_driver():
                driver = S3Driver(settings, session=session)
                _ = driver.client  # made in this thread: boto3 sessions make clients unsafely
                return driver

            view = S3View(session.client("s3", endpoint_url=moto.url), BUCKET, PREFIX)
            settle = 1.2  # S3 times have whole seconds
        else:
            from storage.drivers.filesystem import FilesystemDriver

            data.mkdir()

            def make_driver():
                return FilesystemDriver(data)

            view = DiskView(data)
            settle = 0.3
        for i in range(args.instances):
            (work / f"berth-{i}").mkdir()
            berth = start_berth(work / f"berth-{i}", REPO_ROOT, VENV_BIN, args.workers, env)
            servers.append(berth)
            wait_ready(berth)
        config = Config(
            clients=args.clients,
            images=args.images,
            seconds=args.seconds,
            repositories=args.repositories,
            pool=args.pool,
            grace=args.grace,
            slow=args.slow,
            pause=args.pause,
            layers=tuple(int(x) for x in args.layers.split("-", 1)),
            pull=args.pull,
            clock_resolution=1.0 if args.backend == "s3" else 0.0,
            seed=args.seed,
        )
        urls = [s.url for s in servers if s.name == "berth"]
        workload = Workload(config, urls, auth, make_driver)
        log(f"{args.clients} clients, {args.images} images on {args.backend}, collections back to back")
        workload.run()
        log(f"clients done after {workload.tally.counts['seconds_busy']} s; the last collection, then checks")
        counts = workload.finish(view, settle)
        print_counts(counts, args)
        for text in workload.tally.losses + workload.tally.errors:
            print(f"- {text}")
        if args.json:
            args.json.write_text(json.dumps(counts, indent=1, sort_keys=True))
        failed = counts.get("losses", 0) or counts.get("errors", 0)
        failed = failed or any(counts.get(f"left_{k}", 0) for k in MUST_BE_ZERO)
        if failed:
            for server in servers:
                print_tracebacks(server.log_path)
        return 1 if failed else 0
    except BenchError as exc:
        log(str(exc))
        return 2
    finally:
        for server in reversed(servers):
            stop_registry(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
