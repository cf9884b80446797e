"""Expectations beyond the Go suite, taken from the spec and /work/shared/notes/oci.md:
exact error codes (a malformed digest is 400 DIGEST_INVALID, never 500; bad names are
NAME_INVALID), JSON error bodies everywhere, tag pagination (lexical order, n, last, Link)."""

from __future__ import annotations

import re
import uuid

import pytest

from .helpers import MT_OCI_IMAGE, TestData, blob_post_put, digest_of, expect_status

JSON_ERR = "application/json"


def assert_error(resp, status, *codes):
    assert resp.status == status, f"expected {status}: {resp!r}"
    if resp.method.upper() == "HEAD":
        return
    assert resp.headers.get("Content-Type", "").split(";")[0].strip() == JSON_ERR, resp
    got = resp.error_codes()
    assert got, f"no OCI error body: {resp!r}"
    if codes:
        assert got[0] in codes, f"error code {got} not in {codes}: {resp!r}"


# ----------------------------------------------------------------------------- headers
def test_api_version_header_on_ping(oci):
    resp = oci.request("GET", "/v2/")
    assert resp.status == 200, resp
    assert resp.headers.get("Docker-Distribution-API-Version") == "registry/2.0", resp


def test_api_version_header_on_error(oci, repo):
    resp = oci.request("GET", f"/v2/{repo}/blobs/{digest_of(b'nope')}")
    assert resp.headers.get("Docker-Distribution-API-Version") == "registry/2.0", resp


# ----------------------------------------------------------------------------- unknown things
def test_blob_unknown(oci, repo):
    assert_error(oci.request("GET", f"/v2/{repo}/blobs/{digest_of(b'nope')}"), 404, "BLOB_UNKNOWN")


def test_manifest_unknown(oci, repo):
    assert_error(oci.request("GET", f"/v2/{repo}/manifests/nope"), 404, "MANIFEST_UNKNOWN", "NAME_UNKNOWN")


def test_blob_upload_unknown_get(oci, repo):
    assert_error(oci.request("GET", f"/v2/{repo}/blobs/uploads/{uuid.uuid4()}"), 404, "BLOB_UPLOAD_UNKNOWN")


def test_blob_upload_unknown_patch(oci, repo):
    resp = oci.request(
        "PATCH",
        f"/v2/{repo}/blobs/uploads/{uuid.uuid4()}",
        headers={"Content-Type": "application/octet-stream"},
        body=b"abc",
    )
    assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


def test_unknown_route_json_404(oci, repo):
    resp = oci.request("GET", f"/v2/{repo}/nonsense/thing")
    assert resp.status == 404, resp
    assert resp.headers.get("Content-Type", "").split(";")[0].strip() == JSON_ERR, resp
    assert resp.error_codes(), resp


def test_method_not_allowed_json_405(oci, repo):
    resp = oci.request("PATCH", f"/v2/{repo}/manifests/latest", body=b"{}")
    assert resp.status == 405, resp
    assert resp.headers.get("Content-Type", "").split(";")[0].strip() == JSON_ERR, resp
    assert resp.error_codes(), resp


# ----------------------------------------------------------------------------- malformed digests
BAD_DIGESTS = ["sha256:zzz", "sha256:totallywrong", "notanalgo", "sha256:" + "a" * 63]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_malformed_digest_blob_get_400(oci, repo, bad):
    assert_error(oci.request("GET", f"/v2/{repo}/blobs/{bad}"), 400, "DIGEST_INVALID")


@pytest.mark.parametrize("bad", BAD_DIGESTS[:2])
def test_malformed_digest_blob_head_400(oci, repo, bad):
    assert_error(oci.request("HEAD", f"/v2/{repo}/blobs/{bad}"), 400)


@pytest.mark.parametrize("bad", BAD_DIGESTS[:2])
def test_malformed_digest_blob_delete_400(oci, repo, bad):
    assert_error(oci.request("DELETE", f"/v2/{repo}/blobs/{bad}"), 400, "DIGEST_INVALID")


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_malformed_digest_upload_put_400(oci, repo, bad):
    resp = oci.request("POST", f"/v2/{repo}/blobs/uploads/")
    expect_status(resp, 202)
    resp = oci.request(
        "PUT",
        resp.headers["Location"],
        params={"digest": bad},
        headers={"Content-Type": "application/octet-stream", "Content-Length": "3"},
        body=b"abc",
    )
    assert_error(resp, 400, "DIGEST_INVALID")


@pytest.mark.parametrize("bad", BAD_DIGESTS[:2])
def test_malformed_digest_monolithic_post_400(oci, repo, bad):
    resp = oci.request(
        "POST",
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": bad},
        headers={"Content-Type": "application/octet-stream", "Content-Length": "3"},
        body=b"abc",
    )
    assert_error(resp, 400, "DIGEST_INVALID")


def test_malformed_digest_manifest_put_400(oci, repo):
    resp = oci.request(
        "PUT",
        f"/v2/{repo}/manifests/sha256:totallywrong",
        headers={"Content-Type": MT_OCI_IMAGE},
        body=b"blablabla",
    )
    assert_error(resp, 400, "DIGEST_INVALID", "MANIFEST_INVALID")


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_malformed_digest_manifest_never_500(oci, repo, method):
    resp = oci.request(method, f"/v2/{repo}/manifests/sha256:totallywrong")
    assert resp.status in (400, 404), resp
    if resp.status == 400 and method != "HEAD":
        assert_error(resp, 400, "DIGEST_INVALID")


def test_malformed_digest_referrers_400(oci, repo):
    assert_error(oci.request("GET", f"/v2/{repo}/referrers/sha256:totallywrong"), 400, "DIGEST_INVALID")


def test_digest_mismatch_code(oci, repo):
    resp = oci.request("POST", f"/v2/{repo}/blobs/uploads/")
    expect_status(resp, 202)
    dig = digest_of(b"other content")
    resp = oci.request(
        "PUT",
        resp.headers["Location"],
        params={"digest": dig},
        headers={"Content-Type": "application/octet-stream", "Content-Length": "3"},
        body=b"abc",
    )
    assert_error(resp, 400, "DIGEST_INVALID")
    expect_status(oci.request("HEAD", f"/v2/{repo}/blobs/{dig}"), 404)


def test_manifest_put_digest_mismatch(oci, repo):
    td = TestData("x")
    man = td.gen_manifest_full(layer_count=1)
    for dig in td.blobs:
        blob_post_put(oci, repo, dig, td)
    wrong = digest_of(td.manifests[man] + b" ")
    resp = oci.request(
        "PUT", f"/v2/{repo}/manifests/{wrong}", headers={"Content-Type": MT_OCI_IMAGE}, body=td.manifests[man]
    )
    assert_error(resp, 400, "DIGEST_INVALID")


# ----------------------------------------------------------------------------- names, tags, manifests
BAD_NAMES = ["Conformance/UPPER", "conformance/-dash", "conformance/bad..dots", "conformance//double"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_name_upload_400(oci, name):
    assert_error(oci.request("POST", f"/v2/{name}/blobs/uploads/"), 400, "NAME_INVALID")


@pytest.mark.parametrize("name", BAD_NAMES[:2])
def test_bad_name_manifest_put_400(oci, name):
    resp = oci.request(
        "PUT", f"/v2/{name}/manifests/latest", headers={"Content-Type": MT_OCI_IMAGE}, body=b"{}"
    )
    assert_error(resp, 400, "NAME_INVALID")


def test_bad_tag_400(oci, repo):
    td = TestData("x")
    man = td.gen_manifest_full(layer_count=1)
    for dig in td.blobs:
        blob_post_put(oci, repo, dig, td)
    resp = oci.request(
        "PUT",
        f"/v2/{repo}/manifests/{'t' * 129}",
        headers={"Content-Type": MT_OCI_IMAGE},
        body=td.manifests[man],
    )
    assert_error(resp, 400, "TAG_INVALID", "MANIFEST_INVALID", "NAME_INVALID")


def test_invalid_manifest_400(oci, repo):
    resp = oci.request(
        "PUT", f"/v2/{repo}/manifests/latest", headers={"Content-Type": MT_OCI_IMAGE}, body=b"blablabla"
    )
    assert_error(resp, 400, "MANIFEST_INVALID")


def test_manifest_blob_unknown_400(oci, repo):
    td = TestData("x")
    man = td.gen_manifest_full(layer_count=1)  # blobs deliberately not pushed
    resp = oci.request(
        "PUT", f"/v2/{repo}/manifests/latest", headers={"Content-Type": MT_OCI_IMAGE}, body=td.manifests[man]
    )
    assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


# ----------------------------------------------------------------------------- tag pagination
@pytest.fixture(scope="module")
def tagged_repo(oci_target):
    c = oci_target.client
    repo = oci_target.repo("conformance")
    td = TestData("tags")
    man = td.gen_manifest_full(layer_count=1)
    for dig in td.blobs:
        blob_post_put(c, repo, dig, td)
    tags = ["b1", "a2", "c0", "A9", "a10", "_z", "a-1"]
    for t in tags:
        resp = c.request(
            "PUT", f"/v2/{repo}/manifests/{t}", headers={"Content-Type": MT_OCI_IMAGE}, body=td.manifests[man]
        )
        expect_status(resp, 201)
    return c, repo, sorted(tags)


def test_tags_lexical_order(tagged_repo):
    c, repo, tags = tagged_repo
    resp = c.request("GET", f"/v2/{repo}/tags/list")
    assert resp.status == 200, resp
    assert resp.json() == {"name": repo, "tags": tags}, resp


def test_tags_n_limits_and_link(tagged_repo):
    c, repo, tags = tagged_repo
    resp = c.request("GET", f"/v2/{repo}/tags/list", params={"n": "3"})
    assert resp.status == 200, resp
    assert resp.json()["tags"] == tags[:3], resp
    link = resp.headers.get("Link", "")
    m = re.match(r'^<([^>]+)>;\s*rel="next"$', link)
    assert m, f"Link header {link!r}"
    nxt = c.request("GET", m.group(1))
    assert nxt.status == 200, nxt
    assert nxt.json()["tags"] == tags[3:6], nxt


def test_tags_last_is_exclusive(tagged_repo):
    c, repo, tags = tagged_repo
    resp = c.request("GET", f"/v2/{repo}/tags/list", params={"last": tags[2]})
    assert resp.status == 200, resp
    assert resp.json()["tags"] == tags[3:], resp


def test_tags_n_and_last(tagged_repo):
    c, repo, tags = tagged_repo
    resp = c.request("GET", f"/v2/{repo}/tags/list", params={"n": "2", "last": tags[1]})
    assert resp.status == 200, resp
    assert resp.json()["tags"] == tags[2:4], resp


def test_tags_n_zero_empty(tagged_repo):
    c, repo, _ = tagged_repo
    resp = c.request("GET", f"/v2/{repo}/tags/list", params={"n": "0"})
    assert resp.status == 200, resp
    assert (resp.json().get("tags") or []) == [], resp


def test_tags_last_page_has_no_link(tagged_repo):
    c, repo, tags = tagged_repo
    resp = c.request("GET", f"/v2/{repo}/tags/list", params={"n": str(len(tags) + 5)})
    assert resp.status == 200, resp
    assert resp.json()["tags"] == tags, resp
    assert "Link" not in resp.headers, resp
