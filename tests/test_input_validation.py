"""Hostile input gets a 4xx with an OCI body, never a 500, and nothing invalid is stored:
names, tags, digests and upload ids are matched whole (a trailing newline is not "the end"),
huge numbers in Range headers and deeply nested JSON are refused cleanly."""

from __future__ import annotations

import json
import logging
import os

import pytest

from tests.conftest import OCI_MANIFEST, sha256
from tests.test_auth_and_errors import assert_oci_error


@pytest.fixture
def no_errors_logged(caplog):
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def _image(api, repo):
    config = b'{"architecture": "amd64", "os": "linux"}'
    layer = os.urandom(64)
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": api.push_blob(repo, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": api.push_blob(repo, layer),
                "size": 64,
            }
        ],
    }


@pytest.mark.parametrize("tag", ["latest%0A", "latest%0a", "x%0D", "%0Alatest"])
def test_tag_with_newline_is_refused_and_not_stored(api, repo, tag, no_errors_logged):
    doc = _image(api, repo)
    body = json.dumps(doc).encode()
    r = api.request("PUT", f"/v2/{repo}/manifests/{tag}", body=body, headers={"Content-Type": OCI_MANIFEST})
    assert_oci_error(r, 400, "MANIFEST_INVALID")
    r = api.request("GET", f"/v2/{repo}/tags/list")
    assert r.status_code in (200, 404)
    assert r.status_code == 404 or r.json["tags"] == []


@pytest.mark.parametrize("extra", ["x%0a", "x%0A", "ok&tag=bad%0a"])
def test_extra_tag_parameter_with_newline_is_refused(api, repo, extra, no_errors_logged):
    doc = _image(api, repo)
    body = json.dumps(doc).encode()
    digest = sha256(body)
    r = api.request(
        "PUT", f"/v2/{repo}/manifests/{digest}?tag={extra}", body=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert_oci_error(r, 400, "MANIFEST_INVALID")
    # Nothing half-written: the tag list still answers, and holds no tag.
    r = api.request("GET", f"/v2/{repo}/tags/list")
    assert r.status_code in (200, 404), r.text
    assert r.status_code == 404 or r.json["tags"] == []


def test_name_with_newline_is_invalid(api, no_errors_logged):
    r = api.request("GET", "/v2/team/app%0A/tags/list")
    assert_oci_error(r, 400, "NAME_INVALID")
    r = api.request("POST", "/v2/team/app%0A/blobs/uploads/")
    assert_oci_error(r, 400, "NAME_INVALID")


def test_digest_with_newline_is_invalid(api, repo, no_errors_logged):
    digest = sha256(b"x")
    r = api.request("GET", f"/v2/{repo}/blobs/{digest}%0A")
    assert_oci_error(r, 400, "DIGEST_INVALID")
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}%0A", body=b"x")
    assert_oci_error(r, 400, "DIGEST_INVALID")


def test_upload_id_with_newline_is_unknown(api, repo, no_errors_logged):
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/")
    location = r.headers["Location"]
    r = api.request("GET", location + "%0A")
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    r = api.request("PATCH", location + "%0A", body=b"abc")
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_range_with_thousands_of_digits_is_ignored(api, repo, no_errors_logged):
    data = os.urandom(100)
    digest = api.push_blob(repo, data)
    for header in ("bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "1" * 5000):
        r = api.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
        assert r.status_code == 200, r.text  # malformed ranges are ignored (RFC 9110)
        assert r.content == data


def test_content_range_with_thousands_of_digits_is_refused(api, repo, no_errors_logged):
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/")
    location = r.headers["Location"]
    for header in ("0-" + "9" * 5000, "9" * 5000 + "-1", "bytes 0-1/" + "9" * 5000):
        r = api.request(
            "PATCH",
            location,
            body=b"ab",
            headers={"Content-Range": header, "Content-Type": "application/octet-stream"},
        )
        assert_oci_error(r, 416, "BLOB_UPLOAD_INVALID")
    # The upload is still usable.
    r = api.request("PATCH", location, body=b"ab", headers={"Content-Range": "0-1"})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_deeply_nested_manifest_is_invalid(api, repo, depth, no_errors_logged):
    body = b'{"schemaVersion": 2, "annotations": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
    r = api.request("PUT", f"/v2/{repo}/manifests/latest", body=body, headers={"Content-Type": OCI_MANIFEST})
    assert_oci_error(r, 400, "MANIFEST_INVALID")


def test_annotations_must_be_strings(api, repo, no_errors_logged):
    doc = _image(api, repo)
    doc["annotations"] = {"nested": {"deep": ["x"]}}
    r, _, _ = api.push_manifest(repo, "latest", doc)
    assert_oci_error(r, 400, "MANIFEST_INVALID")
