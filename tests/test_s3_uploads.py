"""Uploads over S3 (moto in-process): R2's equal-part rule whatever the client's chunking,
resumption by another process between requests, nothing left behind, and blobs beyond
single-request limits without a single big PUT or copy."""

from __future__ import annotations

import hashlib

import pytest
from falcon import testing

import storage.drivers.s3_writer
from app import create_app
from tests.conftest import Api, make_settings

MiB = 1024 * 1024
PART = 5 * MiB


@pytest.fixture
def s3_apis(tmp_path, make_s3_driver):
    """Two apps over one bucket, as two instances would be: requests alternate between them."""
    settings = make_settings(tmp_path / "unused")
    return [Api(testing.TestClient(create_app(settings, make_s3_driver())), tmp_path) for _ in range(2)]


def leftovers(driver) -> tuple[list[str], list[dict]]:
    client = driver.client
    objects = client.list_objects_v2(Bucket=driver.bucket, Prefix="reg/uploads/").get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=driver.bucket).get("Uploads", [])
    return [o["Key"] for o in objects], uploads


def pattern(n: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    return (block * (n // len(block) + 1))[:n]


CHUNKINGS = {
    "smaller than a part": [3 * MiB] * 4,
    "larger than a part": [7 * MiB, 7 * MiB, MiB],
    "not multiples": [PART + PART // 2] * 3,
    "one byte in the middle": [PART - 1, 1, 1, 3 * MiB],
    "empty patches": [0, 6 * MiB, 0, 2 * MiB, 0],
    "exactly parts": [PART, PART],
}


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("last_in_put", [False, True], ids=["put-empty", "last-chunk-in-put"])
def test_chunked_upload_obeys_r2_rules(s3_apis, make_s3_driver, r2_strict, chunking, last_in_put):
    sizes = CHUNKINGS[chunking]
    data = pattern(sum(sizes), seed=len(sizes))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = s3_apis[0].request("POST", "/v2/s3/chunks/blobs/uploads/")
    loc = r.headers["Location"]
    offset = 0
    patches = sizes[:-1] if last_in_put else sizes
    for i, size in enumerate(patches):
        api = s3_apis[(i + 1) % 2]  # alternate instances
        chunk = data[offset : offset + size]
        r = api.request(
            "PATCH",
            loc,
            body=chunk,
            headers={"Content-Range": f"{offset}-{offset + size - 1}"} if size else {},
        )
        assert r.status_code == 202, r.text
        offset += size
        assert r.headers["Range"] == f"0-{max(offset - 1, 0)}"
    final = data[offset:]
    headers = {"Content-Range": f"{offset}-{len(data) - 1}"} if final else {}
    r = s3_apis[len(patches) % 2].request("PUT", f"{loc}?digest={digest}", body=final, headers=headers)
    assert r.status_code == 201, r.text
    got = s3_apis[0].request("GET", f"/v2/s3/chunks/blobs/{digest}")
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == digest.split(":")[1]
    assert r2_strict.completed, "a multi-part blob went through a multipart upload"
    assert leftovers(make_s3_driver()) == ([], [])


def test_streamed_patch_then_empty_put(s3_apis, make_s3_driver, r2_strict):
    """docker: one long chunked PATCH, then an empty PUT on another instance."""
    data = pattern(23 * MiB + 17)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = s3_apis[0].request("POST", "/v2/s3/stream/blobs/uploads/").headers["Location"]
    r = s3_apis[1].request("PATCH", loc, body=data, headers={"Transfer-Encoding": "chunked"})
    assert r.status_code == 202
    assert s3_apis[0].request("PUT", f"{loc}?digest={digest}").status_code == 201
    assert s3_apis[1].request("GET", f"/v2/s3/stream/blobs/{digest}").content == data
    # Parts of the staging upload, then the ranges of the server-side copy to the blob's key.
    assert r2_strict.completed == [[PART] * 4 + [3 * MiB + 17]] * 2
    assert leftovers(make_s3_driver()) == ([], [])


def test_monolithic_uploads_write_in_place(s3_apis, make_s3_driver, r2_strict):
    """With the digest known from the first byte, the multipart upload targets the blob's key:
    one multipart upload, no copy."""
    data = pattern(12 * MiB, seed=3)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = s3_apis[0].request("POST", f"/v2/s3/mono/blobs/uploads/?digest={digest}", body=data)
    assert r.status_code == 201
    assert r2_strict.completed == [[PART, PART, 2 * MiB]]
    loc = s3_apis[0].request("POST", "/v2/s3/mono/blobs/uploads/").headers["Location"]
    data2 = pattern(11 * MiB, seed=4)
    digest2 = "sha256:" + hashlib.sha256(data2).hexdigest()
    assert s3_apis[1].request("PUT", f"{loc}?digest={digest2}", body=data2).status_code == 201
    assert len(r2_strict.completed) == 2
    assert s3_apis[0].request("GET", f"/v2/s3/mono/blobs/{digest2}").content == data2
    assert leftovers(make_s3_driver()) == ([], [])


def test_digest_mismatch_and_cancel_leave_nothing(s3_apis, make_s3_driver):
    data = pattern(13 * MiB, seed=5)
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    loc = s3_apis[0].request("POST", "/v2/s3/bad/blobs/uploads/").headers["Location"]
    s3_apis[1].request("PATCH", loc, body=data[: 7 * MiB])
    r = s3_apis[0].request("PUT", f"{loc}?digest={wrong}", body=data[7 * MiB :])
    assert r.status_code == 400
    assert s3_apis[0].request("HEAD", f"/v2/s3/bad/blobs/{wrong}").status_code == 404
    r = s3_apis[0].request("POST", f"/v2/s3/bad/blobs/uploads/?digest={wrong}", body=data)
    assert r.status_code == 400
    loc = s3_apis[0].request("POST", "/v2/s3/bad/blobs/uploads/").headers["Location"]
    s3_apis[1].request("PATCH", loc, body=data)
    assert s3_apis[0].request("DELETE", loc).status_code == 204
    driver = make_s3_driver()
    assert leftovers(driver) == ([], [])
    blobs = driver.client.list_objects_v2(Bucket=driver.bucket, Prefix="reg/blobs/").get("Contents", [])
    assert blobs == []


def test_sha512_read_back_when_not_announced(s3_apis, make_s3_driver):
    data = pattern(12 * MiB, seed=6)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    loc = s3_apis[0].request("POST", "/v2/s3/sha512/blobs/uploads/").headers["Location"]
    s3_apis[1].request("PATCH", loc, body=data)
    assert s3_apis[0].request("PUT", f"{loc}?digest={digest}").status_code == 201
    assert s3_apis[1].request("GET", f"/v2/s3/sha512/blobs/{digest}").content == data
    assert leftovers(make_s3_driver()) == ([], [])


def test_blobs_beyond_single_request_limits(s3_apis, make_s3_driver, r2_strict, monkeypatch):
    """Finishing never needs one request carrying the whole blob: with the per-request limit
    scaled down (R2: 5 GiB per PUT, part or copied range), a blob four times that size goes
    through parts and a ranged multipart copy, every request under the limit."""
    limit = 6 * MiB
    monkeypatch.setattr(storage.drivers.s3_writer, "MAX_COPY_PART", limit)
    largest = []

    def record(params, **_):
        body = params.get("Body")
        if body is not None:
            largest.append(len(body))

    driver = make_s3_driver()
    driver.client.meta.events.register("provide-client-params.s3.*", record)
    settings = make_settings(s3_apis[0].data_dir / "unused2")
    api = Api(testing.TestClient(create_app(settings, driver)), s3_apis[0].data_dir)
    data = pattern(4 * limit + 123, seed=7)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = api.request("POST", "/v2/s3/big/blobs/uploads/").headers["Location"]
    api.request("PATCH", loc, body=data, headers={"Transfer-Encoding": "chunked"})
    assert api.request("PUT", f"{loc}?digest={digest}").status_code == 201
    assert max(largest) <= PART < limit  # no PUT or part carried more than one part
    _staging, copy = r2_strict.completed  # the upload's parts, then the ranged copy's
    assert len(copy) > 1 and max(copy) <= limit and sum(copy) == len(data)
    assert api.request("GET", f"/v2/s3/big/blobs/{digest}").content == data


def test_throttling_is_503_with_retry_after(s3_apis, make_s3_driver):
    from botocore.exceptions import ClientError

    api = s3_apis[0]
    app_driver = make_s3_driver()

    def throttled(**_):
        raise ClientError(
            {
                "Error": {"Code": "SlowDown", "Message": "slow down"},
                "ResponseMetadata": {"HTTPStatusCode": 503},
            },
            "HeadObject",
        )

    app_driver.client.meta.events.register("before-call.s3.*", throttled)
    throttled_api = Api(
        testing.TestClient(create_app(make_settings(api.data_dir / "t"), _Unchecked(app_driver))),
        api.data_dir,
    )
    r = throttled_api.request("GET", f"/v2/s3/x/blobs/sha256:{'a' * 64}")
    assert r.status_code == 503
    assert r.headers["Retry-After"]
    assert r.json["errors"][0]["code"] == "UNAVAILABLE"


class _Unchecked:
    """A driver whose startup check passes (the throttle hook would fail it)."""

    def __init__(self, driver):
        self._driver = driver

    def __getattr__(self, name):
        return getattr(self._driver, name)

    def check(self):
        pass


def test_missing_bucket_is_a_clear_startup_error(s3_bucket):
    from settings import S3Settings
    from storage.driver import StorageError
    from storage.drivers.s3 import S3Driver

    with pytest.raises(StorageError, match="does not exist"):
        S3Driver(S3Settings(bucket="no-such-bucket", region="us-east-1")).check()


def test_sealed_abort_leaves_no_multipart_upload(make_s3_driver):
    """A sealed upload holds two multipart uploads (its own, and the copy's at the final key):
    aborting a writer resumed from the sealed state ends both."""
    driver = make_s3_driver()
    writer = driver.append_writer("uploads/x/data")
    writer.write(pattern(6 * MiB, seed=9))
    sealed = writer.seal("blobs/final")
    assert sealed["copy_mpu"] and sealed["mpu"]
    assert len(leftovers(driver)[1]) == 2
    make_s3_driver().append_writer("uploads/x/data", resume=sealed).abort()
    assert leftovers(driver)[1] == []
