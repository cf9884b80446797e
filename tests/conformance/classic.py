"""Test data of the classic Ginkgo suite (conformance/setup.go), rebuilt per test class."""

from __future__ import annotations

import base64
import os
import secrets
import string

from .helpers import digest_of, go_json_indent

# layerBase64String: a tarball of test.txt ("you bothered to find out what was in here. Congratulations!")
LAYER_BASE64 = (
    "H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSjVy0"
    "WZCa1c/MufWVe94N3RWlrZ72x3k/30nhbFWKWLPU0Dhp6keJ8im//PuU/6pZH2WVtYx8b0Sz7LjWSR5VLG6YRBumSzOlGtjkd+qD"
    "jMWiX07Befbs7AAAAAAAAAAAAAAAAAPyzO34MnqoAKAAA"
)
TEST_TAG_NAME = "tagtest0"
EMPTY_LAYER_TEST_TAG = "emptylayer"
NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"
INVALID_MANIFEST_CONTENT = b"blablabla"
DUMMY_DIGEST = digest_of(b"hello world")
ANNOTATION_KEY = "org.opencontainers.conformance.test"
REF_ARTIFACT_TYPE_A = "application/vnd.nhl.peanut.butter.bagel"
REF_ARTIFACT_TYPE_B = "application/vnd.nba.strawberry.jam.croissant"
REF_ARTIFACT_TYPE_INDEX = "application/vnd.food.stand"
HELLO_B64 = base64.b64encode(b"hello world").decode()


def _random_author(n=16):
    letters = string.digits + string.ascii_uppercase + string.ascii_lowercase + "-"
    return "".join(secrets.choice(letters) for _ in range(n))


class Blob:
    def __init__(self, content: bytes):
        self.content = content
        self.length = str(len(content))
        self.digest = digest_of(content)


def _desc(media_type, blob_or_bytes, data=None, unspecified=None):
    content = blob_or_bytes.content if isinstance(blob_or_bytes, Blob) else blob_or_bytes
    d = {"mediaType": media_type, "digest": digest_of(content), "size": len(content)}
    if data is not None:
        d["data"] = base64.b64encode(data).decode()
    d["newUnspecifiedField"] = unspecified  # no omitempty in image.go: null when unset
    return d


class ClassicData:
    """configs[0..4], manifests[0..4], layer, blobs A/B (chunked), referrer artifacts."""

    def __init__(self):
        self.configs = []
        for _ in range(5):
            cfg = {
                "author": _random_author(),
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            }
            self.configs.append(Blob(go_json_indent(cfg)))
        self.layer = Blob(base64.b64decode(LAYER_BASE64))
        layers = [_desc("application/vnd.oci.image.layer.v1.tar+gzip", self.layer)]
        self.manifests = []
        for i in range(5):
            m = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": _desc(
                    "application/vnd.oci.image.config.v1+json",
                    self.configs[i],
                    data=self.configs[i].content,
                    unspecified=HELLO_B64,
                ),
                "layers": layers,
            }
            self.manifests.append(Blob(go_json_indent(m)))
        # used in push test: no mediaType field (omitempty), no layers
        empty_layer = {
            "schemaVersion": 2,
            "config": _desc(
                "application/vnd.oci.image.config.v1+json",
                self.configs[1],
                data=self.configs[1].content,
                unspecified=HELLO_B64,
            ),
            "layers": [],
        }
        self.empty_layer_manifest = Blob(go_json_indent(empty_layer))

        self.blob_a = Blob(os.urandom(42))
        self.set_chunked_blob(42)

        # referrers test (artifacts with subject)
        self.empty_json = Blob(b"{}")
        empty_desc = _desc("application/vnd.oci.empty.v1+json", self.empty_json)
        assert (
            empty_desc["digest"] == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        )
        self.ref_blob_a = Blob(b"NHL Peanut Butter on my NHL bagel")
        self.ref_blob_b = Blob(b"NBA Strawberry Jam on my NBA croissant")
        subj4 = _desc("application/vnd.oci.image.manifest.v1+json", self.manifests[4])
        subj3 = _desc("application/vnd.oci.image.manifest.v1+json", self.manifests[3])
        self.annotation_values = {}

        def manifest(artifact_type, config, subject, layer_list, annotation):
            m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
            if artifact_type:
                m["artifactType"] = artifact_type
            m["config"] = config
            m["layers"] = layer_list
            m["subject"] = subject
            if annotation:
                m["annotations"] = {ANNOTATION_KEY: annotation}
            b = Blob(go_json_indent(m))
            if annotation:
                self.annotation_values[b.digest] = annotation
            return b

        self.refs_a_config = manifest(
            "", _desc(REF_ARTIFACT_TYPE_A, self.ref_blob_a), subj4, [empty_desc], "test config a"
        )
        self.refs_b_config = manifest(
            "", _desc(REF_ARTIFACT_TYPE_B, self.ref_blob_b), subj4, [empty_desc], "test config b"
        )
        self.refs_a_layer = manifest(
            REF_ARTIFACT_TYPE_A,
            empty_desc,
            subj4,
            [_desc(REF_ARTIFACT_TYPE_A, self.ref_blob_a)],
            "test layer a",
        )
        self.refs_b_layer = manifest(
            REF_ARTIFACT_TYPE_B,
            empty_desc,
            subj4,
            [_desc(REF_ARTIFACT_TYPE_B, self.ref_blob_b)],
            "test layer b",
        )
        # same as B but its subject (manifests[3]) is never pushed
        self.refs_c_layer = manifest(
            REF_ARTIFACT_TYPE_B, empty_desc, subj3, [_desc(REF_ARTIFACT_TYPE_B, self.ref_blob_b)], None
        )
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "artifactType": REF_ARTIFACT_TYPE_INDEX,
            "manifests": [
                _desc("application/vnd.oci.image.manifest.v1+json", self.refs_a_config),
                _desc("application/vnd.oci.image.manifest.v1+json", self.refs_a_layer),
            ],
            "subject": subj4,
            "annotations": {ANNOTATION_KEY: "test index"},
        }
        self.refs_index = Blob(go_json_indent(index))
        self.annotation_values[self.refs_index.digest] = "test index"

    def set_chunked_blob(self, size: int):
        """setupChunkedBlob: chunk1 = blob[:size/2+1], chunk2 = the rest; ranges are inclusive."""
        self.blob_b = Blob(os.urandom(size))
        cut = size // 2 + 1
        self.chunk1 = self.blob_b.content[:cut]
        self.chunk2 = self.blob_b.content[cut:]
        self.chunk1_range = f"0-{len(self.chunk1) - 1}"
        self.chunk2_range = f"{len(self.chunk1)}-{size - 1}"


def push_blob(oci, repo, blob):
    """Setup step of every category: POST, then PUT <Location>?digest= with the whole blob."""
    from .helpers import rel

    resp = oci.request("POST", f"/v2/{repo}/blobs/uploads/")
    return oci.request(
        "PUT",
        rel(resp.headers.get("Location", "")),
        params={"digest": blob.digest},
        headers={"Content-Type": "application/octet-stream", "Content-Length": blob.length},
        body=blob.content,
    )


def is_2xx(resp):
    return 200 <= resp.status < 300
