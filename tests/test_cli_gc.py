"""The operator commands over garbage collection: `gc`, `purge-uploads` and `verify` (cli/),
run as `main(argv, env, driver)` and once as `python -m berth`; their progress on a terminal
and in a log; Ctrl-C; and the collection's metrics in the server."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from falcon import testing

from app import create_app
from cli import main
from cli.progress import GcProgress
from settings import GcSettings, ObservabilitySettings
from storage import paths
from storage.digests import Digest
from storage.drivers.filesystem import FilesystemDriver
from storage.usage import human_size as human
from tests.conftest import Api, make_settings
from tests.test_gc import image, pulls_whole
from tests.test_observability import scrape, value

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV = {"REGISTRY_GC_GRACE": "0s", "REGISTRY_UPLOAD_TTL": "1h"}


@pytest.fixture(params=["filesystem", "s3"])
def store(request, tmp_path):
    """A store with one kept image and one deleted one (its manifest, config and layer are
    garbage), and the driver the commands open."""
    if request.param == "s3":
        driver = request.getfixturevalue("make_s3_driver")()
    else:
        driver = FilesystemDriver(tmp_path / "data")
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "data"), driver=driver)), tmp_path)
    image(api, "team/kept", "v1", [os.urandom(3000)])
    gone, _ = image(api, "team/gone", "v1", [os.urandom(5000)])
    assert api.request("DELETE", f"/v2/team/gone/manifests/{gone}").status_code == 202
    age(driver)
    return api, driver


def age(driver) -> None:
    """S3 times have whole seconds: with no grace, garbage must be a second old to be seen."""
    if not isinstance(driver, FilesystemDriver):
        time.sleep(1.1)


def run(capsys, driver, *argv: str, env: dict | None = None) -> tuple[int, str, str]:
    status = main(list(argv), env={**ENV, **(env or {})}, driver=driver)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_gc_dry_run_reports_and_removes_nothing_then_gc_removes_it(store, capsys):
    api, driver = store
    before = {i.key for i in driver.walk("blobs")}
    status, out, _ = run(capsys, driver, "gc", "--dry-run", "--json")
    assert status == 0
    dry = json.loads(out)
    assert dry["dry_run"] is True and dry["blobs"] >= 2 and dry["blob_bytes"] >= 5000
    assert {i.key for i in driver.walk("blobs")} == before

    status, out, _ = run(capsys, driver, "gc")
    assert status == 0
    assert "removed" in out and "blobs" in out and "KiB" in out
    assert len([k for k in before if k.endswith("/data")]) - dry["blobs"] == len(
        [i for i in driver.walk("blobs") if i.key.endswith("/data")]
    )
    assert pulls_whole(api, "team/kept", "v1")
    status, out, _ = run(capsys, driver, "gc", "--json")
    assert json.loads(out)["blobs"] == 0  # nothing left to collect


def test_gc_untagged_in_one_repository(store, capsys):
    api, driver = store
    untagged, _ = image(api, "team/kept", None, [os.urandom(700)])  # by digest only
    age(driver)
    status, out, _ = run(capsys, driver, "gc", "--mode", "untagged", "--repository", "team/kept", "--json")
    assert status == 0
    report = json.loads(out)
    assert report["mode"] == "untagged" and report["repository"] == "team/kept" and report["manifests"] == 1
    assert api.request("GET", f"/v2/team/kept/manifests/{untagged}").status_code == 404
    assert pulls_whole(api, "team/kept", "v1")


def test_gc_refuses_bad_arguments_and_a_running_collection(store, capsys):
    _, driver = store
    with pytest.raises(SystemExit) as exit_info:
        main(["gc", "--mode", "everything"], env=ENV, driver=driver)
    assert exit_info.value.code == 2
    status, _, err = run(capsys, driver, "gc", "--repository", "Bad Name")
    assert status == 2 and "berth gc:" in err
    # Another collection holds the lease (another instance's, alive: recently renewed).
    driver.write_bytes(paths.GC_CLOCK, b"")  # as a collection does first: the lease's directory
    with driver.exclusive(paths.GC_LOCK):
        status, _, err = run(capsys, driver, "gc")
    assert status == 1 and "another collection is running" in err


def test_purge_uploads(store, capsys):
    api, driver = store
    r = api.request("POST", "/v2/team/kept/blobs/uploads/")
    assert r.status_code == 202
    session = r.headers["Location"]
    assert (
        api.request(
            "PATCH", session, body=b"x" * 1000, headers={"Content-Type": "application/octet-stream"}
        ).status_code
        == 202
    )
    status, out, _ = run(capsys, driver, "purge-uploads")  # the session is younger than the TTL
    assert status == 0 and "removed 0 sessions" in out
    age(driver)
    status, out, _ = run(capsys, driver, "purge-uploads", "--older-than", "0s", "--dry-run", "--json")
    assert json.loads(out)["uploads"] == 1
    status, out, _ = run(capsys, driver, "purge-uploads", "--older-than", "0s")
    assert status == 0 and "removed 1 sessions" in out
    assert api.request("GET", session).status_code == 404
    status, _, err = run(capsys, driver, "purge-uploads", "--older-than", "soon")
    assert status == 2 and "duration" in err


def _layer_of(api: Api, repo: str, tag: str) -> Digest:
    return Digest.parse(api.request("GET", f"/v2/{repo}/manifests/{tag}").json["layers"][0]["digest"])


def test_verify_finds_corrupt_and_missing_blobs(store, capsys):
    api, driver = store
    run(capsys, driver, "gc")
    status, out, _ = run(capsys, driver, "verify")
    assert status == 0 and "verified" in out and "CORRUPT" not in out
    layer = _layer_of(api, "team/kept", "v1")
    data = driver.read_bytes(paths.blob_data(layer))
    driver.write_bytes(paths.blob_data(layer), data[:-1] + bytes([data[-1] ^ 1]))
    status, out, _ = run(capsys, driver, "verify", "--repository", "team/kept")
    assert status == 1 and f"CORRUPT {layer}" in out
    driver.delete(paths.blob_data(layer))
    status, out, _ = run(capsys, driver, "verify", "--json")
    assert status == 1 and json.loads(out)["missing"] == [f"team/kept@{layer}"]


def test_ctrl_c_during_gc_leaves_every_image_whole_and_the_lease_free(tmp_path, capsys):
    class Interrupted(FilesystemDriver):
        deletes = 0

        def delete_many(self, keys):
            self.deletes += 1
            if self.deletes == 1:
                raise KeyboardInterrupt
            return super().delete_many(keys)

    driver = Interrupted(tmp_path / "data")
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "data"), driver=driver)), tmp_path)
    image(api, "team/kept", "v1", [os.urandom(3000)])
    gone, _ = image(api, "team/gone", "v1", [os.urandom(5000)])
    api.request("DELETE", f"/v2/team/gone/manifests/{gone}")
    status, out, err = run(capsys, driver, "gc")
    assert status == 130 and "interrupted" in err and out == ""
    assert driver.deletes == 1
    assert pulls_whole(api, "team/kept", "v1")
    status, out, _ = run(capsys, driver, "gc", "--json")  # the lease was let go: this one runs
    assert status == 0 and json.loads(out)["blobs"] >= 2
    assert pulls_whole(api, "team/kept", "v1")


def test_progress_is_a_bar_on_a_terminal_and_log_lines_otherwise(caplog, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with GcProgress("gc", stream=screen) as progress:
        progress.phase("blobs", total=4)
        progress.advance(2, 3 * 1024 * 1024)
    assert "gc: blobs" in screen.getvalue() and "/4 [" in screen.getvalue()  # a bar, with its total

    import cli.progress

    monkeypatch.setattr(cli.progress, "LOG_EVERY", 0.0)
    caplog.set_level(logging.INFO, logger="berth.cli")
    with GcProgress("verify", stream=io.StringIO()) as progress:
        progress.phase("verifying", total=3)
        progress.advance(1, 2048)
    lines = [r.getMessage() for r in caplog.records]
    assert "verify: verifying (3 items)" in lines
    assert any("1 items, 2.0 KiB so far" in line for line in lines)
    assert human(1536) == "1.5 KiB" and human(10) == "10 B"


def test_python_m_berth_gc_and_verify(tmp_path):
    driver = FilesystemDriver(tmp_path / "data")
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "data"), driver=driver)), tmp_path)
    gone, _ = image(api, "team/gone", "v1", [os.urandom(5000)])
    api.request("DELETE", f"/v2/team/gone/manifests/{gone}")
    env = {**os.environ, **ENV, "REGISTRY_DATA_DIR": str(tmp_path / "data")}
    for argv, expected in ((["gc", "--json"], '"blobs": 3'), (["verify"], "verified 0 blobs")):
        proc = subprocess.run(
            [sys.executable, "-m", "berth", *argv],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert expected in proc.stdout


def test_collections_in_the_server_are_counted(tmp_path):
    settings = make_settings(
        tmp_path / "data", observability=ObservabilitySettings(), gc=GcSettings(grace=-5.0)
    )
    client = testing.TestClient(create_app(settings))
    api = Api(client, tmp_path)
    gone, _ = image(api, "team/gone", "v1", [os.urandom(5000)])
    api.request("DELETE", f"/v2/team/gone/manifests/{gone}")
    before = scrape(client)
    r = api.request("POST", "/v2/team/gone/gc?mode=unreferenced")
    assert r.status_code == 200, r.text
    after = scrape(client)
    assert (
        value(after, "berth_gc_runs_total", outcome="ok") - value(before, "berth_gc_runs_total", outcome="ok")
        == 1
    )
    reclaimed = value(after, "berth_gc_reclaimed_bytes_total") - value(
        before, "berth_gc_reclaimed_bytes_total"
    )
    assert reclaimed >= 5000
    blobs = value(after, "berth_gc_removed_total", kind="blobs") - value(
        before, "berth_gc_removed_total", kind="blobs"
    )
    assert blobs == r.json["blobs"] >= 2
