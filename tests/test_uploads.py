"""Blob uploads through the HTTP API: every flow real clients use, and every error path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import RO_PASS, RO_USER, RW_PASS, basic, build_api, sha256


def start(api, repo):
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == "0-0"
    assert r.headers["Docker-Upload-UUID"] in r.headers["Location"]
    return r.headers["Location"]


def blob_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs").rglob("data")] if (data_dir / "blobs").exists() else []


def assert_blob(api, repo, data):
    digest = sha256(data)
    r = api.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == digest


def test_monolithic_post(api, repo):
    data = os.urandom(4000)
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?digest={sha256(data)}", body=data)
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/{repo}/blobs/{sha256(data)}"
    assert r.headers["Docker-Content-Digest"] == sha256(data)
    assert_blob(api, repo, data)


def test_post_then_put_whole_body(api, repo):
    """containerd and buildkit: POST, then one PUT carrying the whole blob."""
    data = os.urandom(3000)
    loc = start(api, repo)
    r = api.request(
        "PUT", f"{loc}?digest={sha256(data)}", body=data, headers={"Content-Length": str(len(data))}
    )
    assert r.status_code == 201, r.text
    assert_blob(api, repo, data)
    # The session is gone once finished.
    assert api.request("GET", loc).status_code == 404


def test_streamed_patch_without_length(api, repo):
    """docker and podman: one PATCH with a chunked body (no Content-Length), empty PUT."""
    data = os.urandom(5000)
    loc = start(api, repo)
    r = api.request("PATCH", loc, body=data, headers={"Transfer-Encoding": "chunked"})
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    r = api.request("PUT", f"{r.headers['Location']}?digest={sha256(data)}")
    assert r.status_code == 201
    assert_blob(api, repo, data)


def test_many_chunks_with_status_and_last_chunk_in_put(api, repo):
    data = os.urandom(10_000)
    loc = start(api, repo)
    for begin in range(0, 9000, 3000):
        chunk = data[begin : begin + 3000]
        r = api.request(
            "PATCH",
            loc,
            body=chunk,
            headers={"Content-Range": f"{begin}-{begin + len(chunk) - 1}", "Content-Length": str(len(chunk))},
        )
        assert r.status_code == 202
        status = api.request("GET", loc)
        assert status.status_code == 204
        assert status.headers["Range"] == f"0-{begin + len(chunk) - 1}"
        assert status.headers["Location"] == loc
    r = api.request(
        "PUT",
        f"{loc}?digest={sha256(data)}",
        body=data[9000:],
        headers={"Content-Range": "9000-9999", "Content-Length": "1000"},
    )
    assert r.status_code == 201, r.text
    assert_blob(api, repo, data)


@pytest.mark.parametrize("content_range", ["5-9", "0-4"])
def test_out_of_order_or_repeated_chunk_is_416(api, repo, content_range):
    loc = start(api, repo)
    assert api.request("PATCH", loc, body=b"abcde", headers={"Content-Range": "0-4"}).status_code == 202
    if content_range == "5-9":
        content_range = "6-10"  # skips a byte
    r = api.request(
        "PATCH",
        loc,
        body=b"fghij" if content_range != "6-10" else b"ghijk",
        headers={"Content-Range": content_range},
    )
    assert r.status_code == 416
    assert r.headers["Range"] == "0-4"
    assert r.headers["Location"] == loc
    assert r.json["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    # The upload is intact and continues.
    assert api.request("PATCH", loc, body=b"fghij", headers={"Content-Range": "5-9"}).status_code == 202
    assert api.request("PUT", f"{loc}?digest={sha256(b'abcdefghij')}").status_code == 201


def test_first_chunk_not_at_zero_is_416(api, repo):
    loc = start(api, repo)
    r = api.request("PATCH", loc, body=b"xyz", headers={"Content-Range": "3-5"})
    assert r.status_code == 416
    assert r.headers["Range"] == "0-0"


@pytest.mark.parametrize("bad", ["abc", "5-2", "bytes=x-1"])
def test_malformed_content_range(api, repo, bad):
    loc = start(api, repo)
    r = api.request("PATCH", loc, body=b"xyz", headers={"Content-Range": bad})
    assert r.status_code == 416
    assert "errors" in r.json


def test_content_range_disagreeing_with_length(api, repo):
    loc = start(api, repo)
    r = api.request("PATCH", loc, body=b"xyz", headers={"Content-Range": "0-9", "Content-Length": "3"})
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "SIZE_INVALID"


def test_digest_mismatch_leaves_nothing_visible(api, repo):
    data = os.urandom(1000)
    wrong = sha256(b"something else")
    loc = start(api, repo)
    api.request("PATCH", loc, body=data)
    r = api.request("PUT", f"{loc}?digest={wrong}")
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "DIGEST_INVALID"
    assert api.request("HEAD", f"/v2/{repo}/blobs/{wrong}").status_code == 404
    assert api.request("HEAD", f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
    assert blob_files(api.data_dir) == []
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?digest={wrong}", body=data)
    assert r.status_code == 400
    assert blob_files(api.data_dir) == []
    uploads = api.data_dir / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir())


@pytest.mark.parametrize("digest", ["sha256:short", "md5:abc", "nonsense", "sha256:" + "G" * 64])
def test_malformed_digest_is_400_not_500(api, repo, digest):
    loc = start(api, repo)
    r = api.request("PUT", f"{loc}?digest={digest}", body=b"x")
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "DIGEST_INVALID"
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body=b"x")
    assert r.status_code == 400


def test_put_without_digest(api, repo):
    loc = start(api, repo)
    r = api.request("PUT", loc, body=b"x")
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "DIGEST_INVALID"


def test_sha512(api, repo):
    data = os.urandom(2048)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body=data)
    assert r.status_code == 201
    assert api.request("GET", f"/v2/{repo}/blobs/{digest}").content == data
    # Chunked, with the algorithm known only at the closing PUT.
    data2 = os.urandom(3000)
    loc = start(api, repo)
    api.request("PATCH", loc, body=data2[:1000], headers={"Content-Range": "0-999"})
    api.request("PATCH", loc, body=data2[1000:], headers={"Content-Range": "1000-2999"})
    digest2 = "sha512:" + hashlib.sha512(data2).hexdigest()
    assert api.request("PUT", f"{loc}?digest={digest2}").status_code == 201
    assert api.request("GET", f"/v2/{repo}/blobs/{digest2}").content == data2
    # Announced up front, the running hash is sha512 and nothing is read back.
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?digest-algorithm=sha512")
    loc = r.headers["Location"]
    api.request("PATCH", loc, body=b"abc")
    assert api.request("PUT", f"{loc}?digest=sha512:{hashlib.sha512(b'abc').hexdigest()}").status_code == 201


def test_cancel(api, repo):
    loc = start(api, repo)
    api.request("PATCH", loc, body=b"partial")
    assert api.request("DELETE", loc).status_code == 204
    assert api.request("GET", loc).status_code == 404
    assert api.request("PATCH", loc, body=b"more").status_code == 404
    assert api.request("DELETE", loc).status_code == 404


@pytest.mark.parametrize("upload_id", ["nope", "..", "00000000-0000-0000-0000-000000000000"])
def test_unknown_upload(api, repo, upload_id):
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        r = api.request(method, f"/v2/{repo}/blobs/uploads/{upload_id}?digest={sha256(b'')}")
        assert r.status_code == 404, method
        assert r.json["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_upload_belongs_to_its_repository(api, repo):
    loc = start(api, repo)
    upload_id = loc.rsplit("/", 1)[1]
    other = f"/v2/other/repo/blobs/uploads/{upload_id}"
    assert api.request("PATCH", other, body=b"x").status_code == 404
    assert api.request("GET", other).status_code == 404
    assert api.request("PUT", f"{other}?digest={sha256(b'')}").status_code == 404
    assert api.request("PUT", f"{loc}?digest={sha256(b'')}").status_code == 201


def test_upload_belongs_to_its_user(tmp_path, repo):
    from settings import User

    api = build_api(tmp_path, users=(User("alice", RW_PASS, True), User("carol", "c-secret", True)))
    loc = start(api, repo)
    carol = basic("carol", "c-secret")
    assert api.request("PATCH", loc, body=b"x", headers=carol).status_code == 404
    assert api.request("GET", loc, headers=carol).status_code == 404
    assert api.request("PATCH", loc, body=b"x").status_code == 202


def test_mount(api, repo):
    data = os.urandom(100)
    digest = api.push_blob("source/repo", data)
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from=source/repo")
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/{repo}/blobs/{digest}"
    assert r.headers["Docker-Content-Digest"] == digest
    assert api.request("GET", f"/v2/{repo}/blobs/{digest}").content == data
    # Not in the source: a normal upload session instead.
    missing = sha256(b"not there")
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?mount={missing}&from=source/repo")
    assert r.status_code == 202
    assert "/blobs/uploads/" in r.headers["Location"]


def test_mount_needs_pull_on_source_and_valid_names(api, repo):
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?mount={sha256(b'x')}&from=Bad..Name")
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "NAME_INVALID"


def test_read_only_user_cannot_upload(api, repo):
    ro = basic(RO_USER, RO_PASS)
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/", headers=ro)
    assert r.status_code == 403
    assert r.json["errors"][0]["code"] == "DENIED"


def test_second_upload_of_same_blob_keeps_one_copy(api, repo):
    data = os.urandom(100)
    api.push_blob(repo, data)
    api.push_blob("another/repo", data)
    assert len(blob_files(api.data_dir)) == 1
    assert_blob(api, "another/repo", data)


def test_interrupted_patch_leaves_upload_where_it_was(api, repo):
    """A PATCH whose body ends before its Content-Length is refused; the saved state (and so
    the bytes the next request continues from) stays as before."""
    loc = start(api, repo)
    api.request("PATCH", loc, body=b"abc", headers={"Content-Range": "0-2"})

    class Truncated:
        def __init__(self):
            self.data = [b"XYZ"]

        def read(self, n=-1):
            return self.data.pop() if self.data else b""

        readline = read

        def readlines(self, hint=-1):
            return []

        def __iter__(self):
            return iter(())

    r = api.client.simulate_request(
        "PATCH",
        loc,
        headers={**api.headers, "Content-Length": "100"},
        wsgierrors=None,
        body=None,
        extras={"wsgi.input": Truncated()},
    )
    assert r.status_code == 400
    status = api.request("GET", loc)
    assert status.headers["Range"] == "0-2"
    api.request("PATCH", loc, body=b"def", headers={"Content-Range": "3-5"})
    assert api.request("PUT", f"{loc}?digest={sha256(b'abcdef')}").status_code == 201
    assert_blob(api, repo, b"abcdef")


def test_mount_without_from_for_a_user_who_may_read_everything(api, repo):
    data = os.urandom(64)
    digest = api.push_blob("somewhere/else", data)
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}")
    assert r.status_code == 201
    assert api.request("GET", f"/v2/{repo}/blobs/{digest}").content == data
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/?mount={sha256(b'unknown')}")
    assert r.status_code == 202


def test_a_request_waits_for_another_writing_the_upload(api, repo, monkeypatch):
    """A client's retry can overtake the server's end of the request it gave up on: it waits
    for the lock instead of failing at once, and gets 503 with Retry-After only if the other
    request keeps writing past the wait."""
    import threading

    import storage.uploads
    from storage import paths
    from storage.drivers.filesystem import FilesystemDriver

    loc = start(api, repo)
    lock = paths.upload_lock(loc.rsplit("/", 1)[1])
    other = FilesystemDriver(api.data_dir).exclusive(lock)
    other.__enter__()
    threading.Timer(0.3, lambda: other.__exit__(None, None, None)).start()
    r = api.request("PATCH", loc, body=b"abc", headers={"Content-Range": "0-2"})
    assert r.status_code == 202, r.text
    monkeypatch.setattr(storage.uploads, "LOCK_WAIT", 0.3)
    with FilesystemDriver(api.data_dir).exclusive(lock):
        r = api.request("PATCH", loc, body=b"def", headers={"Content-Range": "3-5"})
    assert r.status_code == 503
    assert r.json["errors"][0]["code"] == "UNAVAILABLE"
    assert r.headers["Retry-After"]
    assert api.request("PATCH", loc, body=b"def", headers={"Content-Range": "3-5"}).status_code == 202
