"""Storage usage (storage/usage.py), the `du` command (cli/) and the background walker that
feeds the usage gauges (observability/usage_gauges.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main
from observability.usage_gauges import UsageBoard, UsageRefresher
from storage.driver import StorageDriver
from storage.drivers.filesystem import FilesystemDriver
from storage.registry import Registry
from storage.usage import StorageUsage
from tests.conftest import build_api

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path):
    """Three repositories: `team/a` and `team/b` share a 5000-byte layer, `solo` has its own
    blobs only, `team/pending` has a layer and no manifest yet; plus one blob nobody links."""
    api = build_api(tmp_path)
    shared = os.urandom(5000)
    sizes = {}
    for repo in ("team/a", "team/b", "solo"):
        blobs = [os.urandom(100 + len(repo)), os.urandom(1000 * len(repo))]
        if repo != "solo":
            blobs.append(shared)
        descs = [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": api.push_blob(repo, b),
                "size": len(b),
            }
            for b in blobs
        ]
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **{k: descs[0][k] for k in ("digest", "size")},
            },
            "layers": descs[1:],
        }
        r, _, body = api.push_manifest(repo, "v1", doc)
        assert r.status_code == 201, r.text
        sizes[repo] = sum(len(b) for b in blobs) + len(body)
    api.push_blob("team/pending", b"p" * 70)
    sizes["team/pending"] = 70
    api.push_blob("gone", b"g" * 30)
    assert api.request("DELETE", f"/v2/gone/blobs/{_digest(b'g' * 30)}").status_code == 202
    return api.data_dir, sizes, len(shared)


def _digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_usage_per_repository_and_in_total(store):
    data_dir, sizes, shared = store
    report = StorageUsage(Registry(FilesystemDriver(data_dir))).measure()
    by_name = {u.name: u for u in report.repositories}
    assert {n: u.bytes for n, u in by_name.items()} == sizes
    assert [u.name for u in report.repositories] == sorted(sizes, key=lambda n: -sizes[n])  # largest first
    assert by_name["team/a"].exclusive_bytes == sizes["team/a"] - shared
    assert by_name["solo"].exclusive_bytes == sizes["solo"]
    assert report.shared_bytes == shared
    assert report.linked_bytes == sum(sizes.values()) - shared  # the shared layer once
    assert report.unlinked_bytes == 30  # `gone`'s blob: stored, linked by nobody
    assert report.stored_bytes == report.linked_bytes + 30
    assert report.stored_blobs == report.linked_blobs + 1
    assert report.missing_blobs == 0

    only = StorageUsage(Registry(FilesystemDriver(data_dir))).measure("team/b")
    assert [(u.name, u.bytes, u.exclusive_bytes) for u in only.repositories] == [
        ("team/b", sizes["team/b"], None)
    ]
    assert only.stored_bytes is None


def test_du_command(store, capsys):
    data_dir, sizes, _ = store
    env = {"REGISTRY_DATA_DIR": str(data_dir)}
    assert main(["du", "--json"], env=env) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["bytes"] for r in report["repositories"]} == sizes
    assert main(["du", "--top", "2"], env=env) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["REPOSITORY", "SIZE", "EXCLUSIVE", "BLOBS"]
    assert "(2 more repositories" in out and "Unlinked:" in out
    assert main(["du", "--repository", "nothing/here"], env=env) == 1
    assert "holds nothing" in capsys.readouterr().err
    assert main(["du", "--repository", "Bad Name"], env=env) == 2
    assert main(["du"], env={"REGISTRY_STORAGE": "floppy"}) == 2
    assert "invalid settings: REGISTRY_STORAGE" in capsys.readouterr().err


def test_du_stops_cleanly_on_ctrl_c(store, capsys):
    data_dir, _, _ = store

    class Interrupted(FilesystemDriver):
        calls = 0

        def list_children(self, prefix):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return super().list_children(prefix)

    driver = Interrupted(data_dir)
    assert main(["du"], env={}, driver=driver) == 130
    assert driver.calls == 3
    captured = capsys.readouterr()
    assert "berth du: interrupted" in captured.err
    assert captured.out == ""


def test_python_m_berth_du(store):
    data_dir, sizes, _ = store
    env = {**os.environ, "REGISTRY_DATA_DIR": str(data_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "berth", "du", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert {r["name"]: r["bytes"] for r in json.loads(proc.stdout)["repositories"]} == sizes


def test_one_walker_per_instance_and_every_worker_reads_its_result(store, tmp_path):
    data_dir, sizes, _ = store
    instance = tmp_path / "instance"
    instance.mkdir()
    registry = Registry(FilesystemDriver(data_dir))
    first = UsageRefresher(registry, UsageBoard(instance), 3600, 2, instance)
    second = UsageRefresher(registry, UsageBoard(instance), 3600, 2, instance)
    assert first.holds_lead()
    assert not second.holds_lead()  # another worker holds the instance's lock
    document = first.refresh()
    assert document is not None
    seen = UsageBoard(instance).latest()  # what any worker's scrape reads
    assert seen == json.loads(json.dumps(document))
    assert [r["name"] for r in seen["repositories"]] == sorted(sizes, key=lambda n: -sizes[n])[:2]
    assert seen["other"]["repositories"] == len(sizes) - 2


def test_walk_memory_does_not_grow_with_blob_sizes(tmp_path):
    """The walk sizes blobs with `size` and never reads them."""

    class NoReads(FilesystemDriver):
        def open_range(self, key, start=0, length=None):
            raise AssertionError("the usage walk read a blob")

        def read_bytes(self, key):
            raise AssertionError("the usage walk read an object")

    api = build_api(tmp_path)
    api.push_image("r/one", layers=3)
    driver: StorageDriver = NoReads(api.data_dir)
    report = StorageUsage(Registry(driver)).measure()
    assert report.repositories[0].blobs == 5  # config, three layers, the manifest


def test_usage_on_s3(make_s3_driver, tmp_path):
    from falcon import testing

    from app import create_app
    from tests.conftest import Api, make_settings

    driver = make_s3_driver()
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "unused"), driver=driver)), tmp_path)
    api.push_image("s3/one", layers=2)
    api.push_image("s3/two", layers=1)
    report = StorageUsage(Registry(driver)).measure()
    one = next(u for u in report.repositories if u.name == "s3/one")
    assert one.blobs == 4 and one.bytes == one.exclusive_bytes  # config, 2 layers, manifest
    assert report.stored_blobs == report.linked_blobs == 7
    assert report.unlinked_bytes == 0 and report.shared_bytes == 0
