"""A real Docker daemon (Debian's docker.io 20.10) against the registry: load, tag, login,
push, rmi, pull by tag and by digest, push to a second repository (cross-repo mount).

docker recompresses layers on push, so pushed layer digests differ from the source's;
images are compared by config digest (the image ID), which docker preserves."""

from __future__ import annotations

import json
import re

import pytest

from . import images

pytestmark = pytest.mark.e2e

DOCKER_ACCEPT = ", ".join([images.DOCKER_MANIFEST, images.OCI_MANIFEST])


def _image_id(docker_daemon, ref: str) -> str:
    return docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def _image_exists(docker_daemon, ref: str) -> bool:
    return docker_daemon.docker("image", "inspect", ref, check=False).returncode == 0


def _push_digest(output: str) -> str:
    m = re.search(r"digest: (sha256:[0-9a-f]{64}) size: \d+", output)
    assert m, f"no digest in docker push output:\n{output}"
    return m.group(1)


def _login(docker_daemon, registry, creds=None):
    return docker_daemon.login(registry.host, creds or registry.rw)


def test_docker_push_pull(docker_daemon, registry, repo, loaded_image):
    img, local = loaded_image
    target = f"{registry.host}/{repo}:v1"
    docker_daemon.docker("tag", local, target)

    out = _login(docker_daemon, registry).stdout
    assert "Login Succeeded" in out
    cfg = json.loads((docker_daemon.config_dir / "config.json").read_text())
    assert registry.host in cfg.get("auths", {})

    push = docker_daemon.docker("push", target, timeout=120).stdout
    digest = _push_digest(push)

    # What the registry holds: a schema2 manifest whose config is the image's config.
    s = registry.session()
    r = s.get(f"{registry.url}/v2/{repo}/manifests/v1", headers={"Accept": DOCKER_ACCEPT}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert images.sha256_digest(r.content) == digest
    manifest = json.loads(r.content)
    assert r.headers["Content-Type"].split(";")[0] == manifest["mediaType"] == images.DOCKER_MANIFEST
    assert manifest["config"]["digest"] == img.config_digest
    assert len(manifest["layers"]) == len(img.layers)
    r = s.get(f"{registry.url}/v2/{repo}/blobs/{img.config_digest}", timeout=30)
    assert r.status_code == 200 and r.content == img.config.data

    # Remove every local reference to the image, then pull it back by tag.
    docker_daemon.docker("rmi", target, local)
    assert not _image_exists(docker_daemon, img.config_digest)
    docker_daemon.docker("pull", target, timeout=120)
    assert _image_id(docker_daemon, target) == img.config_digest

    # ... and by digest.
    docker_daemon.docker("rmi", target)
    assert not _image_exists(docker_daemon, img.config_digest)
    by_digest = f"{registry.host}/{repo}@{digest}"
    out = docker_daemon.docker("pull", by_digest, timeout=120).stdout
    assert digest in out
    assert _image_id(docker_daemon, by_digest) == img.config_digest
    repo_digests = json.loads(
        docker_daemon.docker("image", "inspect", "--format", "{{json .RepoDigests}}", by_digest).stdout
    )
    assert by_digest in repo_digests

    # Same image to a second repository: docker mounts the layers from the first one.
    other = f"{registry.host}/{repo}-other:v1"
    docker_daemon.docker("tag", by_digest, other)
    push2 = docker_daemon.docker("push", other, timeout=120).stdout
    assert _push_digest(push2) == digest
    assert "Mounted from" in push2, push2
    for layer in manifest["layers"]:
        r = s.head(f"{registry.url}/v2/{repo}-other/blobs/{layer['digest']}", timeout=30)
        assert r.status_code == 200, (layer["digest"], r.status_code)
        assert int(r.headers["Content-Length"]) == layer["size"]
        assert r.headers["Docker-Content-Digest"] == layer["digest"]

    docker_daemon.docker("rmi", by_digest, other)
    assert not _image_exists(docker_daemon, img.config_digest)
    docker_daemon.docker("pull", other, timeout=120)
    assert _image_id(docker_daemon, other) == img.config_digest

    # A second push of an image the registry already has uploads nothing.
    again = docker_daemon.docker("push", other, timeout=120).stdout
    assert "Layer already exists" in again, again
    assert _push_digest(again) == digest

    docker_daemon.docker("logout", registry.host)
