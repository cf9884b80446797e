"""Garbage collection under load, on real servers (issue #11): 8 clients push images that share
layers (HEAD-then-skip, mounts, re-pushes under new tags, indexes), pull them back and delete
tags, while collections run back to back against the same storage with a grace of 1.5-2 s, and a
second collector contends for the lease (directly and through `POST /v2/<name>/gc`). Then: zero
losses, and after one more collection past the grace, nothing unreferenced left, counted by an
independent walk of the storage (tests/gc_audit.py). The workload is tests/gc_workload.py;
bench/gc_stress.py runs it at other sizes."""

from __future__ import annotations

import json

import boto3
import pytest

from storage.drivers.filesystem import FilesystemDriver
from tests.gc_audit import MUST_BE_ZERO, DiskView, S3View
from tests.gc_workload import Config, Workload

from .servers import BerthServer

pytestmark = pytest.mark.e2e

DISK = Config(clients=8, images=200, repositories=4, grace=1.5)
# moto's server is a single Python process and every registry request costs it several S3
# requests, the collections many more (listings, two reads per manifest): the 200 images
# take about 2 minutes on 2 cores, the suite's longest test; bench/gc_stress.py runs larger sizes.
# A grace of 2 s: S3 times have whole seconds, so what the collector sees as 2 s old may be 1 s.
S3 = Config(
    clients=8,
    images=200,
    repositories=4,
    grace=2.0,
    clock_resolution=1.0,
    pause=1.0,
    pull=0.15,
    layers=(1, 3),
)


def _server_env(config: Config) -> dict[str, str]:
    return {"REGISTRY_GC_GRACE": str(config.grace)}


def _check(workload: Workload, counts: dict) -> None:
    print(json.dumps(counts, indent=1, sort_keys=True))  # the figures, shown with -s or on failure
    tally = workload.tally
    assert counts.get("losses", 0) == 0, tally.losses
    assert counts.get("errors", 0) == 0, tally.errors
    left = {key: counts.get(f"left_{key}", 0) for key in MUST_BE_ZERO}
    assert not any(left.values()), f"the last collection left: {left}"
    # It took exactly what the independent walk, just before it, found to be garbage.
    took = [counts.get(f"final_{k}", 0) for k in ("layer_links", "manifests", "blobs", "uploads")]
    garbage = [counts.get(f"before_{k}", 0) for k in ("collectable_links", "collectable_manifests")]
    garbage += [counts.get("before_collectable_blobs", 0), counts.get("before_uploads", 0)]
    assert took == garbage, f"links, manifests, blobs, uploads: took {took}, garbage {garbage}"
    # Every push went through (refused ones were retried as docker does).
    assert counts.get("pushes_abandoned", 0) == 0
    assert counts["images_acknowledged"] == workload.config.images
    # Every manifest with a live tag, by tag and by digest (others were deleted by clients).
    assert counts["final_pulls_verified"] >= workload.config.images // 2
    # It was a real contest: collections removed things while clients pushed, found each other
    # holding the lease, and clients met them (spared links or blobs, 503s, mounts refused).
    assert counts["gc_runs"] >= 5 and counts.get("gc_busy", 0) + counts.get("endpoint_busy", 0) >= 1
    assert counts.get("removed_layer_links", 0) > 0 and counts.get("removed_blobs", 0) > 0
    assert counts.get("layers_skipped", 0) > 0 and counts.get("layers_mounted", 0) > 0
    assert counts.get("tags_deleted", 0) > 0 and counts.get("pulls_verified", 0) > 0
    # Refusals (MANIFEST_BLOB_UNKNOWN) are for clients slower than the grace period: rare for
    # clients that PUT their manifest right after their layers.
    pushes = counts["images_acknowledged"] + counts.get("repushes_acknowledged", 0)
    assert counts.get("refusals_prompt", 0) <= max(2, pushes // 50), counts


@pytest.fixture
def berth_only(registry_class):
    if registry_class is not BerthServer:
        pytest.fail("garbage collection runs against Berth only (unset E2E_TARGET)", pytrace=False)


def test_gc_under_load_on_local_disk(berth_only, make_registry):
    server = make_registry(workers=2, extra_env=_server_env(DISK))
    workload = Workload(DISK, [server.url], server.rw.tuple, lambda: FilesystemDriver(server.data_dir))
    workload.run()
    counts = workload.finish(DiskView(server.data_dir), settle=0.3)
    _check(workload, counts)


def test_gc_under_load_on_s3(berth_only, make_registry, s3_env, moto_s3):
    """Two instances sharing the bucket (one worker each); the collectors in this process."""
    from settings import S3Settings
    from storage.drivers.s3 import S3Driver

    env = {**s3_env(), **_server_env(S3)}
    servers = [make_registry(workers=1, extra_env=env) for _ in range(2)]
    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    settings = S3Settings(
        bucket=env["REGISTRY_S3_BUCKET"],
        endpoint_url=moto_s3.url,
        region="us-east-1",
        prefix=env["REGISTRY_S3_PREFIX"],
        part_size=5 * 1024 * 1024,
    )

    def make_driver() -> S3Driver:
        driver = S3Driver(settings, session=session)
        _ = driver.client  # made here, in one thread: boto3 sessions make clients unsafely
        return driver

    workload = Workload(S3, [s.url for s in servers], servers[0].rw.tuple, make_driver)
    workload.run()
    view = S3View(session.client("s3", endpoint_url=moto_s3.url), settings.bucket, settings.prefix)
    # S3 times have whole seconds: a second more, so everything is older than the grace.
    counts = workload.finish(view, settle=1.2)
    _check(workload, counts)
