"""Uploads and reads on S3 while the store fails: moto's server behind the fault-injecting proxy,
Berth in-process. Every fault is injected at a known call, so each test says exactly what a
client sees and what is left in the bucket afterwards."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from falcon import testing

import storage.drivers.s3_lease
import storage.uploads
from app import create_app
from storage import paths
from tests.conftest import Api, make_settings
from tests.s3_endpoint import PART, fast_boto_retries, http_s3, open_multipart_uploads, upload_objects

TTL = 1.0  # the S3 lease, shortened so a lapse is quick to wait for


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with http_s3(tmp_path_factory.mktemp("s3-faults")) as endpoint:
        yield endpoint


@pytest.fixture
def faults(s3):
    s3.faults.clear()
    yield s3.faults
    s3.faults.clear()


@pytest.fixture
def reg(s3, tmp_path, monkeypatch):
    """A registry on a fresh key prefix, through the fault proxy."""
    fast_boto_retries(monkeypatch)
    monkeypatch.setattr(storage.drivers.s3_lease, "LEASE_TTL", TTL)
    monkeypatch.setattr(storage.drivers.s3_lease, "LEASE_RENEW_EVERY", TTL / 4)
    driver = s3.driver(s3.fresh_prefix())
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "unused"), driver)), tmp_path)
    api.driver = driver
    return api


def pattern(n: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * (PART // 32)
    return (block * (n // len(block) + 1))[:n]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_nothing_left(api) -> None:
    assert open_multipart_uploads(api.driver) == []
    assert upload_objects(api.driver) == []


def injected(faults) -> list[int]:
    return [rule["injected"] for rule in faults.report()["rules"]]


# -- item 19: small reads are retried, streams resumed ----------------------------------------


def test_truncated_small_reads_are_read_again(reg, faults):
    """A state, a carry, a tag, a manifest link and a manifest whose body breaks once are read
    again instead of failing the request."""
    data = pattern(3 * PART + 5)
    loc = reg.request("POST", "/v2/f/small/blobs/uploads/").headers["Location"]
    assert reg.request("PATCH", loc, body=data).status_code == 202  # leaves a 5-byte carry
    config = b'{"architecture":"amd64","os":"linux"}'
    reg.push_blob("f/small", config)
    faults.set(
        [
            {"op": "GetObject", "key": r"state\.json$", "action": "truncate", "nth": [1]},
            {"op": "GetObject", "key": r"\.carry-", "action": "reset_mid_response", "nth": [1]},
        ]
    )
    r = reg.request("PUT", f"{loc}?digest={digest_of(data)}")
    assert r.status_code == 201, r.text
    assert injected(faults) == [1, 1]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(data), "size": len(data)}],
    }  # fmt: skip
    r, manifest_digest, body = reg.push_manifest("f/small", "v1", manifest)
    assert r.status_code == 201
    faults.set(
        [
            {"op": "GetObject", "key": r"_tags/v1$", "action": "truncate", "nth": [1]},
            {"op": "GetObject", "key": r"_manifests/", "action": "reset_mid_response", "nth": [1]},
            {"op": "GetObject", "key": r"blobs/sha256/", "action": "truncate", "fraction": 0.1, "nth": [1]},
        ]
    )
    got = reg.request("GET", "/v2/f/small/manifests/v1")
    assert got.status_code == 200, got.text
    assert got.content == body
    assert got.headers["Docker-Content-Digest"] == manifest_digest
    assert injected(faults) == [1, 1, 1]


def test_a_missing_small_object_whose_answer_breaks_is_read_again(reg, faults):
    """A read of an object that is not there (the garbage collection state, read by every
    closing PUT, usually is not) gets a 404 whose body botocore reads itself: a connection that
    breaks then is read again, not a 500."""
    faults.set([{"op": "GetObject", "key": r"gc/state$", "action": "reset_mid_response", "nth": [1, 2]}])
    data = pattern(1000)
    r = reg.request("POST", f"/v2/f/missing/blobs/uploads/?digest={digest_of(data)}", body=data)
    assert r.status_code == 201, r.text
    assert injected(faults) == [2]


def test_a_small_read_that_keeps_breaking_is_503(reg, faults):
    reg.push_image("f/broken")
    faults.set([{"op": "GetObject", "key": r"_tags/latest$", "action": "truncate"}])
    r = reg.request("GET", "/v2/f/broken/manifests/latest")
    assert r.status_code == 503
    assert r.json["errors"][0]["code"] == "UNAVAILABLE"
    assert injected(faults) == [storage.drivers.s3.SMALL_READ_ATTEMPTS]


@pytest.mark.parametrize("action", ["truncate", "reset_mid_response"])
def test_blob_download_resumes_where_the_store_broke_off(reg, faults, action):
    data = pattern(6 * PART + 3, seed=2)
    digest = reg.push_blob("f/stream", data)
    faults.set([{"op": "GetObject", "key": "blobs/", "action": action, "nth": [1, 2], "fraction": 0.3}])
    got = reg.request("GET", f"/v2/f/stream/blobs/{digest}")
    assert got.status_code == 200
    assert got.content == data
    ranged = reg.request("GET", f"/v2/f/stream/blobs/{digest}", headers={"Range": "bytes=1000-299999"})
    assert ranged.status_code == 206
    assert ranged.content == data[1000:300000]
    assert injected(faults) == [2]


# -- item 18: leases ---------------------------------------------------------------------------


def test_a_lost_answer_to_the_lease_put_is_our_own_lease(reg, faults):
    """The lease PUT lands but its answer is lost; boto3's retry is refused by that very lease.
    The request recognises its own token instead of answering 'busy' (and locking the upload
    out until the lease lapses)."""
    loc = reg.request("POST", "/v2/f/lease/blobs/uploads/").headers["Location"]
    faults.set([{"op": "PutObject", "key": r"/lock$", "action": "drop_response", "nth": [1]}])
    started = time.monotonic()
    r = reg.request("PATCH", loc, body=b"abc", headers={"Content-Range": "0-2"})
    assert r.status_code == 202, r.text
    r = reg.request("PATCH", loc, body=b"def", headers={"Content-Range": "3-5"})
    assert r.status_code == 202, r.text
    assert time.monotonic() - started < TTL  # never waited for a lease to lapse
    assert injected(faults) == [1]
    assert reg.request("PUT", f"{loc}?digest={digest_of(b'abcdef')}").status_code == 201


def test_a_lease_that_could_not_be_released_lapses_within_its_ttl(reg, faults):
    loc = reg.request("POST", "/v2/f/release/blobs/uploads/").headers["Location"]
    # Every attempt of one request's release fails (boto3's five, Berth's three).
    faults.set([{"op": "DeleteObject", "key": r"/lock$", "action": "error", "status": 500, "code": "InternalError", "times": 15}])  # fmt: skip
    assert reg.request("PATCH", loc, body=b"abc", headers={"Content-Range": "0-2"}).status_code == 202
    assert injected(faults) == [15]
    started = time.monotonic()
    r = reg.request("PATCH", loc, body=b"def", headers={"Content-Range": "3-5"})
    waited = time.monotonic() - started
    assert r.status_code == 202, r.text  # it waited for the stale lease instead of a 416
    assert waited < 4 * TTL
    assert reg.request("PUT", f"{loc}?digest={digest_of(b'abcdef')}").status_code == 201
    assert_nothing_left(reg)


def test_busy_upload_waits_for_the_holder_then_answers_503(reg, faults, monkeypatch):
    monkeypatch.setattr(storage.uploads, "LOCK_WAIT", 0.5)
    loc = reg.request("POST", "/v2/f/busy/blobs/uploads/").headers["Location"]
    lock = paths.upload_lock(loc.rsplit("/", 1)[1])
    with reg.driver.exclusive(lock):
        r = reg.request("PATCH", loc, body=b"abc")
    assert r.status_code == 503
    assert r.json["errors"][0]["code"] == "UNAVAILABLE"
    assert int(r.headers["Retry-After"]) > 0
    # A holder that finishes within the wait lets the request through.
    holding = reg.driver.exclusive(lock)
    holding.__enter__()
    threading.Timer(0.2, lambda: holding.__exit__(None, None, None)).start()
    assert reg.request("PATCH", loc, body=b"abc").status_code == 202


# -- items 17 and 20: the closing PUT survives storage errors and leaves nothing behind -------

# (operation, key) failing for longer than boto3 retries, and the closing PUT's first answer.
CLOSING_FAULTS = {
    "last part": ("UploadPart", None, 503),
    "copy's upload created": ("CreateMultipartUpload", "blobs/", 503),
    "publishing state saved": ("PutObject", r"state\.json$", 503),
    "staging completed": ("CompleteMultipartUpload", r"uploads/.*/data$", 503),
    "copied": ("UploadPartCopy", None, 503),
    "copy completed": ("CompleteMultipartUpload", "blobs/", 503),
    "linked": ("PutObject", "_layers/", 503),
    "staging deleted": ("DeleteObject", r"uploads/.*/data$", 201),
    "session ended": ("DeleteObjects", None, 201),
}


CASES = [(step, False) for step in CLOSING_FAULTS] + [
    # The retry resends its last chunk: written again, or checked against the sealed hash.
    (step, True)
    for step in ("publishing state saved", "copy completed")
]


@pytest.mark.parametrize(
    "step,last_chunk_in_put", CASES, ids=[f"{s}{'-with-last-chunk' if c else ''}" for s, c in CASES]
)
def test_closing_put_survives_a_storage_error_at_each_step(reg, faults, step, last_chunk_in_put):
    op, key, first_status = CLOSING_FAULTS[step]
    data = pattern(3 * PART + 1000, seed=3)  # four parts: three full, one short
    digest = digest_of(data)
    split = 3 * PART - 1000 if last_chunk_in_put else len(data)
    loc = reg.request("POST", "/v2/f/closing/blobs/uploads/").headers["Location"]
    assert (
        reg.request("PATCH", loc, body=data[:split], headers={"Content-Range": f"0-{split - 1}"}).status_code
        == 202
    )
    last = data[split:]
    headers = {"Content-Range": f"{split}-{len(data) - 1}"} if last else {}
    faults.set(
        [{"op": op, "key": key, "action": "error", "status": 500, "code": "InternalError", "times": 5}]
    )
    r = reg.request("PUT", f"{loc}?digest={digest}", body=last, headers=headers)
    assert r.status_code == first_status, r.text
    assert injected(faults) == [5]
    faults.clear()
    # The client's retry (the same request) finishes the upload.
    r = reg.request("PUT", f"{loc}?digest={digest}", body=last, headers=headers)
    assert r.status_code == 201, r.text
    assert reg.request("GET", f"/v2/f/closing/blobs/{digest}").content == data
    assert_nothing_left(reg)


def test_a_lost_answer_to_completion_is_recognised(reg, faults):
    """CompleteMultipartUpload succeeds but its answer is lost; the store then answers boto3's
    retry with NoSuchUpload (as R2 does): the object is there with the sealed size, so the
    upload goes on."""
    data = pattern(3 * PART, seed=4)
    digest = digest_of(data)
    loc = reg.request("POST", "/v2/f/lost/blobs/uploads/").headers["Location"]
    reg.request("PATCH", loc, body=data)
    faults.set(
        [
            {"op": "CompleteMultipartUpload", "action": "drop_response", "nth": [1, 3]},
            {"op": "CompleteMultipartUpload", "action": "error", "status": 404, "code": "NoSuchUpload", "nth": [1, 2]},
        ]
    )  # fmt: skip
    r = reg.request("PUT", f"{loc}?digest={digest}")
    assert r.status_code == 201, r.text
    assert injected(faults) == [2, 2]  # the staging upload's and the copy's completions
    assert reg.request("GET", f"/v2/f/lost/blobs/{digest}").content == data
    assert_nothing_left(reg)


def test_a_failed_monolithic_upload_aborts_its_multipart_upload(reg, faults):
    data = pattern(3 * PART, seed=5)
    digest = digest_of(data)
    faults.set([{"op": "CompleteMultipartUpload", "action": "error", "status": 500, "code": "InternalError", "times": 5}])  # fmt: skip
    r = reg.request("POST", f"/v2/f/mono/blobs/uploads/?digest={digest}", body=data)
    assert r.status_code == 503
    assert_nothing_left(reg)
    faults.clear()
    assert reg.request("POST", f"/v2/f/mono/blobs/uploads/?digest={digest}", body=data).status_code == 201
    assert_nothing_left(reg)


def test_cancelling_a_half_published_upload_aborts_everything(reg, faults):
    data = pattern(3 * PART, seed=6)
    loc = reg.request("POST", "/v2/f/cancel/blobs/uploads/").headers["Location"]
    reg.request("PATCH", loc, body=data)
    faults.set([{"op": "UploadPartCopy", "action": "error", "status": 500, "code": "InternalError", "times": 5}])  # fmt: skip
    assert reg.request("PUT", f"{loc}?digest={digest_of(data)}").status_code == 503
    assert len(open_multipart_uploads(reg.driver)) == 1  # the copy's, recorded in the session
    faults.clear()
    assert reg.request("DELETE", loc).status_code == 204
    assert_nothing_left(reg)
    assert reg.request("HEAD", f"/v2/f/cancel/blobs/{digest_of(data)}").status_code == 404


def test_a_put_retried_after_its_answer_was_lost(reg, faults):
    """The PUT succeeded and ended the session, but the client never heard: its retry is told
    the blob is there (201), in that repository only."""
    data = pattern(3 * PART, seed=7)
    digest = digest_of(data)
    loc = reg.request("POST", "/v2/f/again/blobs/uploads/").headers["Location"]
    assert reg.request("PUT", f"{loc}?digest={digest}", body=data).status_code == 201
    again = reg.request("PUT", f"{loc}?digest={digest}", body=data)
    assert again.status_code == 201
    assert again.headers["Docker-Content-Digest"] == digest
    other = loc.replace("/f/again/", "/f/elsewhere/")
    assert reg.request("PUT", f"{other}?digest={digest}", body=data).status_code == 404


def test_a_multipart_upload_created_twice_leaves_no_orphan(reg, faults):
    """CreateMultipartUpload succeeds but its answer is lost: boto3's retry creates a second
    one. On the upload's own staging key Berth aborts the first (only it writes there)."""
    data = pattern(3 * PART + 9, seed=8)
    loc = reg.request("POST", "/v2/f/twice/blobs/uploads/").headers["Location"]
    faults.set([{"op": "CreateMultipartUpload", "action": "drop_response", "nth": [1]}])
    assert reg.request("PATCH", loc, body=data).status_code == 202
    dropped = faults.report()["dropped_uploads"]
    assert len(dropped) == 1
    assert dropped[0]["upload_id"] not in {u for _k, u in open_multipart_uploads(reg.driver)}
    assert reg.request("PUT", f"{loc}?digest={digest_of(data)}").status_code == 201
    assert_nothing_left(reg)


def test_a_corrupted_small_read_is_read_again(reg, faults):
    """Small objects are stored with a CRC32 that botocore checks on read: a flipped byte in a
    tag, a manifest link or a manifest is caught and read again, never served or used."""
    _digest, body = reg.push_image("f/corrupt", "v1")
    faults.set([{"op": "GetObject", "action": "corrupt", "nth": [1, 2, 3]}])
    got = reg.request("GET", "/v2/f/corrupt/manifests/v1")
    assert got.status_code == 200
    assert got.content == body
    assert injected(faults) == [3]


@pytest.mark.parametrize(
    "stated,written_ago,expired",
    [(+5, 60, False), (-5, 2, False), (-5, 60, True), (-5, 11.5, True)],
    ids=["expiry-ahead", "store-says-fresh", "stale-by-both", "just-lapsed"],
)
def test_a_lease_is_taken_over_only_when_stale_by_both_clocks(stated, written_ago, expired):
    """A lease states its expiry on the writer's clock (what older Berths read) and is judged
    on the store's clock too: a reader whose clock runs ahead cannot take a live lease."""
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    store_now = datetime.now(UTC)
    response = {
        "LastModified": store_now - timedelta(seconds=written_ago),
        "ResponseMetadata": {"HTTPHeaders": {"date": format_datetime(store_now, usegmt=True)}},
    }
    fields = ["token", f"{time.time() + stated:.3f}"]
    assert storage.drivers.s3_lease._expired(response, fields) is expired
