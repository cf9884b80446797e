"""Classic suite, category "Push" (conformance/02_push_test.go): 29 checks, run in order.

Environment: ``CONFORMANCE_AUTOMATIC_CROSSMOUNT=1|0`` plays the role of ``OCI_AUTOMATIC_CROSSMOUNT``:
only the "without from" check matching its value is generated (unset: neither, as in the Go
suite; against Berth it defaults to 1).

The Go suite's ``RunOnlyIf(lastResponse.StatusCode() == 201|202)`` after the cross-repository
mount depends on the registry's answer.  Berth mounts a blob the user can read with 201, so
against Berth the mount must answer 201, the 201 follow-ups must pass and the 202 follow-up is
not generated; only a foreign registry (CONFORMANCE_URL) keeps the Go suite's run-time choice."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from .classic import DUMMY_DIGEST, EMPTY_LAYER_TEST_TAG, NONEXISTENT_MANIFEST, ClassicData, is_2xx
from .helpers import FOREIGN, rel

MT = "application/vnd.oci.image.manifest.v1+json"
OCTET = {"Content-Type": "application/octet-stream"}
# Berth mounts without `from` for users who may read everything; a foreign registry is
# only checked for it when asked.  None: not set, neither "without from" check is generated.
_AUTO_CROSSMOUNT = os.environ.get("CONFORMANCE_AUTOMATIC_CROSSMOUNT", "" if FOREIGN else "1")
AUTO_CROSSMOUNT = None if _AUTO_CROSSMOUNT == "" else _AUTO_CROSSMOUNT not in ("0", "false")
# Answers allowed to a mount (with `from`) of a blob the user can read.
MOUNT_STATUSES = (201, 202) if FOREIGN else (201,)


@pytest.fixture(scope="class")
def st(oci_target):
    return SimpleNamespace(
        oci=oci_target.client,
        repo=oci_target.repo("conformance"),
        cross=oci_target.repo("conformance-cross"),
        d=ClassicData(),
        last=None,
        prev=None,
        empty_layer_ref="",
    )


def need(resp):
    if resp is None:
        pytest.fail("depends on an earlier step of this class that did not run or failed")
    return resp


def mounted_201(st):
    """RunOnlyIf(lastResponse.StatusCode() == 201) on the mount response: a run-time choice only
    for a foreign registry; Berth must have answered 201."""
    mount = getattr(st, "mount", None)
    if FOREIGN:
        if mount is None or mount.status != 201:
            pytest.skip("RunOnlyIf(lastResponse.StatusCode() == 201)")
        return mount
    mount = need(mount)
    assert mount.status == 201, mount
    return mount


class TestPush:
    # ---- Blob Upload Streamed
    def test_streamed_01_patch_blob_in_body_202(self, st):
        """PATCH request with blob in body should yield 202 response"""
        resp = st.oci.request("POST", f"/v2/{st.repo}/blobs/uploads/")
        assert resp.headers.get("Location"), resp
        resp = st.oci.request("PATCH", rel(resp.headers["Location"]), headers=OCTET, body=st.d.blob_a.content)
        assert resp.status == 202, resp
        st.last = resp

    def test_streamed_02_put_session_url_with_digest_201(self, st):
        """PUT request to session URL with digest should yield 201 response

        (The Go test sets a Content-Length header of the blob's size but sends no body; Go's HTTP
        client ignores such a header, so an empty PUT is what goes on the wire, as here.)"""
        last = need(st.last)
        resp = st.oci.request(
            "PUT", rel(last.headers.get("Location", "")), params={"digest": st.d.blob_a.digest}, headers=OCTET
        )
        assert resp.status == 201, resp
        assert resp.headers.get("Location"), resp

    # ---- Blob Upload Monolithic
    def test_monolithic_01_get_nonexistent_blob_404(self, st):
        """GET nonexistent blob should result in 404 response"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/blobs/{DUMMY_DIGEST}")
        assert resp.status == 404, resp

    def test_monolithic_02_post_with_digest_and_blob_201_or_202(self, st):
        """POST request with digest and blob should yield a 201 or 202"""
        c = st.d.configs[1]
        resp = st.oci.request(
            "POST",
            f"/v2/{st.repo}/blobs/uploads/",
            params={"digest": c.digest},
            headers={**OCTET, "Content-Length": c.length},
            body=c.content,
        )
        assert resp.headers.get("Location"), resp
        assert resp.status in (201, 202), resp
        st.last = resp

    def test_monolithic_03_get_blob_from_prior_request_200_or_404(self, st):
        """GET request to blob URL from prior request should yield 200 or 404 based on response code"""
        last = need(st.last)
        resp = st.oci.request("GET", f"/v2/{st.repo}/blobs/{st.d.configs[1].digest}")
        assert resp.status == (404 if last.status == 202 else 200), resp

    def test_monolithic_04_post_yields_session_id(self, st):
        """POST request should yield a session ID"""
        resp = st.oci.request("POST", f"/v2/{st.repo}/blobs/uploads/")
        assert resp.status == 202, resp
        st.last = resp

    def test_monolithic_05_put_upload_of_blob_201(self, st):
        """PUT upload of a blob should yield a 201 Response"""
        c = st.d.configs[1]
        resp = st.oci.request(
            "PUT",
            rel(need(st.last).headers.get("Location", "")),
            params={"digest": c.digest},
            headers={**OCTET, "Content-Length": c.length},
            body=c.content,
        )
        assert resp.headers.get("Location"), resp
        assert resp.status == 201, resp

    def test_monolithic_06_get_existing_blob_200(self, st):
        """GET request to existing blob should yield 200 response"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/blobs/{st.d.configs[1].digest}")
        assert resp.status == 200, resp

    def test_monolithic_07_put_upload_of_layer_blob_201(self, st):
        """PUT upload of a layer blob should yield a 201 Response"""
        resp = st.oci.request("POST", f"/v2/{st.repo}/blobs/uploads/")
        layer = st.d.layer
        resp = st.oci.request(
            "PUT",
            rel(resp.headers.get("Location", "")),
            params={"digest": layer.digest},
            headers={**OCTET, "Content-Length": layer.length},
            body=layer.content,
        )
        assert resp.headers.get("Location"), resp
        assert resp.status == 201, resp

    def test_monolithic_08_get_existing_layer_200(self, st):
        """GET request to existing layer should yield 200 response"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/blobs/{st.d.layer.digest}")
        assert resp.status == 200, resp

    # ---- Blob Upload Chunked
    def test_chunked_01_out_of_order_upload_416(self, st):
        """Out-of-order blob upload should return 416"""
        resp = st.oci.request("POST", f"/v2/{st.repo}/blobs/uploads/", headers={"Content-Length": "0"})
        assert resp.headers.get("Location"), resp
        min_size = resp.headers.get("OCI-Chunk-Min-Length")
        if min_size and int(min_size) > len(st.d.chunk1):
            st.d.set_chunked_blob(int(min_size) * 2 - 2)
        resp = st.oci.request(
            "PATCH",
            rel(resp.headers["Location"]),
            headers={**OCTET, "Content-Length": str(len(st.d.chunk2)), "Content-Range": st.d.chunk2_range},
            body=st.d.chunk2,
        )
        assert resp.status == 416, resp

    def test_chunked_02_patch_first_chunk_202(self, st):
        """PATCH request with first chunk should return 202"""
        resp = st.oci.request("POST", f"/v2/{st.repo}/blobs/uploads/", headers={"Content-Length": "0"})
        assert resp.headers.get("Location"), resp
        st.prev = resp
        resp = st.oci.request(
            "PATCH",
            rel(resp.headers["Location"]),
            headers={**OCTET, "Content-Length": str(len(st.d.chunk1)), "Content-Range": st.d.chunk1_range},
            body=st.d.chunk1,
        )
        assert resp.status == 202, resp
        assert resp.headers.get("Range") == st.d.chunk1_range, resp
        st.last = resp

    def test_chunked_03_retry_previous_chunk_416(self, st):
        """Retry previous blob chunk should return 416"""
        resp = st.oci.request(
            "PATCH",
            rel(need(st.prev).headers.get("Location", "")),
            headers={**OCTET, "Content-Length": str(len(st.d.chunk1)), "Content-Range": st.d.chunk1_range},
            body=st.d.chunk1,
        )
        assert resp.status == 416, resp

    def test_chunked_04_get_stale_upload_204_with_range_and_location(self, st):
        """Get on stale blob upload should return 204 with a range and location"""
        resp = st.oci.request("GET", rel(need(st.prev).headers.get("Location", "")))
        assert resp.status == 204, resp
        assert resp.headers.get("Location"), resp
        assert resp.headers.get("Range") == st.d.chunk1_range, resp
        st.last = resp

    def test_chunked_05_patch_second_chunk_202(self, st):
        """PATCH request with second chunk should return 202"""
        resp = st.oci.request(
            "PATCH",
            rel(need(st.last).headers.get("Location", "")),
            headers={**OCTET, "Content-Length": str(len(st.d.chunk2)), "Content-Range": st.d.chunk2_range},
            body=st.d.chunk2,
        )
        assert resp.status == 202, resp
        assert resp.headers.get("Location"), resp
        st.last = resp

    def test_chunked_06_put_with_digest_201(self, st):
        """PUT request with digest should return 201"""
        resp = st.oci.request(
            "PUT",
            rel(need(st.last).headers.get("Location", "")),
            params={"digest": st.d.blob_b.digest},
            headers={**OCTET, "Content-Length": "0"},
        )
        assert resp.status == 201, resp
        assert resp.headers.get("Location"), resp

    # ---- Cross-Repository Blob Mount
    def test_mount_01_without_from_yields_session_id(self, st):
        """Cross-mounting of a blob without the from argument should yield session id"""
        resp = st.oci.request("POST", f"/v2/{st.cross}/blobs/uploads/", params={"mount": DUMMY_DIGEST})
        assert resp.status == 202, resp
        assert resp.headers.get("Location"), resp

    def test_mount_02_mount_other_repos_blob_201_or_202(self, st):
        """POST request to mount another repository's blob should return 201 or 202 (Berth: 201)"""
        resp = st.oci.request(
            "POST", f"/v2/{st.cross}/blobs/uploads/", params={"mount": st.d.blob_a.digest, "from": st.repo}
        )
        assert resp.status in MOUNT_STATUSES, resp
        st.mount = resp

    def test_mount_03_get_digest_in_cross_mount_namespace_200(self, st):
        """GET request to test digest within cross-mount namespace should return 200"""
        mount = mounted_201(st)
        loc = rel(mount.headers.get("Location", ""))
        assert loc == f"/v2/{st.cross}/blobs/{st.d.blob_a.digest}", mount
        resp = st.oci.request("GET", loc)
        assert resp.status == 200, resp

    if FOREIGN:  # Berth answers the mount with 201, never 202

        def test_mount_04_nonexistent_blob_yields_session_id(self, st):
            """Cross-mounting of nonexistent blob should yield session id"""
            mount = getattr(st, "mount", None)
            if mount is None or mount.status != 202:
                pytest.skip("RunOnlyIf(lastResponse.StatusCode() == 202)")
            assert rel(mount.headers.get("Location", "")).startswith(f"/v2/{st.cross}/blobs/uploads/"), mount

    if AUTO_CROSSMOUNT is True:  # RunOnlyIf(OCI_AUTOMATIC_CROSSMOUNT set and true)

        def test_mount_05_without_from_automatic_enabled_201(self, st):
            """Cross-mounting without from, and automatic content discovery enabled should return a 201"""
            mounted_201(st)
            resp = st.oci.request(
                "POST", f"/v2/{st.cross}/blobs/uploads/", params={"mount": st.d.blob_a.digest}
            )
            assert resp.status == 201, resp

    if AUTO_CROSSMOUNT is False:  # RunOnlyIf(OCI_AUTOMATIC_CROSSMOUNT set and false)

        def test_mount_06_without_from_automatic_disabled_202(self, st):
            """Cross-mounting without from, and automatic content discovery disabled should return a 202"""
            mounted_201(st)
            resp = st.oci.request(
                "POST", f"/v2/{st.cross}/blobs/uploads/", params={"mount": st.d.blob_a.digest}
            )
            assert resp.status == 202, resp

    # ---- Manifest Upload
    def test_manifest_01_get_nonexistent_manifest_404(self, st):
        """GET nonexistent manifest should return 404"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/manifests/{NONEXISTENT_MANIFEST}")
        assert resp.status == 404, resp

    def test_manifest_02_put_accepts_manifest_upload(self, st):
        """PUT should accept a manifest upload (tags test0..test3)"""
        for i in range(4):
            resp = st.oci.request(
                "PUT",
                f"/v2/{st.repo}/manifests/test{i}",
                headers={"Content-Type": MT},
                body=st.d.manifests[1].content,
            )
            assert resp.headers.get("Location"), resp
            assert resp.status == 201, resp

    def test_manifest_03_accept_manifest_with_no_layers(self, st):
        """Registry should accept a manifest upload with no layers

        (The Go suite only prints a warning when this is not 201.)"""
        resp = st.oci.request(
            "PUT",
            f"/v2/{st.repo}/manifests/{EMPTY_LAYER_TEST_TAG}",
            headers={"Content-Type": MT},
            body=st.d.empty_layer_manifest.content,
        )
        if resp.status == 201:
            st.empty_layer_ref = resp.headers.get("Location", "")
            assert st.empty_layer_ref, resp
        else:
            import warnings

            warnings.warn(f"image manifest with no layers is not supported: {resp!r}", stacklevel=1)

    def test_manifest_04_get_manifest_digest_200(self, st):
        """GET request to manifest URL (digest) should yield 200 response"""
        resp = st.oci.request(
            "GET", f"/v2/{st.repo}/manifests/{st.d.manifests[1].digest}", headers={"Accept": MT}
        )
        assert resp.status == 200, resp

    # ---- Teardown
    def test_teardown_01_delete_manifest(self, st):
        """Delete manifest created in tests (and the no-layers manifest)"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/manifests/{st.d.manifests[1].digest}")
        assert is_2xx(resp) or resp.status == 405, resp
        if st.empty_layer_ref:
            resp = st.oci.request("DELETE", f"/v2/{st.repo}/manifests/{st.d.empty_layer_manifest.digest}")
            assert is_2xx(resp) or resp.status == 405, resp

    def test_teardown_02_delete_config_blob(self, st):
        """Delete config blob created in tests"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/blobs/{st.d.configs[1].digest}")
        assert is_2xx(resp) or resp.status in (404, 405), resp

    def test_teardown_03_delete_layer_blob(self, st):
        """Delete layer blob created in setup"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/blobs/{st.d.layer.digest}")
        assert is_2xx(resp) or resp.status in (404, 405), resp
