"""Upstream tokens shared by worker processes (issue #13): each "worker" below is its own
TokenCache and client, as in separate gunicorn workers, sharing only a token directory. A cold
start with many workers asks the realm once; the files hold tokens and expiries only, never a
password, and a directory that is not private is not used."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.upstream_fakes import StaticRegistry, TokenGate
from upstream.client import UpstreamClient, new_pools
from upstream.config import UpstreamSettings, parse_registries
from upstream.token_files import TokenFiles
from upstream.tokens import TokenCache

PASSWORD = "pull-s3cret-d0-not-write"
USERS = {"puller": PASSWORD}
SETTINGS = UpstreamSettings(connect_timeout=5, read_timeout=10)


@pytest.fixture
def gate():
    backend = StaticRegistry()
    backend.add_manifest(
        "team/app", "v1", b'{"schemaVersion": 2}', "application/vnd.oci.image.manifest.v1+json"
    )
    gate = TokenGate(backend.url, USERS, expires_in=300)
    yield gate
    gate.stop()
    backend.stop()


def _worker(url: str, directory) -> UpstreamClient:
    (registry,) = parse_registries(
        json.dumps([{"registry": url, "username": "puller", "password_env": "P"}]), {"P": PASSWORD}
    )
    files = TokenFiles(directory, lock_wait=5) if directory is not None else None
    return UpstreamClient(registry, new_pools(), SETTINGS, TokenCache(files=files))


def _get(client: UpstreamClient) -> int:
    response = client.request("GET", "team/app", "manifests/v1")
    response.read()
    response.release_conn()
    return response.status


def test_a_cold_instance_of_eight_workers_asks_for_a_token_once(gate, tmp_path):
    directory = tmp_path / "tokens"
    workers = [_worker(gate.url, directory) for _ in range(8)]
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda i: _get(workers[i % 8]), range(64)))
    assert statuses == [200] * 64
    assert len(gate.token_requests) == 1

    # Only tokens and expiries, in private files: never the password.
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    files = sorted(p for p in directory.iterdir() if p.suffix == ".json")
    assert len(files) == 1
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    doc = json.loads(files[0].read_text())
    assert set(doc) == {"token", "expires"} and doc["token"] in gate.tokens
    assert 200 < doc["expires"] - time.time() <= 300
    for path in directory.iterdir():
        assert PASSWORD.encode() not in path.read_bytes()
        assert "puller" not in path.name

    # A restarted worker picks the token up too; a token the upstream refuses is replaced once
    # for everyone.
    assert _get(_worker(gate.url, directory)) == 200
    assert len(gate.token_requests) == 1
    gate.tokens.clear()
    assert _get(workers[0]) == 200
    assert _get(workers[1]) == 200  # its own cached token is refused, then the new shared one
    assert len(gate.token_requests) == 2


def test_without_a_token_directory_each_worker_asks(gate):
    workers = [_worker(gate.url, None) for _ in range(3)]
    for worker in workers:
        assert _get(worker) == 200
    assert len(gate.token_requests) == 3


def test_a_directory_that_is_not_private_is_not_used(gate, tmp_path, caplog):
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)  # noqa: S103 - as another user's or a careless one could be
    with caplog.at_level(logging.WARNING, logger="berth.upstream"):
        workers = [_worker(gate.url, directory) for _ in range(2)]
        assert [_get(w) for w in workers] == [200, 200]
    assert "must be a directory of this user with permissions 0700" in caplog.text
    assert list(directory.iterdir()) == []
    assert len(gate.token_requests) == 2  # still works, in each worker's memory


def test_token_files_refuse_links_and_strangers(tmp_path):
    files = TokenFiles(tmp_path / "t", lock_wait=0.1)
    files.write("k", "tok", time.time() + 60)
    assert files.read("k")[0] == "tok"
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"token": "planted", "expires": time.time() + 60}))
    (tmp_path / "t" / "k.json").unlink()
    (tmp_path / "t" / "k.json").symlink_to(target)
    assert files.read("k") is None  # a link is not followed
    files.remove("k", "other")  # only the token it was told about is removed
    assert (tmp_path / "t" / "k.json").is_symlink()
