"""Classic suite, category "Pull" (conformance/01_pull_test.go): 24 checks, run in order."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from .classic import (
    DUMMY_DIGEST,
    INVALID_MANIFEST_CONTENT,
    NONEXISTENT_MANIFEST,
    TEST_TAG_NAME,
    ClassicData,
    is_2xx,
    push_blob,
)
from .helpers import ERROR_CODES

MT = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = {"Accept": MT}
# Go setup.go: runPullSetup = false only when all three variables are set (a read-only run)
READ_ONLY_PULL = all(os.environ.get(v) for v in ("OCI_TAG_NAME", "OCI_MANIFEST_DIGEST", "OCI_BLOB_DIGEST"))


@pytest.fixture(scope="class")
def st(oci_target):
    return SimpleNamespace(
        oci=oci_target.client, repo=oci_target.repo("conformance"), d=ClassicData(), tag=""
    )


class TestPull:
    # ---- Setup
    def test_setup_01_populate_registry_with_test_blob_config0(self, st):
        """Pull / Setup / Populate registry with test blob (configs[0])"""
        resp = push_blob(st.oci, st.repo, st.d.configs[0])
        assert is_2xx(resp), resp

    def test_setup_02_populate_registry_with_test_blob_config1(self, st):
        """Pull / Setup / Populate registry with test blob (configs[1])"""
        resp = push_blob(st.oci, st.repo, st.d.configs[1])
        assert is_2xx(resp), resp

    def test_setup_03_populate_registry_with_test_layer(self, st):
        """Pull / Setup / Populate registry with test layer"""
        resp = push_blob(st.oci, st.repo, st.d.layer)
        assert is_2xx(resp), resp

    def test_setup_04_populate_registry_with_test_manifest_tag(self, st):
        """Pull / Setup / Populate registry with test manifest (manifests[0] by tag)"""
        st.tag = TEST_TAG_NAME
        resp = st.oci.request(
            "PUT",
            f"/v2/{st.repo}/manifests/{st.tag}",
            headers={"Content-Type": MT},
            body=st.d.manifests[0].content,
        )
        assert is_2xx(resp), resp

    def test_setup_05_populate_registry_with_test_manifest_digest(self, st):
        """Pull / Setup / Populate registry with test manifest (manifests[1] by digest)"""
        m = st.d.manifests[1]
        resp = st.oci.request(
            "PUT", f"/v2/{st.repo}/manifests/{m.digest}", headers={"Content-Type": MT}, body=m.content
        )
        assert is_2xx(resp), resp

    if READ_ONLY_PULL:  # RunOnlyIfNot(runPullSetup): only generated for a read-only run

        def test_setup_06_get_tag_name_from_environment(self, st):
            """Pull / Setup / Get tag name from environment"""
            pytest.skip(
                "RunOnlyIfNot(runPullSetup): read-only runs with OCI_TAG_NAME are not supported; "
                "this port pushes its own data"
            )

    # ---- Pull blobs
    def test_blobs_01_head_nonexistent_blob_404(self, st):
        """HEAD request to nonexistent blob should result in 404 response"""
        resp = st.oci.request("HEAD", f"/v2/{st.repo}/blobs/{DUMMY_DIGEST}")
        assert resp.status == 404, resp

    def test_blobs_02_head_existing_blob_200(self, st):
        """HEAD request to existing blob should yield 200"""
        resp = st.oci.request("HEAD", f"/v2/{st.repo}/blobs/{st.d.configs[0].digest}")
        assert resp.status == 200, resp
        if h := resp.headers.get("Docker-Content-Digest"):
            assert h == st.d.configs[0].digest

    def test_blobs_03_get_nonexistent_blob_404(self, st):
        """GET nonexistent blob should result in 404 response"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/blobs/{DUMMY_DIGEST}")
        assert resp.status == 404, resp

    def test_blobs_04_get_existing_blob_200(self, st):
        """GET request to existing blob URL should yield 200"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/blobs/{st.d.configs[0].digest}")
        assert resp.status == 200, resp

    # ---- Pull manifests
    def test_manifests_01_head_nonexistent_manifest_404(self, st):
        """HEAD request to nonexistent manifest should return 404"""
        resp = st.oci.request("HEAD", f"/v2/{st.repo}/manifests/{NONEXISTENT_MANIFEST}")
        assert resp.status == 404, resp

    def test_manifests_02_head_manifest0_digest_200(self, st):
        """HEAD request to manifest[0] path (digest) should yield 200 response"""
        m = st.d.manifests[0]
        resp = st.oci.request("HEAD", f"/v2/{st.repo}/manifests/{m.digest}", headers=ACCEPT)
        assert resp.status == 200, resp
        if h := resp.headers.get("Docker-Content-Digest"):
            assert h == m.digest

    def test_manifests_03_head_manifest1_digest_200(self, st):
        """HEAD request to manifest[1] path (digest) should yield 200 response"""
        m = st.d.manifests[1]
        resp = st.oci.request("HEAD", f"/v2/{st.repo}/manifests/{m.digest}", headers=ACCEPT)
        assert resp.status == 200, resp
        if h := resp.headers.get("Docker-Content-Digest"):
            assert h == m.digest

    def test_manifests_04_head_manifest_tag_200(self, st):
        """HEAD request to manifest path (tag) should yield 200 response"""
        assert st.tag, "tag not set by setup"
        resp = st.oci.request("HEAD", f"/v2/{st.repo}/manifests/{st.tag}", headers=ACCEPT)
        assert resp.status == 200, resp
        if h := resp.headers.get("Docker-Content-Digest"):
            assert h == st.d.manifests[0].digest

    def test_manifests_05_get_nonexistent_manifest_404(self, st):
        """GET nonexistent manifest should return 404"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/manifests/{NONEXISTENT_MANIFEST}")
        assert resp.status == 404, resp

    def test_manifests_06_get_manifest0_digest_200(self, st):
        """GET request to manifest[0] path (digest) should yield 200 response"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/manifests/{st.d.manifests[0].digest}", headers=ACCEPT)
        assert resp.status == 200, resp

    def test_manifests_07_get_manifest1_digest_200(self, st):
        """GET request to manifest[1] path (digest) should yield 200 response"""
        resp = st.oci.request("GET", f"/v2/{st.repo}/manifests/{st.d.manifests[1].digest}", headers=ACCEPT)
        assert resp.status == 200, resp

    def test_manifests_08_get_manifest_tag_200(self, st):
        """GET request to manifest path (tag) should yield 200 response"""
        assert st.tag, "tag not set by setup"
        resp = st.oci.request("GET", f"/v2/{st.repo}/manifests/{st.tag}", headers=ACCEPT)
        assert resp.status == 200, resp

    # ---- Error codes
    def test_errors_01_400_body_oci_conforming_json(self, st):
        """400 response body should contain OCI-conforming JSON message

        GET /v2/<name>/manifests/sha256:totallywrong (with a junk body): 400 or 404; on 400 the
        first error code must be one of the spec's codes."""
        resp = st.oci.request(
            "GET",
            f"/v2/{st.repo}/manifests/sha256:totallywrong",
            headers={"Content-Type": MT},
            body=INVALID_MANIFEST_CONTENT,
        )
        assert resp.status in (400, 404), resp
        if resp.status == 400:
            codes = resp.error_codes()
            assert codes, f"no OCI error body: {resp!r}"
            assert codes[0] in ERROR_CODES, resp

    # ---- Teardown (deleteManifestBeforeBlobs defaults to true)
    def test_teardown_01_delete_manifest0(self, st):
        """Delete manifest[0] created in setup"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/manifests/{st.d.manifests[0].digest}")
        assert is_2xx(resp) or resp.status == 405, resp

    def test_teardown_02_delete_manifest1(self, st):
        """Delete manifest[1] created in setup"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/manifests/{st.d.manifests[1].digest}")
        assert is_2xx(resp) or resp.status == 405, resp

    def test_teardown_03_delete_config0_blob(self, st):
        """Delete config[0] blob created in setup"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/blobs/{st.d.configs[0].digest}")
        assert is_2xx(resp) or resp.status in (404, 405), resp

    def test_teardown_04_delete_config1_blob(self, st):
        """Delete config[1] blob created in setup"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/blobs/{st.d.configs[1].digest}")
        assert is_2xx(resp) or resp.status in (404, 405), resp

    def test_teardown_05_delete_layer_blob(self, st):
        """Delete layer blob created in setup"""
        resp = st.oci.request("DELETE", f"/v2/{st.repo}/blobs/{st.d.layer.digest}")
        assert is_2xx(resp) or resp.status in (404, 405), resp
