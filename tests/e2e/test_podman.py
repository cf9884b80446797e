"""podman 4.3 against the registry: login, push as OCI and as Docker schema2, pull back.

podman stores layers uncompressed and recompresses them on push, so images are compared by
config digest (podman's image ID)."""

from __future__ import annotations

import json

import pytest

from . import images

pytestmark = pytest.mark.e2e

ACCEPT = ", ".join([images.OCI_MANIFEST, images.DOCKER_MANIFEST])


def _image_id(podman, ref):
    return "sha256:" + podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


@pytest.mark.parametrize("fmt, media_type", [("oci", images.OCI_MANIFEST), ("v2s2", images.DOCKER_MANIFEST)])
def test_podman_login_push_pull(podman, registry, repo, tmp_path, fmt, media_type):
    img = images.make_image(1 << 20, n_layers=2)
    src = images.write_oci_layout(tmp_path / "oci", img, "v1")
    podman("pull", src)
    local = podman("images", "--format", "{{.ID}}", "--no-trunc").stdout.split()
    assert img.config_digest in local, local

    target = f"{registry.host}/{repo}:{fmt}"
    podman("tag", img.config_digest, target)
    out = podman(
        "login",
        "--tls-verify=false",
        "-u",
        registry.rw.username,
        "--password-stdin",
        registry.host,
        input=registry.rw.password + "\n",
    ).stdout
    assert "Login Succeeded" in out
    assert registry.host in json.loads(podman.auth_file.read_text())["auths"]

    digest_file = tmp_path / "digest"
    podman("push", "--tls-verify=false", "--format", fmt, "--digestfile", digest_file, target, timeout=120)
    digest = digest_file.read_text().strip()

    s = registry.session()
    r = s.get(f"{registry.url}/v2/{repo}/manifests/{fmt}", headers={"Accept": ACCEPT}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == digest == images.sha256_digest(r.content)
    manifest = json.loads(r.content)
    assert r.headers["Content-Type"].split(";")[0] == manifest["mediaType"] == media_type
    assert manifest["config"]["digest"] == img.config_digest
    assert len(manifest["layers"]) == len(img.layers)
    for layer in manifest["layers"]:
        r = s.head(f"{registry.url}/v2/{repo}/blobs/{layer['digest']}", timeout=30)
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == layer["size"]

    podman("rmi", "--force", img.config_digest)
    assert img.config_digest not in podman("images", "--format", "{{.ID}}", "--no-trunc").stdout

    podman("pull", "--tls-verify=false", target, timeout=120)
    assert _image_id(podman, target) == img.config_digest
    podman("rmi", "--force", img.config_digest)
    podman("pull", "--tls-verify=false", f"{registry.host}/{repo}@{digest}", timeout=120)
    assert _image_id(podman, f"{registry.host}/{repo}@{digest}") == img.config_digest

    podman("logout", registry.host)
