"""bench.py's steps: what each one runs against a registry (or the nginx file server), the
untimed setup they need, and `run_step`, which times one and samples the server's process tree
(and, with --via-nginx, the proxy's) for peak memory and CPU time."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import human_size, log
from load import manifest_load, parallel_download, push_image
from measure import ProcSampler
from processes import Registry
from transfers import blob_url, download, download_url, upload_chunked, upload_monolithic

# The manifest load steps: (step name, method, Connection: close)
MANIFEST_STEPS = [
    ("manifest_get_keepalive", "GET", False),
    ("manifest_get_close", "GET", True),
    ("manifest_head_keepalive", "HEAD", False),
    ("manifest_head_close", "HEAD", True),
]


@dataclass
class Step:
    name: str
    run: Callable[[Registry], dict | None]  # a load step returns its counts (rps, requests, ...)
    nbytes: int  # bytes moved, for MB/s (0 for the load steps)
    with_nginx: bool  # the nginx file server takes the step too


@dataclass
class Blob:
    path: Path  # served by the nginx file server as /<name>
    size: int
    digest: str


def build_steps(args, blob: Blob, small: Blob, static: Registry | None, work: Path) -> list[Step]:
    def dl(reg: Registry) -> None:
        if reg is static:
            return download_url(reg, f"{reg.url}/{blob.path.name}", blob.size, work)
        return download(reg, blob.size, blob.digest, work)

    def parallel(reg: Registry) -> None:
        url = f"{reg.url}/{small.path.name}" if reg is static else blob_url(reg, small.digest)
        parallel_download(reg, url, small.size, args.parallel, work)

    steps = [
        Step(
            "upload_monolithic",
            lambda r: upload_monolithic(r, blob.path, blob.digest, work),
            blob.size,
            False,
        ),
        Step("upload_chunked", lambda r: upload_chunked(r, blob.path, blob.digest, work), blob.size, False),
        Step("download", dl, blob.size, True),
    ]
    if args.parallel:
        steps.append(Step("parallel_download", parallel, small.size * args.parallel, True))
    if args.rps_seconds:
        for name, method, close in MANIFEST_STEPS:
            run = lambda r, m=method, c=close: manifest_load(r, m, c, args, work)  # noqa: E731
            steps.append(Step(name, run, 0, False))
    return steps


def prepare(regs: list[Registry], args, small: Blob, work: Path) -> None:
    """Untimed: the small blob the parallel downloads fetch, and the image the load steps GET."""
    for reg in regs:
        if args.parallel:
            upload_monolithic(reg, small.path, small.digest, work)
        if args.rps_seconds:
            digest = push_image(reg, work)
            log(f"{reg.name}: pushed {human_size(small.size)} blob and image manifest {digest[:19]}…")


def run_step(reg: Registry, step: Step) -> None:
    os.sync()  # flush the previous step's dirty pages so writeback does not land in this one
    sampler = ProcSampler(reg.pid)
    proxy = ProcSampler(reg.proxy.pid if reg.proxy else None)
    sampler.start()
    proxy.start()
    t0 = time.perf_counter()
    counts = step.run(reg)
    elapsed = time.perf_counter() - t0
    peak, cpu = sampler.stop()
    proxy_peak, proxy_cpu = proxy.stop()
    name = step.name
    reg.add(f"{name}_peak_mib", peak)
    reg.add(f"{name}_cpu_s", cpu)
    reg.add(f"{name}_proxy_peak_mib", proxy_peak)
    reg.add(f"{name}_proxy_cpu_s", proxy_cpu)
    if counts is None:
        mbps = step.nbytes / elapsed / 1e6
        reg.add(f"{name}_mbps", mbps)
        what = f"{mbps:7.0f} MB/s"
    else:
        reg.add(f"{name}_rps", counts["rps"])
        reg.add(f"{name}_errors", counts["errors"])
        if cpu is not None and counts["requests"]:
            reg.add(f"{name}_cpu_ms", cpu * 1000 / counts["requests"])
        what = f"{counts['rps']:7.0f} req/s ({counts['requests']} requests"
        what += f", {counts['errors']} client-side socket errors)" if counts["errors"] else ")"
        if counts["errors"]:
            log(f"warning: {reg.name} {name}: {counts['errors']} socket errors (timeouts, resets)")
    extra = f", peak {peak:.1f} MiB, cpu {cpu:.2f} s" if peak is not None else ""
    if proxy_peak is not None:
        extra += f"; proxy peak {proxy_peak:.1f} MiB, cpu {proxy_cpu:.2f} s"
    log(f"{reg.name:12} {name:23} {elapsed:7.2f} s  {what}{extra}")
