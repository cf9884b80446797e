"""skopeo 1.9 (containers/image 5.23) against the registry: push, pull back, inspect,
list-tags, delete, and multi-arch indexes with --all."""

from __future__ import annotations

import json

import pytest
import requests

from . import images
from .process import CommandError

pytestmark = pytest.mark.e2e

LAYER_SIZE = 1 << 20


def _dest(registry):
    return ["--dest-tls-verify=false", "--dest-creds", registry.rw.colon]


def _src(registry):
    return ["--src-tls-verify=false", "--src-creds", registry.rw.colon]


def _flags(registry):
    return ["--tls-verify=false", "--creds", registry.rw.colon]


def _get_manifest(registry, repo, ref, accept):
    r = registry.session().get(
        f"{registry.url}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=30
    )
    return r


def _assert_pulled_image(out_dir, tag, img: images.Image):
    desc, manifest = images.read_oci_layout(out_dir, tag)
    assert desc["digest"] == img.digest
    assert manifest == img.manifest.data
    doc = json.loads(manifest)
    assert doc["config"]["digest"] == img.config_digest
    assert [layer["digest"] for layer in doc["layers"]] == img.layer_digests
    assert images.read_oci_blob(out_dir, img.config_digest) == img.config.data
    for layer in img.layers:
        assert images.read_oci_blob(out_dir, layer.digest) == layer.data


def test_push_pull_oci_image(registry, skopeo, repo, tmp_path):
    img = images.make_image(LAYER_SIZE)
    src = images.write_oci_layout(tmp_path / "src", img, "v1")
    ref = f"docker://{registry.host}/{repo}:v1"
    skopeo("copy", *_dest(registry), src, ref)

    r = _get_manifest(registry, repo, "v1", images.OCI_MANIFEST)
    assert r.status_code == 200, r.text
    assert r.content == img.manifest.data
    assert r.headers["Docker-Content-Digest"] == img.digest
    assert r.headers["Content-Type"].split(";")[0] == images.OCI_MANIFEST

    skopeo("copy", *_src(registry), ref, f"oci:{tmp_path / 'out'}:v1")
    _assert_pulled_image(tmp_path / "out", "v1", img)

    # Pull by digest too.
    skopeo(
        "copy", *_src(registry), f"docker://{registry.host}/{repo}@{img.digest}", f"oci:{tmp_path / 'out2'}:d"
    )
    _assert_pulled_image(tmp_path / "out2", "d", img)


def test_push_pull_docker_schema2_image(registry, skopeo, repo, tmp_path):
    img = images.make_image(LAYER_SIZE, docker=True)
    src = images.write_dir_image(tmp_path / "src", img)
    ref = f"docker://{registry.host}/{repo}:v2s2"
    skopeo("copy", *_dest(registry), src, ref)

    r = _get_manifest(registry, repo, "v2s2", images.DOCKER_MANIFEST)
    assert r.status_code == 200, r.text
    assert r.content == img.manifest.data
    assert r.headers["Content-Type"].split(";")[0] == images.DOCKER_MANIFEST
    assert r.headers["Docker-Content-Digest"] == img.digest

    out = tmp_path / "out"
    skopeo("copy", *_src(registry), ref, f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == img.manifest.data
    for blob in img.blobs():
        assert (out / blob.digest.split(":", 1)[1]).read_bytes() == blob.data


def test_push_pull_multiarch_index(registry, skopeo, repo, tmp_path):
    index = images.make_index(LAYER_SIZE)
    src = images.write_oci_index_layout(tmp_path / "src", index, "multi")
    ref = f"docker://{registry.host}/{repo}:multi"
    skopeo("copy", "--all", *_dest(registry), src, ref)

    r = _get_manifest(registry, repo, "multi", images.OCI_INDEX)
    assert r.status_code == 200, r.text
    assert r.content == index.manifest.data
    assert r.headers["Docker-Content-Digest"] == index.digest
    assert r.headers["Content-Type"].split(";")[0] == images.OCI_INDEX
    for child in index.children:
        r = _get_manifest(registry, repo, child.digest, images.OCI_MANIFEST)
        assert r.status_code == 200, r.text
        assert r.content == child.manifest.data

    # --all pulls the index and every child.
    out = tmp_path / "out"
    skopeo("copy", "--all", *_src(registry), ref, f"oci:{out}:multi")
    desc, data = images.read_oci_layout(out, "multi")
    assert desc["digest"] == index.digest
    assert data == index.manifest.data
    for child in index.children:
        assert images.read_oci_blob(out, child.digest) == child.manifest.data
        for blob in child.blobs():
            assert images.read_oci_blob(out, blob.digest) == blob.data

    # Without --all, one platform is chosen.
    arm = index.child("arm64")
    out_arm = tmp_path / "out-arm"
    skopeo("copy", "--override-arch", "arm64", *_src(registry), ref, f"oci:{out_arm}:arm")
    _assert_pulled_image(out_arm, "arm", arm)


def test_inspect_list_tags_delete(registry, skopeo, repo, tmp_path):
    img = images.make_image(LAYER_SIZE, n_layers=1)
    src = images.write_oci_layout(tmp_path / "src", img, "v1")
    base = f"docker://{registry.host}/{repo}"
    for tag in ("v1", "v2", "latest"):
        skopeo("copy", *_dest(registry), src, f"{base}:{tag}")

    raw = skopeo("inspect", *_flags(registry), "--raw", f"{base}:v1").stdout
    assert raw.encode() == img.manifest.data
    cfg = json.loads(skopeo("inspect", *_flags(registry), "--config", "--raw", f"{base}:v1").stdout)
    assert cfg["rootfs"]["diff_ids"] == img.diff_ids
    info = json.loads(skopeo("inspect", *_flags(registry), f"{base}:v1").stdout)
    assert info["Digest"] == img.digest
    assert info["Architecture"] == img.arch
    assert info["Os"] == "linux"
    assert info["Layers"] == img.layer_digests
    assert sorted(info["RepoTags"]) == ["latest", "v1", "v2"]

    tags = json.loads(skopeo("list-tags", *_flags(registry), base).stdout)
    assert tags["Repository"] == f"{registry.host}/{repo}"
    assert sorted(tags["Tags"]) == ["latest", "v1", "v2"]

    # skopeo delete resolves the tag and deletes the manifest by digest: every tag goes.
    skopeo("delete", *_flags(registry), f"{base}:v2")
    s = registry.session()
    r = s.get(
        f"{registry.url}/v2/{repo}/manifests/{img.digest}",
        headers={"Accept": images.OCI_MANIFEST},
        timeout=30,
    )
    assert r.status_code == 404, r.text
    for tag in ("v1", "v2", "latest"):
        r = s.head(
            f"{registry.url}/v2/{repo}/manifests/{tag}", headers={"Accept": images.OCI_MANIFEST}, timeout=30
        )
        assert r.status_code == 404, (tag, r.status_code)
    with pytest.raises(CommandError):
        skopeo("inspect", *_flags(registry), "--raw", f"{base}:v1", timeout=60)
    # Blobs are still there (no GC) and a re-push brings the image back.
    skopeo("copy", *_dest(registry), src, f"{base}:v1")
    assert skopeo("inspect", *_flags(registry), "--raw", f"{base}:v1").stdout.encode() == img.manifest.data


def test_cross_repo_push(registry, skopeo, repo, tmp_path):
    """Pushing the same image to a second repository (skopeo tries a mount from the first)."""
    img = images.make_image(LAYER_SIZE)
    src = images.write_oci_layout(tmp_path / "src", img, "v1")
    skopeo("copy", *_dest(registry), src, f"docker://{registry.host}/{repo}:v1")
    skopeo("copy", *_dest(registry), src, f"docker://{registry.host}/{repo}-copy:v1")
    s = registry.session()
    for blob in img.blobs():
        r = s.head(f"{registry.url}/v2/{repo}-copy/blobs/{blob.digest}", timeout=30)
        assert r.status_code == 200, (blob.digest, r.status_code)
        assert int(r.headers["Content-Length"]) == blob.size
    skopeo("copy", *_src(registry), f"docker://{registry.host}/{repo}-copy:v1", f"oci:{tmp_path / 'out'}:v1")
    _assert_pulled_image(tmp_path / "out", "v1", img)


def test_anonymous_requests_are_refused(registry, repo):
    r = requests.get(f"{registry.url}/v2/", timeout=30)
    assert r.status_code == 401
    assert r.headers.get("WWW-Authenticate", "").lower().startswith("basic")
    r = requests.get(f"{registry.url}/v2/{repo}/tags/list", timeout=30)
    assert r.status_code == 401
