"""A full disk does not wedge the registry: a write that runs out of space is rolled back to the
upload's last saved state, answered with 507 and an OCI body (logged once, no traceback), other
pushes work again as soon as there is room, pulls never stop, and readiness says "cannot write"
without saying "cannot serve". On a real (small) tmpfs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from falcon import testing

from app import create_app
from tests.conftest import Api, make_settings, sha256
from tests.e2e.process import IN_CI
from tests.test_auth_and_errors import assert_oci_error

MiB = 1024 * 1024
DISK = 6 * MiB


@pytest.fixture
def small_disk(tmp_path: Path):
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        message = f"cannot mount a tmpfs (needs root): {result.stderr.strip()}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def api(small_disk: Path) -> Api:
    data = small_disk / "data"
    return Api(testing.TestClient(create_app(make_settings(data))), data)


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _fill(path: Path, leave: int = 0) -> Path:
    """A file that takes all the free space but `leave` bytes."""
    filler = path / "filler"
    with open(filler, "wb") as fh:
        remaining = _free(path) - leave
        while remaining > 0:
            n = min(MiB, remaining)
            try:
                fh.write(b"\0" * n)
                fh.flush()
            except OSError:
                break
            remaining -= n
    return filler


def _no_tracebacks(caplog) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()


def test_a_patch_that_fills_the_disk_is_rolled_back(api, small_disk, caplog):
    caplog.set_level(logging.INFO)
    precious = os.urandom(100_000)
    digest = api.push_blob("team/app", precious)

    r = api.request("POST", "/v2/team/app/blobs/uploads/")
    location = r.headers["Location"]
    first = os.urandom(MiB)
    r = api.request("PATCH", location, body=first, headers={"Content-Range": f"0-{MiB - 1}"})
    assert r.status_code == 202, r.text
    free_before = _free(small_disk)

    # More than the disk holds, as a second chunk: the write runs out of space half way.
    too_big = os.urandom(DISK)
    r = api.request("PATCH", location, body=too_big, headers={"Content-Range": f"{MiB}-{MiB + DISK - 1}"})
    assert_oci_error(r, 507, "UNAVAILABLE")
    _no_tracebacks(caplog)
    full = [rec for rec in caplog.records if "storage full" in rec.getMessage()]
    assert len(full) == 1  # logged once

    # The failed chunk's partial tail is gone at once: the space is free again.
    assert _free(small_disk) >= free_before - 64 * 1024
    r = api.request("GET", location)
    assert r.status_code == 204 and r.headers["Range"] == f"0-{MiB - 1}"

    # Other pushes work, pulls work, and the upload continues where it was.
    small = os.urandom(1000)
    api.push_blob("team/other", small)
    r = api.request("GET", f"/v2/team/app/blobs/{digest}")
    assert r.status_code == 200 and r.content == precious
    second = os.urandom(1000)
    r = api.request(
        "PUT",
        f"{location}?digest={sha256(first + second)}",
        body=second,
        headers={"Content-Range": f"{MiB}-{MiB + 999}"},
    )
    assert r.status_code == 201, r.text


def test_monolithic_push_on_a_full_disk_leaves_nothing(api, small_disk, caplog):
    caplog.set_level(logging.INFO)
    filler = _fill(small_disk, leave=200_000)
    data = os.urandom(1_000_000)
    r = api.request("POST", f"/v2/team/app/blobs/uploads/?digest={sha256(data)}", body=data)
    assert_oci_error(r, 507, "UNAVAILABLE")
    _no_tracebacks(caplog)
    uploads = api.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    assert api.request("HEAD", f"/v2/team/app/blobs/{sha256(data)}").status_code == 404
    filler.unlink()
    api.push_blob("team/app", data)


def test_readiness_says_cannot_write_but_still_serves(api, small_disk):
    precious = os.urandom(10_000)
    digest = api.push_blob("team/app", precious)
    r = api.request("GET", "/readyz", auth=False)
    assert r.status_code == 200 and r.json["writable"] is True

    filler = _fill(small_disk)
    r = api.request("GET", "/readyz", auth=False)
    assert r.status_code == 200, r.text  # pulls can still be served: stay in the load balancer
    assert r.json == {"status": "ok", "storage": "ok", "writable": False}
    assert api.request("GET", f"/v2/team/app/blobs/{digest}").content == precious
    r = api.request("POST", "/v2/team/app/blobs/uploads/")
    assert_oci_error(r, 507, "UNAVAILABLE")
    # The probe leaves nothing behind, not even the empty file a full disk lets it create.
    assert not [p for p in api.data_dir.iterdir() if p.name.startswith(".tmp-")]

    filler.unlink()
    r = api.request("GET", "/readyz", auth=False)
    assert r.status_code == 200 and r.json["writable"] is True


def test_the_registry_starts_on_a_full_disk(small_disk):
    data = small_disk / "data"
    data.mkdir()
    filler = _fill(small_disk)
    api = Api(testing.TestClient(create_app(make_settings(data))), data)
    assert api.request("GET", "/v2/").status_code == 200
    filler.unlink()
