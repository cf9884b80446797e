"""Classic suite, category "Content Management" (conformance/04_management_test.go): 10 checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from .classic import TEST_TAG_NAME, ClassicData, is_2xx, push_blob

MT = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="class")
def st(oci_target):
    return SimpleNamespace(
        oci=oci_target.client,
        repo=oci_target.repo("conformance"),
        d=ClassicData(),
        tag="",
        num_tags=0,
        blob_delete_allowed=True,
    )


def tag_count(resp):
    return len(resp.json().get("tags") or [])


class TestContentManagement:
    # ---- Setup
    def test_setup_01_populate_registry_with_test_config_blob(self, st):
        """Populate registry with test config blob"""
        assert is_2xx(push_blob(st.oci, st.repo, st.d.configs[3]))

    def test_setup_02_populate_registry_with_test_layer(self, st):
        """Populate registry with test layer"""
        assert is_2xx(push_blob(st.oci, st.repo, st.d.layer))

    def test_setup_03_populate_registry_with_test_tag(self, st):
        """Populate registry with test tag"""
        st.tag = TEST_TAG_NAME
        resp = st.oci.request(
            "PUT",
            f"/v2/{st.repo}/manifests/{st.tag}",
            headers={"Content-Type": MT},
            body=st.d.manifests[3].content,
        )
        assert is_2xx(resp), resp

    def test_setup_04_count_tags_before_delete(self, st):
        """Check how many tags there are before anything gets deleted"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/tags/list")
        assert resp.status == 200, resp
        st.num_tags = tag_count(resp)

    # ---- Manifest delete
    def test_manifest_delete_01_delete_tag_202_or_400_405(self, st):
        """DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)

        A 400 must carry the UNSUPPORTED error code."""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/manifests/{st.tag}")
        assert resp.status in (400, 202, 405), resp
        if resp.status == 400:
            codes = resp.error_codes()
            assert codes, resp
            assert codes[0] == "UNSUPPORTED", resp

    def test_manifest_delete_02_delete_digest_202_unless_deleted(self, st):
        """DELETE request to manifest (digest) should yield 202 response unless already deleted"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/manifests/{st.d.manifests[3].digest}")
        assert resp.status in (202, 404), resp

    def test_manifest_delete_03_get_deleted_manifest_404(self, st):
        """GET request to deleted manifest URL should yield 404 response, unless delete is disallowed"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/manifests/{st.d.manifests[3].digest}")
        assert resp.status in (404, 200), resp

    def test_manifest_delete_04_tags_list_reflects_deletion(self, st):
        """GET request to tags list should reflect manifest deletion"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/tags/list")
        assert resp.status == 200, resp
        assert tag_count(resp) < st.num_tags, resp

    # ---- Blob delete
    def test_blob_delete_01_delete_blob_202(self, st):
        """DELETE request to blob URL should yield 202 response"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/blobs/{st.d.configs[3].digest}")
        assert resp.status in (202, 404, 405), resp
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/blobs/{st.d.layer.digest}")
        assert resp.status in (202, 404, 405), resp
        if resp.status == 405:
            st.blob_delete_allowed = False

    def test_blob_delete_02_get_deleted_blob_404(self, st):
        """GET request to deleted blob URL should yield 404 response"""
        if not st.blob_delete_allowed:
            pytest.skip("RunOnlyIf(blobDeleteAllowed)")
        resp = st.oci.request("GET", f"/v2/{st.repo}/blobs/{st.d.configs[3].digest}")
        assert resp.status == 404, resp
