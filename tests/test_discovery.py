"""Blob reads, tags, catalog and referrers through the HTTP API."""

from __future__ import annotations

import os

import pytest

from tests.conftest import OCI_MANIFEST, sha256


@pytest.fixture
def blob(api, repo):
    data = os.urandom(1000)
    return data, api.push_blob(repo, data)


def test_blob_head_and_get(api, repo, blob):
    data, digest = blob
    h = api.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    assert h.status_code == 200
    assert h.headers["Content-Length"] == "1000"
    assert h.headers["Docker-Content-Digest"] == digest
    assert h.content == b""
    assert api.request("GET", f"/v2/{repo}/blobs/{digest}").content == data


@pytest.mark.parametrize(
    "header,status,expected",
    [
        ("bytes=0-9", 206, (0, 10)),
        ("bytes=990-", 206, (990, 1000)),
        ("bytes=-10", 206, (990, 1000)),
        ("bytes=995-5000", 206, (995, 1000)),
        ("bytes=0-", 206, (0, 1000)),
        ("garbage", 200, (0, 1000)),
        ("bytes=0-1,5-6", 200, (0, 1000)),
    ],
)
def test_blob_ranges(api, repo, blob, header, status, expected):
    data, digest = blob
    r = api.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert r.status_code == status
    start, end = expected
    assert r.content == data[start:end]
    if status == 206:
        assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/1000"
        assert r.headers["Content-Length"] == str(end - start)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=500-0"])
def test_unsatisfiable_range(api, repo, blob, header):
    _, digest = blob
    r = api.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == "bytes */1000"
    assert r.json["errors"]


def test_blob_unknown_and_not_linked(api, repo, blob):
    _, digest = blob
    r = api.request("GET", f"/v2/other/repo/blobs/{digest}")
    assert r.status_code == 404
    assert r.json["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert api.request("HEAD", f"/v2/{repo}/blobs/{sha256(b'none')}").status_code == 404


def test_blob_delete(api, repo, blob):
    _, digest = blob
    assert api.request("DELETE", f"/v2/{repo}/blobs/{digest}").status_code == 202
    assert api.request("GET", f"/v2/{repo}/blobs/{digest}").status_code == 404
    r = api.request("DELETE", f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404
    assert r.json["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_tags_sorted_and_paginated(api, repo):
    _digest, body = api.push_image(repo, "v1")
    tags = ["latest", "1.0", "2.0", "a", "B", "v1"]
    for tag in tags:
        api.request("PUT", f"/v2/{repo}/manifests/{tag}", body=body, headers={"Content-Type": OCI_MANIFEST})
    everything = sorted(set(tags))
    assert api.request("GET", f"/v2/{repo}/tags/list").json == {"name": repo, "tags": everything}
    r = api.request("GET", f"/v2/{repo}/tags/list?n=2")
    assert r.json["tags"] == everything[:2]
    assert r.headers["Link"] == f'</v2/{repo}/tags/list?n=2&last={everything[1]}>; rel="next"'
    r = api.request("GET", f"/v2/{repo}/tags/list?n=2&last={everything[1]}")
    assert r.json["tags"] == everything[2:4]
    r = api.request("GET", f"/v2/{repo}/tags/list?n=0")
    assert r.json["tags"] == []
    assert "Link" not in r.headers
    r = api.request("GET", f"/v2/{repo}/tags/list?n=100")
    assert r.json["tags"] == everything
    assert "Link" not in r.headers
    r = api.request("GET", f"/v2/{repo}/tags/list?last=b")
    assert r.json["tags"] == [t for t in everything if t > "b"]
    assert api.request("GET", f"/v2/{repo}/tags/list?n=x").status_code == 400
    assert api.request("GET", f"/v2/{repo}/tags/list?n=-1").status_code == 400


def test_tags_of_unknown_repository(api):
    r = api.request("GET", "/v2/no/such/repo/tags/list")
    assert r.status_code == 404
    assert r.json["errors"][0]["code"] == "NAME_UNKNOWN"


def test_catalog(api):
    for name in ("zeta", "alpha/one", "alpha/two", "alpha", "mid/deep/er/repo"):
        api.push_image(name, "v1")
    api.push_blob("only/blobs", b"x")  # no manifest: not a repository in the catalog
    want = ["alpha", "alpha/one", "alpha/two", "mid/deep/er/repo", "zeta"]
    assert api.request("GET", "/v2/_catalog").json == {"repositories": want}
    r = api.request("GET", "/v2/_catalog?n=2")
    assert r.json["repositories"] == want[:2]
    assert r.headers["Link"] == '</v2/_catalog?n=2&last=alpha/one>; rel="next"'
    r = api.request("GET", "/v2/_catalog?n=2&last=alpha/one")
    assert r.json["repositories"] == want[2:4]


def test_referrers_with_filter(api, repo):
    subject, subject_body = api.push_image(repo, "v1")
    desc = {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(subject_body)}
    sig, _ = api.push_image(
        repo, "sig", subject=desc, artifactType="application/vnd.example.sig", annotations={"k": "v"}
    )
    sbom, _ = api.push_image(repo, "sbom", subject=desc, artifactType="application/vnd.example.sbom")
    plain, _ = api.push_image(repo, "plain", subject=desc)  # artifactType from its config
    r = api.request("GET", f"/v2/{repo}/referrers/{subject}")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    index = r.json
    assert index["schemaVersion"] == 2
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert set(by_digest) == {sig, sbom, plain}
    assert by_digest[sig]["artifactType"] == "application/vnd.example.sig"
    assert by_digest[sig]["annotations"] == {"k": "v"}
    assert by_digest[plain]["artifactType"] == "application/vnd.oci.image.config.v1+json"
    assert by_digest[sig]["mediaType"] == OCI_MANIFEST
    assert "OCI-Filters-Applied" not in r.headers
    r = api.request("GET", f"/v2/{repo}/referrers/{subject}?artifactType=application/vnd.example.sbom")
    assert [m["digest"] for m in r.json["manifests"]] == [sbom]
    assert r.headers["OCI-Filters-Applied"] == "artifactType"


def test_referrers_of_unknown_subject_is_empty(api, repo):
    r = api.request("GET", f"/v2/{repo}/referrers/{sha256(b'nothing')}")
    assert r.status_code == 200
    assert r.json["manifests"] == []
    r = api.request("GET", f"/v2/{repo}/referrers/sha256:bad")
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "DIGEST_INVALID"
