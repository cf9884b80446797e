"""What the garbage collection stress run (tests/e2e/test_gc_stress.py) found, made deterministic
with tests/test_gc.py's hooked driver: a request run at a chosen step of a collection."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.test_gc import collector, short_verdict_wait, store  # noqa: F401 - fixtures


@pytest.mark.xfail(
    strict=True,
    reason="bug: the retry of a closing PUT answered 503 gets 404 BLOB_UPLOAD_UNKNOWN; "
    "the session's bytes are aborted (storage/uploads.py, _publish with writer None)",
)
def test_a_closing_put_answered_503_succeeds_when_retried(store):  # noqa: F811
    """A chunked upload whose bytes are all in closes (PUT ?digest=) while a collection deletes
    the copy of the same blob that is already stored (unreferenced): the PUT finds the stored
    copy, saves the session as publishing it, links it, finds the verdict, and answers 503 with
    Retry-After, leaving "the session (and our bytes) for the client's retry"
    (`_keep_stored_copy`). The retry must then publish the client's bytes. It answers 404
    BLOB_UPLOAD_UNKNOWN instead: `_publish` finds the stored copy gone and the session never
    sealed, aborts the writer holding the client's bytes and ends the session. A client that
    retries the request it was told to retry loses its upload and must send the layer again."""
    api, driver = store
    data = os.urandom(100)
    digest = api.push_blob("team/src", data)
    api.request("DELETE", f"/v2/team/src/blobs/{digest}")  # stored, linked nowhere: collectable
    location = api.request("POST", "/v2/team/dst/blobs/uploads/").headers["Location"]
    r = api.request(
        "PATCH",
        location,
        body=data,
        headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(data) - 1}"},
    )
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    answers = []

    def close():
        answers.append(api.request("PUT", f"{location}?digest={digest}"))

    # After the collector's verdict on the blob data, before it deletes it.
    driver.hooks.append((lambda key, data: "gc/verdicts/" in key, close))
    collector(driver).collect()
    driver.join()
    assert answers and answers[0].status_code == 503, answers and answers[0].text
    assert answers[0].headers.get("Retry-After")

    retry = api.request("PUT", f"{location}?digest={digest}")
    assert retry.status_code == 201, retry.text
    blob = api.request("GET", f"/v2/team/dst/blobs/{digest}")
    assert blob.status_code == 200 and blob.content == data


@pytest.mark.xfail(
    strict=True,
    reason="bug: FilesystemDriver's in_directory retries a write whose directory was pruned, but "
    "not the mkdir of a parent chain pruned half way: FileNotFoundError, a 500",
)
@pytest.mark.parametrize("pruned", ["uploads", "_layers"])
def test_a_write_whose_new_parent_a_delete_prunes_at_once_is_not_a_500(tmp_path, monkeypatch, pruned):
    """Deletes on local disk remove the directories they leave empty (FilesystemDriver._prune):
    an upload's cleanup prunes `uploads/`, and garbage collection, deleting a repository's last
    layer links, prunes `repositories/<name>/_layers/...`. A write creating the same directories
    at that moment (`Path.mkdir(parents=True)` makes each parent, then the child) finds the
    parent it just made gone, and `mkdir` raises FileNotFoundError outside the retry in
    `in_directory`: the request answers 500. Seen in bench/gc_stress.py (16 clients, 1,500
    images: `POST /v2/<name>/blobs/uploads/` 500). Here the prune happens right after the
    parent is made, as a concurrent delete would."""
    from tests.conftest import build_api

    api = build_api(tmp_path)
    real_mkdir = os.mkdir
    done = []

    def mkdir_then_pruned(path, mode=0o777, **kwargs):
        real_mkdir(path, mode, **kwargs)
        if os.path.basename(path) == pruned and not done:
            done.append(path)
            os.rmdir(path)  # another request's (or the collector's) delete prunes it, empty

    monkeypatch.setattr(os, "mkdir", mkdir_then_pruned)
    if pruned == "uploads":
        r = api.request("POST", "/v2/team/app/blobs/uploads/")
        assert r.status_code == 202, r.text
    else:
        data = os.urandom(100)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = api.request("POST", f"/v2/team/app/blobs/uploads/?digest={digest}", body=data)
        assert r.status_code == 201, r.text
    assert done, "the directory was made and pruned"
