"""REGISTRY_S3_REDIRECT=true: blob GETs answer 307 to a presigned URL, and real clients follow
it to the object store (moto's server here) for the bytes."""

from __future__ import annotations

import json

import pytest

from . import images
from .servers import BerthServer

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def test_blob_downloads_redirect_to_presigned_urls(
    make_registry, registry_class, s3_env, skopeo, tmp_path, moto_s3
):
    if registry_class is not BerthServer:
        pytest.fail("Berth-specific: unset E2E_TARGET", pytrace=False)
    berth = make_registry(workers=2, extra_env={**s3_env(), "REGISTRY_S3_REDIRECT": "true"})
    img = images.make_image(6 * MiB, n_layers=1)
    src = images.write_oci_layout(tmp_path / "oci", img, "v1")
    dest = f"docker://{berth.host}/redirect/app:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", berth.rw.colon, src, dest, timeout=180)

    s = berth.session()
    layer = img.layers[0]
    r = s.get(f"{berth.url}/v2/redirect/app/blobs/{layer.digest}", allow_redirects=False, timeout=30)
    assert r.status_code == 307
    assert r.headers["Location"].startswith(moto_s3.url + "/")
    assert "X-Amz-Signature=" in r.headers["Location"]
    assert r.headers["Docker-Content-Digest"] == layer.digest
    # The presigned URL needs no registry credentials, and serves exactly the blob.
    got = s.get(r.headers["Location"], auth=None, timeout=60)
    assert got.status_code == 200
    assert images.sha256_digest(got.content) == layer.digest
    # HEAD and manifests are still answered by the registry itself.
    assert s.head(f"{berth.url}/v2/redirect/app/blobs/{layer.digest}", timeout=30).status_code == 200

    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        berth.rw.colon,
        dest,
        f"oci:{tmp_path / 'back'}:v1",
        timeout=180,
    )
    index = json.loads((tmp_path / "back" / "index.json").read_text())
    manifest = json.loads(
        (tmp_path / "back" / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes()
    )
    assert manifest["config"]["digest"] == img.config_digest
