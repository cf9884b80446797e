"""What the garbage collection stress runs (tests/e2e/test_gc_stress.py, bench/gc_stress.py) found,
made deterministic: a request run at a chosen step of a collection (tests/test_gc.py's hooked
driver), or a directory pruned at the worst moment. Both failed on the collector as first
written (7725ad3) and pass since d3d1fcb and 23cc554."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.test_gc import collector, short_verdict_wait, store  # noqa: F401 - fixtures


def test_a_closing_put_answered_503_succeeds_when_retried(store):  # noqa: F811
    """A chunked upload whose bytes are all in closes (PUT ?digest=) while a collection deletes
    the copy of the same blob that is already stored (unreferenced): the PUT finds the stored
    copy, saves the session as publishing it, links it, finds the verdict, and answers 503 with
    Retry-After, leaving "the session (and our bytes) for the client's retry"
    (`_keep_stored_copy`). The retry must then publish the client's bytes. It used to answer 404
    BLOB_UPLOAD_UNKNOWN: `_publish` found the stored copy gone and the session never sealed,
    aborted the writer holding the client's bytes and ended the session, so a client retrying
    the request it was told to retry lost its upload."""
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


@pytest.mark.parametrize("pruned", ["uploads", "_layers"])
def test_a_write_whose_new_parent_a_delete_prunes_at_once_is_not_a_500(tmp_path, monkeypatch, pruned):
    """Deletes on local disk remove the directories they leave empty (FilesystemDriver._prune):
    an upload's cleanup prunes `uploads/`, and garbage collection, deleting a repository's last
    layer links, prunes `repositories/<name>/_layers/...`. A write creating the same directories
    at that moment (`Path.mkdir(parents=True)` makes each parent, then the child) may find the
    parent it just made gone; `mkdir` raised FileNotFoundError outside the retry in
    `in_directory`, and the request answered 500 (seen in bench/gc_stress.py, 16 clients, 1,500
    images: `POST /v2/<name>/blobs/uploads/`). Here the prune happens right after the parent is
    made, as a concurrent delete would."""
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
