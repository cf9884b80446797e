"""containerd 1.6's ``ctr`` against the registry.

``ctr images push`` uploads each blob the way BuildKit and Kubernetes nodes do: POST, then a
single PUT carrying the whole body with its Content-Length, over kept-alive connections.
The private containerd isolates content per namespace, so a pull into another namespace
really downloads every blob."""

from __future__ import annotations

import pytest

from . import images

pytestmark = pytest.mark.e2e


def _content_digests(containerd, namespace):
    out = containerd.ctr("content", "ls", "--quiet", namespace=namespace).stdout
    return set(out.split())


def _image_digest(containerd, namespace, ref):
    for line in containerd.ctr("images", "ls", namespace=namespace).stdout.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == ref:
            return cols[2]
    raise AssertionError(f"{ref} not in ctr images ls")


def test_ctr_push_pull(containerd, registry, skopeo, repo, tmp_path):
    img = images.make_image(1 << 20, n_layers=2)
    src = images.write_oci_layout(tmp_path / "oci", img, "v1")
    archive = tmp_path / "image.tar"
    skopeo("copy", src, f"oci-archive:{archive}:v1")

    ns = f"push-{tmp_path.name}"[:60].replace("_", "-")
    ref = f"{registry.host}/{repo}:v1"
    containerd.ctr(
        "images", "import", "--no-unpack", "--base-name", f"{registry.host}/{repo}", archive, namespace=ns
    )
    assert _image_digest(containerd, ns, ref) == img.digest

    user = ["--plain-http", "--user", registry.rw.colon]
    containerd.ctr("images", "push", *user, ref, namespace=ns, timeout=120)

    s = registry.session()
    r = s.get(f"{registry.url}/v2/{repo}/manifests/v1", headers={"Accept": images.OCI_MANIFEST}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.content == img.manifest.data
    assert r.headers["Docker-Content-Digest"] == img.digest
    for blob in img.blobs():
        r = s.get(f"{registry.url}/v2/{repo}/blobs/{blob.digest}", timeout=30)
        assert r.status_code == 200, (blob.digest, r.status_code)
        assert r.content == blob.data

    # Pull into a fresh namespace (nothing shared), unpacking with the native snapshotter.
    pull_ns = f"pull-{tmp_path.name}"[:60].replace("_", "-")
    containerd.ctr("images", "pull", *user, "--snapshotter", "native", ref, namespace=pull_ns, timeout=120)
    assert _image_digest(containerd, pull_ns, ref) == img.digest
    have = _content_digests(containerd, pull_ns)
    assert {img.digest, *(b.digest for b in img.blobs())} <= have

    # Push the pulled image to another repository (ctr first tries a mount from the source).
    ref2 = f"{registry.host}/{repo}-again:v1"
    containerd.ctr("images", "tag", ref, ref2, namespace=pull_ns)
    containerd.ctr("images", "push", *user, ref2, namespace=pull_ns, timeout=120)
    r = s.get(
        f"{registry.url}/v2/{repo}-again/manifests/{img.digest}",
        headers={"Accept": images.OCI_MANIFEST},
        timeout=30,
    )
    assert r.status_code == 200 and r.content == img.manifest.data
    for blob in img.blobs():
        r = s.head(f"{registry.url}/v2/{repo}-again/blobs/{blob.digest}", timeout=30)
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == blob.size


def test_ctr_multiarch(containerd, registry, skopeo, repo, tmp_path):
    index = images.make_index(1 << 20)
    src = images.write_oci_index_layout(tmp_path / "oci", index, "multi")
    skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        registry.rw.colon,
        src,
        f"docker://{registry.host}/{repo}:multi",
    )

    ns = f"multi-{tmp_path.name}"[:60].replace("_", "-")
    ref = f"{registry.host}/{repo}:multi"
    user = ["--plain-http", "--user", registry.rw.colon]
    containerd.ctr(
        "images", "pull", *user, "--all-platforms", "--snapshotter", "native", ref, namespace=ns, timeout=120
    )
    assert _image_digest(containerd, ns, ref) == index.digest
    have = _content_digests(containerd, ns)
    for child in index.children:
        assert {child.digest, *(b.digest for b in child.blobs())} <= have

    # Push the whole index (children by digest first, then the index by tag) elsewhere.
    ref2 = f"{registry.host}/{repo}-copy:multi"
    containerd.ctr("images", "tag", ref, ref2, namespace=ns)
    containerd.ctr("images", "push", *user, ref2, namespace=ns, timeout=120)
    s = registry.session()
    r = s.get(
        f"{registry.url}/v2/{repo}-copy/manifests/multi", headers={"Accept": images.OCI_INDEX}, timeout=30
    )
    assert r.status_code == 200 and r.content == index.manifest.data
    for child in index.children:
        r = s.get(
            f"{registry.url}/v2/{repo}-copy/manifests/{child.digest}",
            headers={"Accept": images.OCI_MANIFEST},
            timeout=30,
        )
        assert r.status_code == 200 and r.content == child.manifest.data
