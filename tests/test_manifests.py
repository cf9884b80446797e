"""Manifests through the HTTP API: storage, validation and deletion."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import OCI_INDEX, OCI_MANIFEST, build_api, sha256

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def test_exact_bytes_and_headers(api, repo):
    digest, body = api.push_image(repo, "v1")
    for ref in ("v1", digest):
        r = api.request("GET", f"/v2/{repo}/manifests/{ref}")
        assert r.status_code == 200
        assert r.content == body
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == digest
        h = api.request("HEAD", f"/v2/{repo}/manifests/{ref}")
        assert h.status_code == 200
        assert h.headers["Content-Length"] == str(len(body))
        assert h.headers["Docker-Content-Digest"] == digest
        assert h.content == b""


def test_put_response(api, repo):
    r, digest, _ = api.push_manifest(
        repo, "v1", {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}
    )
    assert r.status_code == 400  # config is not a descriptor
    digest, _ = api.push_image(repo, "v2")
    r = api.request("HEAD", f"/v2/{repo}/manifests/v2")
    assert r.headers["Docker-Content-Digest"] == digest


def test_docker_schema2_and_whitespace_preserved(api, repo):
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = b"layer-bytes"
    cd, ld = api.push_blob(repo, config), api.push_blob(repo, layer)
    config_desc = f'{{"mediaType": "application/vnd.docker.container.image.v1+json", "size": {len(config)}, "digest": "{cd}"}}'
    layer_desc = f'{{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": {len(layer)}, "digest": "{ld}"}}'
    body = (
        f'{{\n   "schemaVersion": 2,\n   "mediaType": "{DOCKER_MANIFEST}",\n'
        f'   "config": {config_desc},\n   "layers": [{layer_desc}]\n}}'
    ).encode()
    r = api.request(
        "PUT", f"/v2/{repo}/manifests/latest", body=body, headers={"Content-Type": DOCKER_MANIFEST}
    )
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == sha256(body)
    got = api.request("GET", f"/v2/{repo}/manifests/latest")
    assert got.content == body
    assert got.headers["Content-Type"] == DOCKER_MANIFEST


def test_index_needs_its_children(api, repo):
    child, child_body = api.push_image(repo, "amd64")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": child,
                "size": len(child_body),
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    r, digest, _ = api.push_manifest(repo, "multi", index, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert api.request("GET", f"/v2/{repo}/manifests/multi").headers["Content-Type"] == OCI_INDEX
    missing = dict(index, manifests=[{"mediaType": OCI_MANIFEST, "digest": sha256(b"nope"), "size": 4}])
    r, _, _ = api.push_manifest(repo, "broken", missing, OCI_INDEX)
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    # A nested index (an index of indexes) is fine.
    outer = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": digest, "size": len(json.dumps(index))}],
    }
    r, _, _ = api.push_manifest(repo, "nested", outer, OCI_INDEX)
    assert r.status_code == 201, r.text


def test_missing_blobs_are_refused(api, repo):
    config = api.push_blob(repo, b"{}")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b"absent"), "size": 6}
        ],
    }
    r, _, _ = api.push_manifest(repo, "v1", doc)
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    # ...unless the layer is non-distributable, with urls.
    doc["layers"][0]["urls"] = ["https://example.invalid/layer"]
    doc["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.nondistributable.v1.tar"
    r, _, _ = api.push_manifest(repo, "v1", doc)
    assert r.status_code == 201, r.text


def test_blob_of_another_repository_is_not_enough(api, repo):
    config = api.push_blob("elsewhere/repo", b"{}")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [],
    }
    r, _, _ = api.push_manifest(repo, "v1", doc)
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


@pytest.mark.parametrize(
    "body,content_type",
    [
        (b"not json", OCI_MANIFEST),
        (b"[1, 2]", OCI_MANIFEST),
        (b'{"schemaVersion": 1}', OCI_MANIFEST),
        (
            b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}',
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion": 2, "mediaType": "application/x-unknown", "layers": []}',
            "application/x-unknown",
        ),
        (b'{"schemaVersion": 2, "manifests": "nope"}', OCI_INDEX),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "a", "digest": "sha256:bad", "size": 1}, "layers": []}',
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "a", "digest": "x", "size": -1}, "layers": []}',
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "a", "digest": "x", "size": 1}, "layers": {}}',
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion": 1, "signatures": []}',
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
    ],
)
def test_invalid_manifests(api, repo, body, content_type):
    r = api.request("PUT", f"/v2/{repo}/manifests/v1", body=body, headers={"Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert r.json["errors"][0]["code"] == "MANIFEST_INVALID"
    assert api.request("GET", f"/v2/{repo}/manifests/v1").status_code == 404


def test_put_by_digest(api, repo):
    digest, body = api.push_image(repo, "v1")
    r = api.request(
        "PUT", f"/v2/{repo}/manifests/{digest}", body=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201
    wrong = sha256(b"other")
    r = api.request("PUT", f"/v2/{repo}/manifests/{wrong}", body=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "DIGEST_INVALID"
    # sha512 references are honoured.
    d512 = "sha512:" + hashlib.sha512(body).hexdigest()
    r = api.request("PUT", f"/v2/{repo}/manifests/{d512}", body=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == d512
    assert api.request("GET", f"/v2/{repo}/manifests/{d512}").content == body


def test_put_by_digest_with_tags(api, repo):
    digest, body = api.push_image(repo, "v1")
    r = api.request(
        "PUT", f"/v2/{repo}/manifests/{digest}?tag=a&tag=b", body=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201
    assert set(r.headers["OCI-Tag"].replace(" ", "").split(",")) == {"a", "b"}
    assert api.request("GET", f"/v2/{repo}/manifests/b").content == body


def test_size_limit(api, repo):
    big = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "annotations": {f"k{i}": "A" * 10_000 for i in range(390)},
    }
    digest, _ = api.push_image(repo, "large", **{"annotations": big["annotations"]})
    assert len(api.request("GET", f"/v2/{repo}/manifests/{digest}").content) > 3_900_000
    too_big = b"{" + b" " * (4 * 1024 * 1024) + b"}"
    r = api.request("PUT", f"/v2/{repo}/manifests/huge", body=too_big, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 413
    assert r.json["errors"][0]["code"] == "SIZE_INVALID"


def test_missing_subject_is_accepted_with_oci_subject(api, repo):
    subject = {"mediaType": OCI_MANIFEST, "digest": sha256(b"missing content"), "size": 123}
    digest, _ = api.push_image(repo, "sig", subject=subject, artifactType="application/vnd.example.sig")
    r = api.request("GET", f"/v2/{repo}/referrers/{subject['digest']}")
    assert r.status_code == 200
    assert [m["digest"] for m in r.json["manifests"]] == [digest]
    r = api.request(
        "PUT",
        f"/v2/{repo}/manifests/{digest}",
        body=api.request("GET", f"/v2/{repo}/manifests/{digest}").content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.headers["OCI-Subject"] == subject["digest"]


@pytest.mark.parametrize("reference", ["bad:tag", "sha256:abc"])
def test_malformed_digest_references(api, repo, reference):
    r = api.request("GET", f"/v2/{repo}/manifests/{reference}")
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "DIGEST_INVALID"


@pytest.mark.parametrize("reference", ["-bad", "a" * 129, ".INVALID"])
def test_invalid_tags(api, repo, reference):
    # Nothing can be stored under an invalid tag: reading one is a miss, writing one is invalid.
    r = api.request("GET", f"/v2/{repo}/manifests/{reference}")
    assert r.status_code == 404
    assert r.json["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = api.request("PUT", f"/v2/{repo}/manifests/{reference}", body=b"{}")
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "MANIFEST_INVALID"


def test_unknown_manifest(api, repo):
    for ref in ("nope", sha256(b"nope")):
        for method in ("GET", "HEAD"):
            r = api.request(method, f"/v2/{repo}/manifests/{ref}")
            assert r.status_code == 404
        assert (
            api.request("GET", f"/v2/{repo}/manifests/{ref}").json["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        )


def test_delete_by_tag_keeps_the_manifest(api, repo):
    digest, _ = api.push_image(repo, "v1")
    api.request(
        "PUT",
        f"/v2/{repo}/manifests/v2",
        body=api.request("GET", f"/v2/{repo}/manifests/v1").content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert api.request("DELETE", f"/v2/{repo}/manifests/v1").status_code == 202
    assert api.request("GET", f"/v2/{repo}/manifests/v1").status_code == 404
    assert api.request("GET", f"/v2/{repo}/manifests/{digest}").status_code == 200
    assert api.request("GET", f"/v2/{repo}/tags/list").json["tags"] == ["v2"]
    assert api.request("DELETE", f"/v2/{repo}/manifests/v1").status_code == 404


def test_delete_by_digest_removes_its_tags_and_referrer_entry(api, repo):
    digest, _ = api.push_image(repo, "v1")
    ref_digest, _ = api.push_image(
        repo, "sig", subject={"mediaType": OCI_MANIFEST, "digest": digest, "size": 1}
    )
    assert len(api.request("GET", f"/v2/{repo}/referrers/{digest}").json["manifests"]) == 1
    assert api.request("DELETE", f"/v2/{repo}/manifests/{ref_digest}").status_code == 202
    assert api.request("GET", f"/v2/{repo}/referrers/{digest}").json["manifests"] == []
    assert api.request("GET", f"/v2/{repo}/manifests/sig").status_code == 404
    assert api.request("DELETE", f"/v2/{repo}/manifests/{digest}").status_code == 202
    assert api.request("GET", f"/v2/{repo}/manifests/{digest}").status_code == 404
    assert api.request("GET", f"/v2/{repo}/manifests/v1").status_code == 404
    assert api.request("DELETE", f"/v2/{repo}/manifests/{digest}").status_code == 404


def test_deletes_can_be_disabled(tmp_path, repo):
    api = build_api(tmp_path, delete_enabled=False)
    digest, _ = api.push_image(repo, "v1")
    blob = api.push_blob(repo, b"blob")
    for path in (f"/v2/{repo}/manifests/v1", f"/v2/{repo}/manifests/{digest}", f"/v2/{repo}/blobs/{blob}"):
        r = api.request("DELETE", path)
        assert r.status_code == 405
        assert r.json["errors"][0]["code"] == "UNSUPPORTED"
    assert api.request("GET", f"/v2/{repo}/manifests/v1").status_code == 200
