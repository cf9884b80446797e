"""An S3 endpoint over HTTP for tests that drive Berth's storage in-process: moto's server behind
the R2-strict, fault-injecting proxy of the end-to-end tests (tests/e2e/s3_servers.py), with
helpers to build drivers on it and to list what an upload may leave behind."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.s3_faults import FaultControl
from tests.e2e.s3_servers import MotoServer, R2StrictProxy

BUCKET = "berth-faults"
MiB = 1024 * 1024
# Parts far below S3's 5 MiB minimum (moto and the R2 proxy are told so): the logic is the
# same, and a test moves kilobytes instead of megabytes through moto.
PART = 64 * 1024


@dataclass
class HttpS3:
    moto: MotoServer
    proxy: R2StrictProxy
    session: object = None  # one boto3 session for every driver made here

    @property
    def faults(self) -> FaultControl:
        return self.proxy.faults

    def driver(self, prefix: str, direct: bool = False):
        """An S3 driver on a key prefix, through the proxy (or straight to moto)."""
        import boto3

        from settings import S3Settings
        from storage.drivers.s3 import S3Driver

        if self.session is None:
            self.session = boto3.session.Session()
        return S3Driver(
            S3Settings(
                bucket=BUCKET,
                region="us-east-1",
                prefix=prefix,
                part_size=PART,
                endpoint_url=self.moto.url if direct else self.proxy.url,
            ),
            session=self.session,
        )

    def fresh_prefix(self) -> str:
        return f"t-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def http_s3(workdir: Path) -> Iterator[HttpS3]:
    import os

    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    moto = MotoServer(workdir / "moto", min_part=PART).start()
    try:
        proxy = R2StrictProxy(workdir / "proxy", moto.port, min_part=PART).start()
        try:
            boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
            yield HttpS3(moto, proxy)
            assert not proxy.violations, f"multipart uploads R2 would refuse: {proxy.violations}"
        finally:
            proxy.stop()
    finally:
        moto.stop()


def open_multipart_uploads(driver) -> list[tuple[str, str]]:
    """(key, upload id) of every multipart upload open under the driver's prefix."""
    prefix = driver.object_key("x")[:-1]
    found = driver.client.list_multipart_uploads(Bucket=driver.bucket, Prefix=prefix).get("Uploads", [])
    return [(u["Key"], u["UploadId"]) for u in found]


def upload_objects(driver) -> list[str]:
    """Keys left under uploads/ (sessions, staging objects, carries, leases)."""
    prefix = driver.object_key("uploads")
    found = driver.client.list_objects_v2(Bucket=driver.bucket, Prefix=prefix).get("Contents", [])
    return [o["Key"] for o in found]


def unreferenced_multipart_uploads(driver, dropped: list[dict] = ()) -> list[tuple[str, str]]:
    """Open multipart uploads that no saved upload session refers to (a purge's work), leaving
    out those whose creation the fault proxy hid from Berth (`dropped`): nothing but the store
    knows of them."""
    import json

    referenced = set()
    for key in upload_objects(driver):
        if key.endswith("/state.json"):
            raw = driver.client.get_object(Bucket=driver.bucket, Key=key)["Body"].read()
            writer = json.loads(raw).get("writer") or {}
            referenced.update(u for u in (writer.get("mpu"), writer.get("copy_mpu")) if u)
    hidden = {d["upload_id"] for d in dropped}
    return [(k, u) for k, u in open_multipart_uploads(driver) if u not in referenced and u not in hidden]


def fast_boto_retries(monkeypatch) -> None:
    """boto3's retry backoff without its waits (up to seconds for throttling errors)."""
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.01)
