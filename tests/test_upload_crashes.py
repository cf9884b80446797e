"""A process that dies at any step of a closing PUT loses nothing: the client's retry of the same
PUT publishes the blob. The closing PUT runs in a forked child that kills itself with
`os._exit` (no cleanup runs, no lock is released by code: what a SIGKILL does) right after a
chosen storage call; the parent then sends the same request again."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from falcon import testing

import storage.drivers.s3_lease
from app import create_app
from storage.drivers import filesystem
from tests.conftest import Api, make_settings
from tests.s3_endpoint import (
    PART,
    fast_boto_retries,
    http_s3,
    open_multipart_uploads,
    unreferenced_multipart_uploads,
    upload_objects,
)
from tests.test_s3_faults import digest_of, pattern

CRASHED, FINISHED = 17, 3


def start_child(install_crash, send) -> int:
    """Fork a child that installs the crash point and sends the request."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            install_crash()
            send()
        finally:
            os._exit(FINISHED)
    return pid


def exit_code(pid: int) -> int:
    """CRASHED if the child died at its crash point."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_and_crash(install_crash, send) -> int:
    return exit_code(start_child(install_crash, send))


class Upload:
    """A blob pushed the docker way (one PATCH, then an empty PUT) or with its last chunk in
    the closing PUT; `close()` sends that PUT, the same each time."""

    def __init__(
        self, api: Api, repo: str, size: int, last_chunk: int, seed: int, sha512: bool = False
    ) -> None:
        self.api, self.repo = api, repo
        self.data = pattern(size, seed)
        # sha512 at the closing PUT only: the upload hashed sha256 and must be read back.
        self.digest = "sha512:" + hashlib.sha512(self.data).hexdigest() if sha512 else digest_of(self.data)
        self.split = size - last_chunk
        self.loc = api.request("POST", f"/v2/{repo}/blobs/uploads/").headers["Location"]
        self.upload_id = self.loc.rsplit("/", 1)[1]
        r = api.request(
            "PATCH", self.loc, body=self.data[: self.split], headers={"Content-Range": f"0-{self.split - 1}"}
        )
        assert r.status_code == 202

    def close(self, api: Api | None = None):
        last = self.data[self.split :]
        headers = {"Content-Range": f"{self.split}-{len(self.data) - 1}"} if last else {}
        return (api or self.api).request(
            "PUT", f"{self.loc}?digest={self.digest}", body=last, headers=headers
        )

    def served(self) -> bytes:
        return self.api.request("GET", f"/v2/{self.repo}/blobs/{self.digest}").content


class KilledPatch(Upload):
    """A blob whose first PATCH dies right after making its multipart upload, which no saved
    state records yet; `close()` sends that PATCH, then the closing PUT. The retried PATCH makes
    a multipart upload at the same staging key and aborts the orphan."""

    def __init__(self, api: Api, repo: str, size: int, seed: int) -> None:
        self.api, self.repo = api, repo
        self.data = pattern(size, seed)
        self.digest = digest_of(self.data)
        self.loc = api.request("POST", f"/v2/{repo}/blobs/uploads/").headers["Location"]
        self.upload_id = self.loc.rsplit("/", 1)[1]

    def close(self, api: Api | None = None):
        headers = {"Content-Range": f"0-{len(self.data) - 1}"}
        r = self.api.request("PATCH", self.loc, body=self.data, headers=headers)
        if r.status_code != 202:
            return r
        return self.api.request("PUT", f"{self.loc}?digest={self.digest}")


# -- S3 ----------------------------------------------------------------------------------------

# Where the child dies: right after this S3 call (on a key matching the regex) returned.
# "stored copy" uploads a blob that is already stored: the child dies dropping its own copy.
S3_POINTS = {
    "stored copy: ours dropped": ("DeleteObject", "/uploads/.*/data$"),
    "last part uploaded": ("UploadPart", ""),
    "publishing state saved": ("PutObject", "state.json"),
    "staging upload completed": ("CompleteMultipartUpload", "/uploads/"),
    "first range copied": ("UploadPartCopy", ""),
    "copy completed": ("CompleteMultipartUpload", "/blobs/"),
    "staging object deleted": ("DeleteObject", "/uploads/.*/data$"),
    "linked": ("PutObject", "/_layers/"),
    "session deleted": ("DeleteObjects", ""),
}


WITH_LAST_CHUNK = {
    "stored copy: ours dropped",
    "last part uploaded",
    "publishing state saved",
    "copy completed",
}
# Points by which the upload's own multipart upload was completed.
COMPLETED_BY_THEN = set(list(S3_POINTS)[list(S3_POINTS).index("staging upload completed") :])


def s3_crash_hook(driver, op: str, key_regex: str):
    import re

    def before(params, context, **_):
        context["berth_crash"] = re.search(key_regex, params.get("url_path", "")) is not None

    def after(context, **_):
        if context.get("berth_crash"):
            os._exit(CRASHED)

    def install():
        events = driver.client.meta.events
        events.register(f"before-call.s3.{op}", before)
        events.register(f"after-call.s3.{op}", after)

    return install


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with http_s3(tmp_path_factory.mktemp("s3-crashes")) as endpoint:
        yield endpoint


@pytest.fixture
def short_leases(s3, monkeypatch):
    fast_boto_retries(monkeypatch)
    monkeypatch.setattr(storage.drivers.s3_lease, "LEASE_TTL", 1.0)
    monkeypatch.setattr(storage.drivers.s3_lease, "LEASE_RENEW_EVERY", 0.25)
    yield
    s3.faults.clear()


def test_s3_a_crash_at_any_closing_step_is_finished_by_the_retry(s3, short_leases, tmp_path):
    """All crash points at once (each its own upload in its own child), so the retries wait
    out the dead children's leases together."""
    driver = s3.driver(s3.fresh_prefix())
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "unused"), driver)), tmp_path)
    api.driver = driver
    cases = {}
    for i, (point, (op, key)) in enumerate(S3_POINTS.items()):
        # With its last chunk in the PUT, the retry either writes it again (the child died
        # before the publishing state was saved) or checks it against the saved hash.
        variants = (0, PART + 10) if point in WITH_LAST_CHUNK else (0,)
        for last_chunk in variants:
            seed = i * 2 + bool(last_chunk)  # every blob differs: the cases run at once
            if point.startswith("stored copy"):
                api.push_blob("crash/elsewhere", pattern(3 * PART + 1000, seed))
            upload = Upload(api, f"crash/s3-{i}-{last_chunk}", 3 * PART + 1000, last_chunk, seed)
            cases[(point, last_chunk)] = (upload, s3_crash_hook(driver, op, key))
    cases[("first PATCH: multipart upload made", 0)] = (
        KilledPatch(api, "crash/s3-patch", 3 * PART + 5, len(cases)),
        s3_crash_hook(driver, "UploadPart", ""),
    )
    for point in ("staging upload completed", "copy completed", "staging object deleted"):
        upload = Upload(api, "crash/s3-sha512", 3 * PART + 1000, 0, len(cases), sha512=True)
        cases[(f"{point} (read back)", 0)] = (upload, s3_crash_hook(driver, *S3_POINTS[point]))
    # Forked from this (main) thread only: a child gets no lock another thread held.
    # Each child makes its own boto3 client (the driver's is per process) and hooks it.
    children = {case: start_child(install, upload.close) for case, (upload, install) in cases.items()}
    exits = {case: exit_code(pid) for case, pid in children.items()}
    # moto completes a multipart upload again when asked twice; S3 and R2 answer NoSuchUpload.
    completed = [u for (point, _), (u, _) in cases.items() if point.split(" (")[0] in COMPLETED_BY_THEN]
    s3.faults.set(
        [
            {"op": "CompleteMultipartUpload", "key": f"uploads/{u.upload_id}/data$", "action": "error", "status": 404, "code": "NoSuchUpload"}
            for u in completed
        ]
    )  # fmt: skip
    assert {case: code for case, code in exits.items() if code != CRASHED} == {}
    with ThreadPoolExecutor(8) as pool:
        answers = dict(zip(cases, pool.map(lambda c: c[0].close(), cases.values()), strict=True))
    failed = {case: (r.status_code, r.text) for case, r in answers.items() if r.status_code != 201}
    assert failed == {}
    wrong = [case for case, (upload, _) in cases.items() if upload.served() != upload.data]
    assert wrong == []
    assert upload_objects(api.driver) == []
    assert unreferenced_multipart_uploads(api.driver) == []
    assert open_multipart_uploads(api.driver) == []


# -- local disk --------------------------------------------------------------------------------


def fs_crash_hook(point: str):
    """Kill the child right after one filesystem step of the closing PUT."""

    def install():
        real_replace, real_write = os.replace, filesystem.FilesystemDriver.write_bytes
        real_abort = filesystem.FilesystemAppendWriter.abort

        def abort(self):
            real_abort(self)
            if point == "stored copy: ours dropped":
                os._exit(CRASHED)

        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if point == "renamed into place" and str(dst).endswith("/data") and "/blobs/" in str(dst):
                os._exit(CRASHED)

        def write_bytes(self, key, data):
            real_write(self, key, data)
            if point == "publishing state saved" and key.endswith("state.json") and b'"publishing"' in data:
                os._exit(CRASHED)
            if point == "linked" and "/_layers/" in key:
                os._exit(CRASHED)

        filesystem.os.replace = replace
        filesystem.FilesystemDriver.write_bytes = write_bytes
        filesystem.FilesystemAppendWriter.abort = abort

    return install


@pytest.mark.parametrize(
    "point", ["publishing state saved", "renamed into place", "linked", "stored copy: ours dropped"]
)
@pytest.mark.parametrize("last_chunk", [0, 1000], ids=["empty-put", "last-chunk-in-put"])
def test_filesystem_a_crash_at_any_closing_step_is_finished_by_the_retry(tmp_path, point, last_chunk):
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "data"))), tmp_path / "data")
    if point.startswith("stored copy"):
        api.push_blob("crash/elsewhere", pattern(5000, 1))
    upload = Upload(api, "crash/disk", 5000, last_chunk, seed=1)
    assert run_and_crash(fs_crash_hook(point), upload.close) == CRASHED
    r = upload.close()
    assert r.status_code == 201, r.text
    assert upload.served() == upload.data
    uploads = tmp_path / "data" / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir())
