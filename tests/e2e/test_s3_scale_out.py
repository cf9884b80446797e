"""Scale-out: two Berth instances sharing nothing but one S3 bucket (moto's server behind an
R2-strict proxy), nginx in front (deploy/nginx.conf: TLS, round-robin, request buffering off).
Any request of an upload may land on any instance."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess

import pytest

from . import images
from .nginx import Nginx
from .servers import BerthServer

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


@pytest.fixture
def cluster(make_registry, registry_class, s3_env, tmp_path_factory, moto_s3):
    if registry_class is not BerthServer:
        pytest.fail("scale-out runs against Berth only (unset E2E_TARGET)", pytrace=False)
    env = s3_env()  # one key prefix: the two instances serve the same registry
    instances = [make_registry(workers=1, access_log=True, extra_env=env) for _ in range(2)]
    proxy = Nginx(tmp_path_factory.mktemp("nginx"), [i.host for i in instances]).start()
    try:
        yield proxy, instances
    finally:
        proxy.stop()


def _curl(proxy: Nginx, *args: str) -> str:
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--cacert", str(proxy.ca), *args],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return out.stdout.decode(errors="replace")


def test_curl_chunked_upload_alternates_instances(cluster, moto_s3, tmp_path):
    proxy, instances = cluster
    user = f"{instances[0].rw.username}:{instances[0].rw.password}"
    data = os.urandom(13 * MiB + 333)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    headers = _curl(
        proxy, "-u", user, "-X", "POST", "-D", "-", "-o", "/dev/null",
        f"{proxy.url}/v2/scale/out/blobs/uploads/",
    )  # fmt: skip
    location = re.search(r"(?im)^location: (\S+)", headers).group(1)
    upload_id = location.rsplit("/", 1)[1]
    chunk_file = tmp_path / "chunk"
    offset, step = 0, 3 * MiB + 7  # chunks that do not line up with 5 MiB parts
    while offset < len(data):
        chunk = data[offset : offset + step]
        chunk_file.write_bytes(chunk)
        _curl(
            proxy, "-u", user, "-X", "PATCH", "--data-binary", f"@{chunk_file}",
            "-H", "Content-Type: application/octet-stream",
            "-H", f"Content-Range: {offset}-{offset + len(chunk) - 1}",
            "-o", "/dev/null", f"{proxy.url}{location}",
        )  # fmt: skip
        offset += len(chunk)
    _curl(proxy, "-u", user, "-X", "PUT", "-o", "/dev/null", f"{proxy.url}{location}?digest={digest}")
    served = [
        i.access_log_path.read_text().count(f"PATCH /v2/scale/out/blobs/uploads/{upload_id}")
        for i in instances
    ]
    assert all(served), f"PATCHes per instance: {served}"
    got = subprocess.run(
        ["curl", "-sS", "--cacert", str(proxy.ca), "-u", user, f"{proxy.url}/v2/scale/out/blobs/{digest}"],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    assert hashlib.sha256(got).hexdigest() == digest.split(":")[1]
    assert any(sum(sizes) == len(data) for sizes in moto_s3.completed)


def test_skopeo_and_docker_through_nginx(cluster, skopeo, docker_daemon, tmp_path, moto_s3):
    proxy, instances = cluster
    creds = instances[0].rw
    before = len(moto_s3.completed)
    img = images.make_image(12 * MiB, n_layers=2)  # layers bigger than a part: multipart uploads
    src = images.write_oci_layout(tmp_path / "oci", img, "v1")
    dest = f"docker://{proxy.host}/scale/skopeo:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds.colon, src, dest, timeout=300)
    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        creds.colon,
        dest,
        f"oci:{tmp_path / 'back'}:v1",
        timeout=300,
    )
    index = json.loads((tmp_path / "back" / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(
        (tmp_path / "back" / "blobs" / "sha256" / manifest_digest.split(":")[1]).read_bytes()
    )
    assert manifest["config"]["digest"] == img.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == [layer.digest for layer in img.layers]
    assert len(moto_s3.completed) > before

    archive = tmp_path / "image.tar"
    skopeo("copy", src, f"docker-archive:{archive}:scale/local:v1")
    docker_daemon.docker("load", "-i", archive)
    target = f"{proxy.host}/scale/docker:v1"
    docker_daemon.docker("tag", "scale/local:v1", target)
    docker_daemon.login(proxy.host, creds)
    docker_daemon.docker("push", target, timeout=300)
    docker_daemon.docker("rmi", "-f", target, "scale/local:v1")
    docker_daemon.docker("pull", target, timeout=300)
    image_id = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", target).stdout.strip()
    assert image_id == img.config_digest
    docker_daemon.docker("rmi", "-f", target)
