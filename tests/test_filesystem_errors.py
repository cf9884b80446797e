"""A local disk that fails a read (EIO, a broken mount, here a symlink loop) is a storage error:
503 with an OCI body and Retry-After, never a 500 with a traceback."""

from __future__ import annotations

import os

from storage import paths
from storage.digests import Digest
from tests.test_auth_and_errors import assert_oci_error


def test_an_unreadable_blob_is_a_503(api, repo, caplog):
    data = os.urandom(1000)
    digest = api.push_blob(repo, data)
    blob = api.data_dir / paths.blob_data(Digest.parse(digest))
    blob.unlink()
    os.symlink(blob.name, blob)  # a loop: ELOOP on every open and stat
    for method in ("GET", "HEAD"):
        r = api.request(method, f"/v2/{repo}/blobs/{digest}")
        assert_oci_error(r, 503, "UNAVAILABLE")
        assert r.headers["Retry-After"]
    assert not [rec for rec in caplog.records if rec.exc_info]


def test_an_unreadable_tag_is_a_503(api, repo):
    api.push_image(repo, "v1")
    tag = api.data_dir / paths.tag(repo, "v1")
    tag.unlink()
    os.symlink(tag.name, tag)
    assert_oci_error(api.request("GET", f"/v2/{repo}/manifests/v1"), 503, "UNAVAILABLE")
