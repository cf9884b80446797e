"""Shared data and HTTP steps, ported from the Go conformance suite.

``api.go`` of the newer suite is mirrored by the ``blob_*``/``manifest_*``/``referrers_list``/
``tag_list`` functions below: each raises ``AssertionError`` on a failed expectation and
:class:`Unsupported` where the Go code returns ``errRegUnsupported`` (the Go runner reports those
as "skip", not "fail").  :class:`Check` aggregates several steps the way the Go runner joins
errors, so one pytest test can report every problem of a data set phase at once.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import secrets
import tarfile
from urllib.parse import urlsplit

import pytest

# --------------------------------------------------------------------------- media types
MT_EXAMPLE_CONF1 = "application/vnd.example.oci.conformance.v1"
MT_EXAMPLE_CONF2 = "application/vnd.example.oci.conformance.v2"
MT_OCTET = "application/octet-stream"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_IMAGE = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_PRE = "application/vnd.oci.image.layer.v1."
MT_OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MT_OCI_LAYER_ND_GZ = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MT_OCI_EMPTY_JSON = "application/vnd.oci.empty.v1+json"

CHUNK_MIN = 1024  # config.go: chunkMin

ERROR_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
}

# --------------------------------------------------------------------------- configuration
# CONFORMANCE_PROFILE mirrors the Go config "version": "dev" (default here, = Go "1.1+dev")
# also tests upload cancel, requires Docker-Content-Digest on blob/manifest responses and tests
# the ?tag= parameter on manifest PUT; "1.1" (= Go default "stable") does not.
PROFILE = os.environ.get("CONFORMANCE_PROFILE", "dev")
DEV = PROFILE in ("dev", "1.1+dev")
REQUIRE_DIGEST_HEADER = DEV
UPLOAD_CANCEL = DEV
TAG_PARAM = DEV
STRICT = os.environ.get("CONFORMANCE_STRICT", "") not in ("", "0", "false")
SPARSE = os.environ.get("CONFORMANCE_SPARSE", "") not in ("", "0", "false")
# CONFORMANCE_URL set: the target is a foreign registry; unset: the target is Berth itself.
FOREIGN = bool(os.environ.get("CONFORMANCE_URL"))


class Unsupported(Exception):
    """The registry answered in a way the Go suite classifies as an unsupported (optional) API."""


def unsupported_outcome(msg: str):
    """The Go suite's soft result.  Berth implements every API the suite tests, so against Berth
    it is a failure; a foreign registry (CONFORMANCE_URL) gets a skip unless CONFORMANCE_STRICT=1."""
    if not FOREIGN:
        pytest.fail("UNSUPPORTED (Berth must support this): " + msg)
    if STRICT:
        pytest.fail("UNSUPPORTED (strict mode): " + msg)
    pytest.skip("UNSUPPORTED: " + msg)


class Check:
    """Collects failures of several steps (Go: errors.Join) and reports them at the end."""

    def __init__(self):
        self.failures: list[str] = []
        self.unsupported: list[str] = []

    def step(self, name, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Unsupported as e:
            self.unsupported.append(f"{name}: {e}")
        except AssertionError as e:
            self.failures.append(f"{name}: {e}")
        return None

    def finish(self):
        if self.failures:
            extra = ("\nalso unsupported:\n" + "\n".join(self.unsupported)) if self.unsupported else ""
            pytest.fail("\n".join(self.failures) + extra, pytrace=False)
        if self.unsupported:
            unsupported_outcome("\n".join(self.unsupported))


# --------------------------------------------------------------------------- small helpers
def digest_of(data: bytes, algo: str = "sha256") -> str:
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def algo_of(dig: str) -> str:
    return dig.split(":", 1)[0]


def rand_text() -> str:
    """Go 1.24 crypto/rand.Text(): 26 base32 characters."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=")[:26]


def go_json(obj) -> bytes:
    """json.Marshal: compact, no spaces."""
    return json.dumps(obj, separators=(",", ":")).encode()


def go_json_indent(obj) -> bytes:
    """json.MarshalIndent(v, "", "\\t")."""
    return json.dumps(obj, indent="\t").encode()


def rel(location: str) -> str:
    """reggie's GetRelativeLocation(): path and query of a (possibly absolute) Location."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def expect_status(resp, *codes):
    assert resp.status in codes, (
        f"unexpected status code, expected one of {list(codes)}, received {resp.status}: {resp!r}"
    )


def header_values(resp, key) -> list[str]:
    raw = resp.headers.get(key)
    if raw is None:
        return []
    return [raw] + [v.strip() for v in raw.split(",")]


def expect_header(resp, key, val=""):
    """apiExpectHeader: present (val == "") or one of the values equals val."""
    values = header_values(resp, key)
    if val == "":
        assert values, f"missing header {key!r}: {resp!r}"
    else:
        assert val in values, (
            f"header value mismatch for {key!r}, expected {val!r}, received {resp.headers.get(key)!r}"
        )


def expect_body(resp, body: bytes):
    assert resp.body == body, (
        f"body contents mismatch, expected {len(body)} bytes {body[:80]!r}, received {len(resp.body)} bytes {resp.body[:80]!r}"
    )


def verify_digest(resp, dig: str, require: bool = REQUIRE_DIGEST_HEADER):
    """api.VerifyDigest."""
    h = resp.headers.get("Docker-Content-Digest", "")
    if not h and require:
        raise AssertionError(f"registry did not return a Docker-Content-Digest header: {resp!r}")
    if h and dig and h != dig:
        raise AssertionError(f"Docker-Content-Digest header value expected {dig!r}, received {h!r}")


def detect_media_type(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return MT_OCI_IMAGE
    mt = doc.get("mediaType") if isinstance(doc, dict) else None
    return mt or MT_OCI_IMAGE


def detect_subject(body: bytes):
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("subject") if isinstance(doc, dict) else None


MANIFEST_ACCEPT = {"Accept": f"{MT_OCI_INDEX}, {MT_OCI_IMAGE}"}


# --------------------------------------------------------------------------- test data (testdata.go)
class TestData:
    __test__ = False  # not a pytest class

    def __init__(self, name: str):
        self.name = name
        self.tags: dict[str, str] = {}
        self.tag_pushed: set[str] = set()
        self.desc: dict[str, dict] = {}
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.man_order: list[str] = []
        self.referrers: dict[str, list[dict]] = {}
        self.pull_opts: dict[str, set] = {}
        self.push_opts: dict[str, set] = {}

    # options (genOptS) are plain keyword arguments here
    def add_blob(self, b: bytes, algo="sha256", descriptor_media_type=MT_OCTET, set_data=False, **_):
        dig = digest_of(b, algo)
        self.blobs[dig] = b
        self.desc[dig] = {"mediaType": descriptor_media_type, "digest": dig, "size": len(b)}
        if set_data:
            self.desc[dig]["data"] = base64.b64encode(b).decode()
        return dig

    def gen_blob(self, blob_size=2048, **opts):
        b = secrets.token_bytes(blob_size)
        return self.add_blob(b, **opts), b

    def gen_layer(self, file_num: int, comp="gzip", algo="sha256", set_data=False, **_):
        content = (
            f"Conformance test file contents for file number {file_num}.\n"
            f"Todays lucky number is {secrets.randbelow(2**63)}\n"
        ).encode()
        tbuf = io.BytesIO()
        with tarfile.open(fileobj=tbuf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            info = tarfile.TarInfo(f"./conformance-{file_num}.txt")
            info.size = len(content)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(content))
        uncomp = tbuf.getvalue()
        if comp == "gzip":
            body, mt = gzip.compress(uncomp, mtime=0), MT_OCI_LAYER_GZ
        else:
            body, mt = uncomp, MT_OCI_LAYER
        dig_c, dig_uc = digest_of(body, algo), digest_of(uncomp, algo)
        self.blobs[dig_c] = body
        self.desc[dig_c] = {"mediaType": mt, "digest": dig_c, "size": len(body)}
        if set_data:
            self.desc[dig_c]["data"] = base64.b64encode(body).decode()
        return dig_c, dig_uc, body

    def gen_config(
        self,
        platform: dict,
        layers: list[str],
        algo="sha256",
        config_media_type=MT_OCI_CONFIG,
        extra_field=False,
        set_data=False,
        **_,
    ):
        cfg = {
            "author": "OCI Conformance Test",
            **platform,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": layers},
        }
        if extra_field:
            cfg[f"org.{rand_text()}"] = rand_text()
        body = go_json(cfg)
        dig = digest_of(body, algo)
        self.blobs[dig] = body
        self.desc[dig] = {"mediaType": config_media_type, "digest": dig, "size": len(body)}
        if set_data:
            self.desc[dig]["data"] = base64.b64encode(body).decode()
        return dig, body

    def gen_manifest(
        self,
        conf: dict,
        layers: list[dict],
        algo="sha256",
        artifact_type="",
        subject=None,
        annotations=None,
        annotation_uniq=False,
        extra_field=False,
        set_data=False,
        tag="",
        **_,
    ):
        m = {"schemaVersion": 2, "mediaType": MT_OCI_IMAGE}
        if artifact_type:
            m["artifactType"] = artifact_type
        m["config"] = conf
        m["layers"] = layers
        return self._add_manifest(
            m, MT_OCI_IMAGE, artifact_type or conf["mediaType"], algo, subject, annotations,
            annotation_uniq, extra_field, set_data, tag,
        )  # fmt: skip

    def _add_manifest(
        self,
        doc,
        media_type,
        ref_artifact_type,
        algo,
        subject,
        annotations,
        annotation_uniq,
        extra_field,
        set_data,
        tag,
    ):
        """The part image manifests and indexes share: subject, annotations, an extra field,
        then storing it, its descriptor, its referrer entry and its tag."""
        if subject:
            doc["subject"] = subject
        ann = dict(annotations) if annotations else None
        if annotation_uniq:
            ann = ann or {}
            ann["org.example." + rand_text()] = rand_text()
        if ann:
            doc["annotations"] = ann
        if extra_field:
            doc[f"org.{rand_text()}"] = rand_text()
        body = go_json(doc)
        dig = digest_of(body, algo)
        self.manifests[dig] = body
        self.man_order.append(dig)
        self.desc[dig] = {"mediaType": media_type, "digest": dig, "size": len(body)}
        if set_data:
            self.desc[dig]["data"] = base64.b64encode(body).decode()
        if subject:
            ref = {
                "mediaType": media_type,
                "artifactType": ref_artifact_type,
                "digest": dig,
                "size": len(body),
            }
            if ann:
                ref["annotations"] = ann
            self.referrers.setdefault(subject["digest"], []).append(ref)
        if tag:
            self.tags[tag] = dig
        return dig, body

    def gen_manifest_full(
        self,
        layer_count=2,
        platform=None,
        layer_media_type="",
        layer_bytes=None,
        config_media_type="",
        config_bytes=None,
        **opts,
    ):
        platform = platform or {"architecture": "amd64", "os": "linux"}
        dig_c_list, dig_uc_list = [], []
        for i in range(layer_count):
            if not layer_media_type or layer_media_type.startswith(MT_OCI_LAYER_PRE):
                c, uc, _ = self.gen_layer(i, **opts)
            elif layer_bytes is not None:
                c = uc = self.add_blob(layer_bytes, descriptor_media_type=layer_media_type, **opts)
            else:
                c, _ = self.gen_blob(descriptor_media_type=layer_media_type, **opts)
                uc = c
            dig_c_list.append(c)
            dig_uc_list.append(uc)
        if not config_media_type or config_media_type == MT_OCI_CONFIG:
            c_dig, _ = self.gen_config(platform, dig_uc_list, **opts)
        else:
            c_dig = self.add_blob(config_bytes or b"", descriptor_media_type=config_media_type, **opts)
        layers = [dict(self.desc[d]) for d in dig_c_list]
        dig, _ = self.gen_manifest(dict(self.desc[c_dig]), layers, **opts)
        return dig

    def gen_index(
        self,
        platforms: list,
        manifests: list[str],
        algo="sha256",
        artifact_type="",
        subject=None,
        annotations=None,
        annotation_uniq=False,
        extra_field=False,
        set_data=False,
        tag="",
        **_,
    ):
        assert len(platforms) == len(manifests)
        ind = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX}
        if artifact_type:
            ind["artifactType"] = artifact_type
        descs = []
        for p, m in zip(platforms, manifests, strict=True):
            d = dict(self.desc[m])
            if p is not None:
                d["platform"] = p
            descs.append(d)
        ind["manifests"] = descs
        return self._add_manifest(
            ind,
            MT_OCI_INDEX,
            artifact_type,
            algo,
            subject,
            annotations,
            annotation_uniq,
            extra_field,
            set_data,
            tag,
        )

    def gen_index_full(self, platforms=None, **opts):
        if platforms is None:
            platforms = [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
        digs = [self.gen_manifest_full(platform=p, **opts) for p in platforms]
        dig, _ = self.gen_index(platforms, digs, **opts)
        return dig


# --------------------------------------------------------------------------- api.go
def blob_url(repo, dig):
    return f"/v2/{repo}/blobs/{dig}"


def blob_delete(c, repo, dig):
    resp = c.request("DELETE", blob_url(repo, dig))
    expect_status(resp, 202, 404, 405)
    if resp.status == 405:
        raise Unsupported(f"blob delete: registry returned status {resp.status}")
    return resp


def blob_head_req(c, repo, dig):
    return c.request("HEAD", blob_url(repo, dig))


def blob_get_exists_full(c, repo, dig, td, require_digest=REQUIRE_DIGEST_HEADER):
    resp = c.request("GET", blob_url(repo, dig))
    expect_status(resp, 200)
    val = td.blobs.get(dig) if td else None
    if val is not None and (len(val) > 0 or dig == digest_of(b"")):
        expect_body(resp, val)
        expect_header(resp, "Content-Length", str(len(val)))
    verify_digest(resp, dig, require_digest)
    return resp


def blob_head_exists(c, repo, dig, td, require_digest=REQUIRE_DIGEST_HEADER):
    resp = blob_head_req(c, repo, dig)
    expect_status(resp, 200)
    expect_body(resp, b"")
    val = td.blobs.get(dig) if td else None
    if val is not None and (len(val) > 0 or dig == digest_of(b"")):
        expect_header(resp, "Content-Length", str(len(val)))
    verify_digest(resp, dig, require_digest)
    return resp


def blob_verify_location(c, loc, body):
    assert loc, "location header missing"
    resp = c.request("GET", loc)
    expect_status(resp, 200)
    expect_body(resp, body)


def blob_mount(c, repo, source, dig, td):
    body = td.blobs[dig]
    params = {"mount": dig}
    if source:
        params["from"] = source
    resp = c.request("POST", f"/v2/{repo}/blobs/uploads/", params=params)
    expect_status(resp, 201, 202)
    loc = resp.headers.get("Location", "")
    assert loc, f"blob post did not return a location: {resp!r}"
    fell_back = False
    if resp.status == 202:
        resp = c.request(
            "PUT",
            loc,
            params={"digest": dig},
            headers={"Content-Type": MT_OCTET, "Content-Length": str(len(body))},
            body=body,
        )
        expect_status(resp, 201)
        loc = resp.headers.get("Location", loc)
        fell_back = True
    verify_digest(resp, dig)
    blob_verify_location(c, loc, body)
    if fell_back:
        raise Unsupported("registry returned status 202, fell back to blob POST+PUT")
    return resp


def blob_post_put(c, repo, dig, td, expect_bad_digest=False):
    body = td.blobs[dig]
    resp = c.request("POST", f"/v2/{repo}/blobs/uploads/")
    expect_status(resp, 202)
    loc = resp.headers.get("Location", "")
    assert loc, f"blob post did not return a location: {resp!r}"
    resp = c.request(
        "PUT",
        loc,
        params={"digest": dig},
        headers={"Content-Type": MT_OCTET, "Content-Length": str(len(body))},
        body=body,
    )
    if expect_bad_digest:
        expect_status(resp, 400)
        return resp
    expect_status(resp, 201)
    verify_digest(resp, dig)
    blob_verify_location(c, resp.headers.get("Location", ""), body)
    return resp


def blob_post_only(c, repo, dig, td, expect_bad_digest=False):
    body = td.blobs[dig]
    resp = c.request(
        "POST",
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": dig},
        headers={"Content-Type": MT_OCTET, "Content-Length": str(len(body))},
        body=body,
    )
    if expect_bad_digest:
        expect_status(resp, 400, 202)
    else:
        expect_status(resp, 201, 202)
        expect_header(resp, "Location")
    loc = resp.headers.get("Location", "")
    if resp.status == 202:
        resp = c.request(
            "PUT",
            loc,
            params={"digest": dig},
            headers={"Content-Type": MT_OCTET, "Content-Length": str(len(body))},
            body=body,
        )
        expect_status(resp, 400 if expect_bad_digest else 201)
        raise Unsupported("registry does not support content in the POST, fallback to PUT")
    if expect_bad_digest:
        return resp
    verify_digest(resp, dig)
    blob_verify_location(c, loc, body)
    return resp


def blob_post_cancel(c, repo):
    resp = c.request("POST", f"/v2/{repo}/blobs/uploads/")
    expect_status(resp, 202)
    loc = resp.headers.get("Location", "")
    assert loc, "blob post did not return a location"
    resp = c.request("DELETE", loc, headers={"Content-Length": "0"})
    expect_status(resp, 204)
    return resp


def blob_patch_stream(c, repo, dig, td, expect_bad_digest=False):
    """POST, one PATCH without Content-Length (chunked transfer encoding), PUT ?digest= with no body."""
    body = td.blobs[dig]
    resp = c.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    expect_status(resp, 202)
    loc = resp.headers.get("Location", "")
    assert loc, "blob post did not return a location"
    resp = c.request(
        "PATCH",
        loc,
        headers={"Content-Type": MT_OCTET},
        body=iter([body[: len(body) // 2], body[len(body) // 2 :]]),
    )
    expect_status(resp, 202)
    loc = resp.headers.get("Location", "")
    assert loc, "blob patch did not return a location"
    resp = c.request(
        "PUT", loc, params={"digest": dig}, headers={"Content-Type": MT_OCTET, "Content-Length": "0"}
    )
    if expect_bad_digest:
        expect_status(resp, 400)
        return resp
    expect_status(resp, 201)
    expect_header(resp, "Location")
    verify_digest(resp, dig)
    blob_verify_location(c, resp.headers.get("Location", ""), body)
    return resp


def blob_patch_chunked(c, repo, dig, td, put_last_chunk=False, out_of_order=False, expect_bad_digest=False):
    """api.BlobPatchChunked, including its out-of-order (416) and PUT-with-last-chunk variants."""
    body = td.blobs[dig]
    resp = c.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    expect_status(resp, 202)
    min_str = resp.headers.get("OCI-Chunk-Min-Length", "")
    loc = resp.headers.get("Location", "")
    chunk_size = len(body) // 3 + 1
    if min_str:
        chunk_size = max(chunk_size, int(min_str))
    chunk_size = max(chunk_size, CHUNK_MIN)
    chunk_size = min(chunk_size, len(body))
    last_byte = -1
    url = loc
    while last_byte < len(body) - 1:
        if out_of_order:
            assert loc, "blob request did not return a location"
            url = loc
            bad_start = last_byte + 1 + chunk_size
            if bad_start >= len(body):
                bad_start = 0
            bad_last = min(bad_start + chunk_size - 1, len(body) - 1)
            method, params = "PATCH", None
            if put_last_chunk and bad_last == len(body) - 1:
                method, params = "PUT", {"digest": dig}
            resp = c.request(
                method,
                url,
                params=params,
                headers={
                    "Content-Type": MT_OCTET,
                    "Content-Length": str(bad_last - bad_start + 1),
                    "Content-Range": f"{bad_start}-{bad_last}",
                },
                body=body[bad_start : bad_last + 1],
            )
            assert resp.status == 416, (
                f"blob out of order chunk {bad_start}-{bad_last}: expected 416, received {resp!r}"
            )
            loc = resp.headers.get("Location") or loc
            # recover with a GET request to find the new location/range
            resp = c.request("GET", url, params=params)
            assert resp.status == 204, f"blob chunked upload get request: expected 204, received {resp!r}"
            loc = resp.headers.get("Location") or loc
            range_header = resp.headers.get("Range", "")
            assert range_header.startswith("0-"), (
                f"content-range header is missing the 0- prefix: {range_header!r}"
            )
            try:
                range_last = int(range_header[2:])
            except ValueError:
                raise AssertionError(f"content-range header could not be parsed: {range_header!r}") from None
            if last_byte >= 0:
                assert range_last == last_byte, (
                    f"content-range unexpected, received {range_header!r}, expected '0-{last_byte}'"
                )
        assert loc, "blob request did not return a location"
        url = loc
        start = last_byte + 1
        last_byte = min(start + chunk_size - 1, len(body) - 1)
        hdrs = {
            "Content-Type": MT_OCTET,
            "Content-Length": str(last_byte - start + 1),
            "Content-Range": f"{start}-{last_byte}",
        }
        if put_last_chunk and last_byte == len(body) - 1:
            resp = c.request(
                "PUT", url, params={"digest": dig}, headers=hdrs, body=body[start : last_byte + 1]
            )
            if expect_bad_digest:
                expect_status(resp, 400)
            else:
                expect_status(resp, 201)
                loc = resp.headers.get("Location") or loc
        else:
            resp = c.request("PATCH", url, headers=hdrs, body=body[start : last_byte + 1])
            expect_status(resp, 202)
            loc = resp.headers.get("Location") or loc
    if not put_last_chunk:
        assert loc, "blob patch did not return a location"
        resp = c.request(
            "PUT", loc, params={"digest": dig}, headers={"Content-Type": MT_OCTET, "Content-Length": "0"}
        )
        if expect_bad_digest:
            expect_status(resp, 400)
        else:
            expect_status(resp, 201)
            loc = resp.headers.get("Location") or loc
    if expect_bad_digest:
        return resp
    verify_digest(resp, dig)
    blob_verify_location(c, resp.headers.get("Location", ""), body)
    return resp


def manifest_url(repo, ref):
    return f"/v2/{repo}/manifests/{ref}"


def manifest_delete(c, repo, ref):
    resp = c.request("DELETE", manifest_url(repo, ref))
    expect_status(resp, 202, 404, 400, 405)
    if resp.status in (400, 405):
        raise Unsupported(f"manifest delete of {ref}: registry returned status {resp.status}")
    return resp


def manifest_get_req(c, repo, ref):
    return c.request("GET", manifest_url(repo, ref), headers=MANIFEST_ACCEPT)


def manifest_head_req(c, repo, ref):
    return c.request("HEAD", manifest_url(repo, ref), headers=MANIFEST_ACCEPT)


def manifest_get_exists(c, repo, ref, dig, td, require_digest=REQUIRE_DIGEST_HEADER):
    resp = manifest_get_req(c, repo, ref)
    expect_status(resp, 200)
    val = td.manifests.get(dig) if td else None
    if val:
        expect_body(resp, val)
        expect_header(resp, "Content-Type", detect_media_type(val))
        expect_header(resp, "Content-Length", str(len(val)))
    verify_digest(resp, dig, require_digest)
    return resp


def manifest_head_exists(c, repo, ref, dig, td, require_digest=REQUIRE_DIGEST_HEADER):
    resp = manifest_head_req(c, repo, ref)
    expect_status(resp, 200)
    expect_body(resp, b"")
    val = td.manifests.get(dig) if td else None
    if val:
        expect_header(resp, "Content-Type", detect_media_type(val))
        expect_header(resp, "Content-Length", str(len(val)))
    verify_digest(resp, dig, require_digest)
    return resp


def manifest_put(c, repo, ref, dig, td, referrers=True, params=None, expect_bad_digest=False, chunked=True):
    """api.ManifestPut.  The Go client sets a body without a length, so the manifest travels with
    ``Transfer-Encoding: chunked``; ``chunked=True`` reproduces that."""
    body = td.manifests[dig]
    mt = detect_media_type(body)
    send = iter([body]) if chunked else body
    resp = c.request("PUT", manifest_url(repo, ref), params=params, headers={"Content-Type": mt}, body=send)
    if expect_bad_digest:
        expect_status(resp, 400)
        return resp
    errs = []
    try:
        expect_status(resp, 201)
    except AssertionError as e:
        raise AssertionError(f"manifest put failed: {e}") from None
    if referrers:
        subj = detect_subject(body)
        if subj:
            try:
                expect_header(resp, "OCI-Subject", subj["digest"])
            except AssertionError as e:
                errs.append(str(e))
    h = resp.headers.get("Docker-Content-Digest", "")
    if h and h != dig:
        errs.append(f"Docker-Content-Digest header value expected {dig!r}, received {h!r}")
    loc = resp.headers.get("Location", "")
    if not loc:
        errs.append("manifest put did not return a location")
    else:
        got = c.request("GET", loc, headers=MANIFEST_ACCEPT)
        try:
            expect_status(got, 200)
            expect_header(got, "Content-Type", mt)
            expect_header(got, "Content-Length", str(len(body)))
            expect_body(got, body)
        except AssertionError as e:
            errs.append(f"failed to verify returned location {loc}: {e}")
    if errs:
        raise AssertionError("; ".join(errs))
    return resp


def referrers_list(c, repo, dig, params=None):
    resp = c.request("GET", f"/v2/{repo}/referrers/{dig}", params=params)
    expect_status(resp, 200)
    expect_header(resp, "Content-Type", MT_OCI_INDEX)
    idx = resp.json()
    assert idx.get("mediaType") == MT_OCI_INDEX and idx.get("schemaVersion") == 2, (
        f"referrers response is not a valid OCI index (media type and schema version): {idx!r}"
    )
    return idx, resp


def tag_list(c, repo, params=None):
    """200 with a tag list, or 404 (accepted by the Go suite for an unknown repository)."""
    resp = c.request("GET", f"/v2/{repo}/tags/list", params=params)
    expect_status(resp, 200, 404)
    if resp.status == 404:
        return []
    return resp.json().get("tags") or []


def ref_matches(entry: dict, goal: dict) -> bool:
    ann = entry.get("annotations") or {}
    return (
        entry.get("digest") == goal["digest"]
        and entry.get("mediaType") == goal["mediaType"]
        and entry.get("size") == goal["size"]
        and (entry.get("artifactType") or "") == (goal.get("artifactType") or "")
        and all(ann.get(k) == v for k, v in (goal.get("annotations") or {}).items())
    )
