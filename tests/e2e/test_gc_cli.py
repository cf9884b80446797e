"""An operator's garbage collection from start to end, with real parts: a real docker pushes an
image to Berth under gunicorn, the image is removed locally (`docker rmi`), its tag is deleted
over the API, `python -m berth gc --mode untagged` runs with the server's settings while the
server keeps serving, and `python -m berth du` shows the bytes gone. On local disk and on S3
(moto's server)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import images
from .test_docker import DOCKER_ACCEPT, _push_digest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
GRACE = 2  # seconds; S3 times have whole seconds


def berth(server, *argv: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "berth", *argv, "--json"],
        cwd=REPO_ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def usage_of(report: dict, repository: str) -> int:
    return next((u["bytes"] for u in report["repositories"] if u["name"] == repository), 0)


@pytest.mark.parametrize("storage", ["filesystem", "s3"])
def test_docker_push_rmi_delete_tag_gc_untagged_du(
    storage, make_registry, docker_daemon, loaded_image, repo, request
):
    env = {"REGISTRY_GC_GRACE": f"{GRACE}s"}
    if storage == "s3":
        env.update(request.getfixturevalue("s3_env")())
    server = make_registry(auth=True, workers=2, extra_env=env)
    img, local = loaded_image
    target = f"{server.host}/{repo}:v1"
    docker_daemon.docker("tag", local, target)
    docker_daemon.login(server.host, server.rw)
    digest = _push_digest(docker_daemon.docker("push", target, timeout=120).stdout)
    docker_daemon.docker("rmi", target)

    before = berth(server, "du")
    pushed = usage_of(before, repo)
    assert pushed >= sum(len(layer.data) for layer in img.layers) // 2  # compressed by docker
    s = server.session()
    manifest = s.get(
        f"{server.url}/v2/{repo}/manifests/v1", headers={"Accept": DOCKER_ACCEPT}, timeout=30
    ).json()
    blobs = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]

    # Deleting the tag leaves the manifest by digest: untagged, it goes with its blobs.
    assert s.delete(f"{server.url}/v2/{repo}/manifests/v1", timeout=30).status_code == 202
    assert s.get(
        f"{server.url}/v2/{repo}/manifests/{digest}", headers={"Accept": DOCKER_ACCEPT}, timeout=30
    ).ok
    time.sleep(GRACE + 1.2)
    dry = berth(server, "gc", "--mode", "untagged", "--dry-run")
    assert dry["manifests"] == 1 and dry["blobs"] == len(blobs) + 1  # and the manifest's own bytes
    assert s.get(
        f"{server.url}/v2/{repo}/manifests/{digest}", headers={"Accept": DOCKER_ACCEPT}, timeout=30
    ).ok

    report = berth(server, "gc", "--mode", "untagged")
    assert report["manifests"] == 1 and report["blobs"] == len(blobs) + 1
    assert report["blob_bytes"] >= pushed

    after = berth(server, "du")
    assert usage_of(after, repo) == 0
    assert after["stored_bytes"] <= before["stored_bytes"] - pushed
    for blob in blobs:
        assert s.get(f"{server.url}/v2/{repo}/blobs/{blob}", timeout=30).status_code == 404
    assert s.get(f"{server.url}/v2/{repo}/manifests/{digest}", timeout=30).status_code == 404
    assert berth(server, "verify")["corrupt"] == []

    # The server kept serving, and the same image pushes again (docker uploads the layers anew).
    docker_daemon.docker("tag", local, target)
    assert _push_digest(docker_daemon.docker("push", target, timeout=120).stdout) == digest
    assert s.get(f"{server.url}/v2/{repo}/blobs/{img.config_digest}", timeout=30).status_code == 200
    assert (
        images.sha256_digest(s.get(f"{server.url}/v2/{repo}/blobs/{blobs[1]}", timeout=30).content)
        == blobs[1]
    )
