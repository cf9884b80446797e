"""Fixtures shared by every test: apps built with create_app over temporary storage, and
helpers that speak the registry API through Falcon's TestClient."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from falcon import testing

from app import create_app
from settings import Settings, User

RW_USER, RW_PASS = "alice", "rw-secret"
RO_USER, RO_PASS = "bob", "ro-secret"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_settings(data_dir: Path, **overrides) -> Settings:
    values = {
        "data_dir": data_dir,
        "users": (User(RW_USER, RW_PASS, True), User(RO_USER, RO_PASS, False)),
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Api:
    """A TestClient that sends the read-write user's credentials unless told otherwise."""

    client: testing.TestClient
    data_dir: Path
    headers: dict[str, str] = field(default_factory=lambda: basic(RW_USER, RW_PASS))

    def request(self, method: str, path: str, *, headers=None, auth=True, **kwargs):
        merged = {**(self.headers if auth else {}), **(headers or {})}
        path, _, query = path.partition("?")
        if query:
            kwargs.setdefault("query_string", query)
        return self.client.simulate_request(method, path, headers=merged, **kwargs)

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body=data)
        assert r.status_code == 201, r.text
        return digest

    def push_manifest(self, repo: str, reference: str, doc: dict, media_type: str = OCI_MANIFEST):
        body = json.dumps(doc).encode()
        r = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", body=body, headers={"Content-Type": media_type}
        )
        return r, sha256(body), body

    def push_image(self, repo: str, reference: str = "latest", layers: int = 1, **extra) -> tuple[str, bytes]:
        """A small OCI image whose blobs are uploaded first; returns (digest, manifest bytes)."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex}).encode()
        cdesc = {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": self.push_blob(repo, config),
            "size": len(config),
        }
        ldescs = []
        for _ in range(layers):
            data = os.urandom(512)
            ldescs.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": self.push_blob(repo, data),
                    "size": 512,
                }
            )
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": ldescs, **extra}
        r, digest, body = self.push_manifest(repo, reference, doc)
        assert r.status_code == 201, r.text
        return digest, body


def build_api(tmp_path: Path, **overrides) -> Api:
    settings = make_settings(tmp_path / "data", **overrides)
    return Api(testing.TestClient(create_app(settings)), tmp_path / "data")


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return build_api(tmp_path)


@pytest.fixture
def repo() -> str:
    return f"test/{uuid.uuid4().hex[:10]}"


@dataclass
class WsgiTarget:
    """A registry under test reached through Falcon's TestClient (conformance suite target)."""

    app: object
    auth: tuple[str, str] | None

    def client(self):
        from tests.conformance.client import WsgiClient

        return WsgiClient(self.app, auth=self.auth)

    def repo(self, prefix: str = "conformance") -> str:
        return f"{prefix}/{uuid.uuid4().hex[:12]}"


@dataclass
class GunicornTarget:
    """A registry under test served by a real gunicorn with gevent workers."""

    url: str
    auth: tuple[str, str] | None

    def client(self):
        from tests.conformance.client import HttpClient

        return HttpClient(self.url, auth=self.auth)

    def repo(self, prefix: str = "conformance") -> str:
        return f"{prefix}/{uuid.uuid4().hex[:12]}"


# CONFORMANCE_URL (with CONFORMANCE_USER/CONFORMANCE_PASS) points the conformance suite at any
# running registry instead, e.g. CNCF distribution to compare.
_TARGETS = ["url"] if os.environ.get("CONFORMANCE_URL") else ["testclient", "gunicorn"]


@pytest.fixture(scope="session", params=_TARGETS)
def registry_target(request, tmp_path_factory):
    """The conformance suite's target: the app in-process, then the same app under gunicorn."""
    if request.param == "url":
        user = os.environ.get("CONFORMANCE_USER")
        yield GunicornTarget(
            os.environ["CONFORMANCE_URL"], (user, os.environ.get("CONFORMANCE_PASS", "")) if user else None
        )
        return
    if request.param == "testclient":
        settings = make_settings(tmp_path_factory.mktemp("conformance"))
        yield WsgiTarget(create_app(settings), (RW_USER, RW_PASS))
        return
    from tests.e2e.servers import BerthServer

    server = BerthServer(tmp_path_factory.mktemp("conformance-gunicorn"), workers=2).start()
    try:
        yield GunicornTarget(server.url, server.rw.tuple)
    finally:
        server.stop()


@pytest.fixture
def s3_bucket():
    """An in-process S3 (moto) with an empty bucket; yields its name."""
    from moto import mock_aws

    with mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="berth-test")
        yield "berth-test"


@pytest.fixture
def r2_strict():
    from tests.s3_strict import R2StrictChecker

    return R2StrictChecker()


@pytest.fixture
def make_s3_driver(s3_bucket, r2_strict):
    """A factory of S3 drivers over one moto bucket (5 MiB parts), each checked against R2's
    multipart rules."""
    from settings import S3Settings
    from storage.drivers.s3 import S3Driver

    def make(**overrides):
        settings = S3Settings(
            bucket=s3_bucket, region="us-east-1", prefix="reg", part_size=5 * 1024 * 1024, **overrides
        )
        driver = S3Driver(settings)
        r2_strict.attach(driver.client)
        return driver

    return make
