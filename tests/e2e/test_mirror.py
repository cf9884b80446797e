"""Berth as a mirror (issue #13), with real upstreams on 127.0.0.1 and Berth under gunicorn's
gevent workers:

- tags stay fresh: with CNCF distribution (htpasswd) and another Berth (the token flow) as
  upstreams, each behind a proxy that can answer 429 or slow its HEADs, a tag moved upstream is
  seen after REGISTRY_UPSTREAM_TAG_TTL and not before, 50 concurrent requests over two workers
  make one upstream HEAD, a 429 serves the stored copy and holds the next check back, and with
  the upstream stopped the stored copy is served;
- a real dockerd with `registry-mirrors` pointing at Berth pulls `alpine` (a `library/` image a
  local distribution holds) through it, and again with that distribution stopped;
- a cold instance of 4 workers asks the token realm once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.jwt_keys import b64, keypair
from tests.upstream_fakes import SwitchProxy

from . import images
from .clients import DockerDaemon
from .process import RO, RW, Creds
from .servers import BerthServer, DistributionServer

pytestmark = pytest.mark.e2e

TTL = 1  # REGISTRY_UPSTREAM_TAG_TTL: whole seconds
LAYER = 64 * 1024
ACCEPT = ", ".join([images.OCI_MANIFEST, images.DOCKER_MANIFEST, images.OCI_INDEX])


@pytest.fixture
def berth_only(registry_class):
    if registry_class is not BerthServer:
        pytest.skip("pull-through is Berth's")


def push(base_url: str, creds: Creds, repo: str, tag: str, img: images.Image) -> None:
    """Push over the API (POST, then PUT with the bytes; the manifest last), as clients do."""
    session = requests.Session()
    session.auth = creds.tuple
    for blob in img.blobs():
        if session.head(f"{base_url}/v2/{repo}/blobs/{blob.digest}", timeout=30).status_code == 200:
            continue
        r = session.post(f"{base_url}/v2/{repo}/blobs/uploads/", timeout=30)
        assert r.status_code == 202, r.text
        location = requests.compat.urljoin(base_url, r.headers["Location"])
        separator = "&" if "?" in location else "?"
        r = session.put(f"{location}{separator}digest={blob.digest}", data=blob.data, timeout=30)
        assert r.status_code == 201, r.text
    r = session.put(
        f"{base_url}/v2/{repo}/manifests/{tag}",
        data=img.manifest.data,
        headers={"Content-Type": img.manifest.media_type},
        timeout=30,
    )
    assert r.status_code == 201, r.text


def access_pids(server: BerthServer, pattern: str) -> set[str]:
    """Worker pids (the access log's first field) of the requests matching `pattern`."""
    lines = Path(server.access_log_path).read_text().splitlines()
    return {line.split(" ", 1)[0] for line in lines if re.search(pattern, line)}


# -- tags stay fresh -------------------------------------------------------------------------------


@dataclass
class Mirrored:
    """A real upstream, the proxy in front of it, and the prefix the front gives it."""

    upstream: DistributionServer | BerthServer
    proxy: SwitchProxy
    prefix: str


@pytest.fixture
def mirrored(berth_only, tmp_path_factory):
    """CNCF distribution (htpasswd) under `dist/` and a token-flow Berth under `tok/`, each behind
    its proxy, and a front Berth (2 workers) pulling both through."""
    started = []
    try:
        dist = DistributionServer(tmp_path_factory.mktemp("up-dist"), auth=True).start()
        started.append(dist)
        signing, _ = keypair("EC")
        tok = BerthServer(
            tmp_path_factory.mktemp("up-token"),
            workers=1,
            extra_env={"REGISTRY_TOKEN_PRIVATE_KEY": b64(signing)},
        ).start()
        started.append(tok)
        assert requests.get(f"{tok.url}/v2/", timeout=10).headers["WWW-Authenticate"].startswith("Bearer ")
        sides = [Mirrored(dist, SwitchProxy(dist.url), "dist"), Mirrored(tok, SwitchProxy(tok.url), "tok")]
        started += [side.proxy for side in sides]
        entries = [
            # htpasswd has no read-only users; the token-flow Berth gets its pull-only user.
            {
                "registry": sides[0].proxy.url,
                "username": RW.username,
                "password_env": "DIST_PW",
                "prefix": "dist",
            },
            {
                "registry": sides[1].proxy.url,
                "username": RO.username,
                "password_env": "TOK_PW",
                "prefix": "tok",
            },
        ]
        workdir = tmp_path_factory.mktemp("front")
        front = BerthServer(
            workdir,
            workers=2,
            access_log=True,
            extra_env={
                "REGISTRIES_JSON": json.dumps(entries),
                "DIST_PW": RW.password,
                "TOK_PW": RO.password,
                "REGISTRY_UPSTREAM_TAG_TTL": str(TTL),
                "REGISTRY_UPSTREAM_TOKEN_DIR": str(workdir / "tokens"),
                "REGISTRY_UPSTREAM_CONNECT_TIMEOUT": "2",
                "REGISTRY_UPSTREAM_READ_TIMEOUT": "10",
            },
        ).start()
        started.append(front)
        yield sides, front
    finally:
        for server in reversed(started):
            server.stop()


def test_tags_stay_fresh_with_real_upstreams(mirrored):
    """Each step runs against both upstreams, so they share the waits for the TTL."""
    sides, front = mirrored
    session = front.session(front.ro)
    repo = "fresh/app"

    def digest_of_v1(side: Mirrored) -> str:
        url = f"{front.url}/v2/{side.prefix}/{repo}/manifests/v1"
        r = session.get(url, headers={"Accept": ACCEPT}, timeout=30)
        assert r.status_code == 200, r.text
        return r.headers["Docker-Content-Digest"]

    def heads(side: Mirrored) -> int:
        return side.proxy.count("HEAD", f"/v2/{repo}/manifests/v1")

    a, b, c, d = ({s.prefix: images.make_image(LAYER, n_layers=1) for s in sides} for _ in range(4))
    for side in sides:
        push(side.upstream.url, RW, repo, "v1", a[side.prefix])
        assert digest_of_v1(side) == a[side.prefix].digest

    # Moved upstream: not seen before the TTL, seen after it.
    for side in sides:
        push(side.upstream.url, RW, repo, "v1", b[side.prefix])
        assert digest_of_v1(side) == a[side.prefix].digest
        assert heads(side) == 0
    time.sleep(TTL + 0.3)
    for side in sides:
        assert digest_of_v1(side) == b[side.prefix].digest
        assert heads(side) == 1
        layer = b[side.prefix].layers[0]
        url = f"{front.url}/v2/{side.prefix}/{repo}/blobs/{layer.digest}"
        assert session.get(url, timeout=30).content == layer.data

    # 50 concurrent requests for a stale tag, over both workers: one HEAD upstream.
    for side in sides:
        push(side.upstream.url, RW, repo, "v1", c[side.prefix])
        side.proxy.head_delay = 1.5  # every request arrives while the check runs, or a TTL after
    time.sleep(TTL + 0.3)
    marker = len(Path(front.access_log_path).read_text().splitlines())
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(lambda i: (i % 2, digest_of_v1(sides[i % 2])), range(100)))
    burst = Path(front.access_log_path).read_text().splitlines()[marker:]
    assert len({line.split(" ", 1)[0] for line in burst}) == 2, "both workers served the burst"
    for n, side in enumerate(sides):
        side.proxy.head_delay = 0.0
        assert [digest for i, digest in answers if i == n] == [c[side.prefix].digest] * 50
        assert heads(side) == 2

    # 429: the stored copy is served, and the next check waits for Retry-After.
    for side in sides:
        side.proxy.mode, side.proxy.retry_after = "429", 5
    time.sleep(TTL + 0.3)
    limited_at = time.monotonic()
    for side in sides:
        assert digest_of_v1(side) == c[side.prefix].digest
        assert heads(side) == 3
        side.proxy.mode = "pass"
        push(side.upstream.url, RW, repo, "v1", d[side.prefix])
    time.sleep(TTL + 0.3)
    for side in sides:
        assert [digest_of_v1(side) for _ in range(6)] == [c[side.prefix].digest] * 6  # both workers
        assert heads(side) == 3

    # The upstreams stopped: once the check is due, the stored copy is served (and logged).
    for side in sides:
        side.upstream.stop()
    time.sleep(max(0.0, limited_at + 5.3 - time.monotonic()))
    for side in sides:
        assert [digest_of_v1(side) for _ in range(4)] == [c[side.prefix].digest] * 4
        assert heads(side) == 4  # the proxy is up, the registry behind it is not: one check
    logs = front.logs()
    assert logs.count("could not be checked upstream: serving the stored copy") == 2
    assert logs.count("asked to wait 5 s (429)") == 2
    assert RW.password not in logs and RO.password not in logs


# -- docker's registry-mirrors ----------------------------------------------------------------------


def test_docker_pulls_docker_hub_names_through_berth_as_its_registry_mirror(berth_only, tmp_path_factory):
    started = []
    daemon = None
    try:
        hub = DistributionServer(tmp_path_factory.mktemp("local-hub"), auth=True).start()
        started.append(hub)
        alpine = images.make_image(LAYER, docker=True)
        tool = images.make_image(LAYER, docker=True)
        push(hub.url, RW, "library/alpine", "latest", alpine)
        push(hub.url, RW, "acme/tool", "1.0", tool)
        workdir = tmp_path_factory.mktemp("mirror")
        mirror = BerthServer(
            workdir,
            workers=2,
            access_log=True,
            anonymous_pull=True,  # dockerd sends a mirror no credentials of its own
            extra_env={
                "REGISTRIES_JSON": json.dumps(
                    [{"registry": hub.url, "username": RW.username, "password_env": "HUB_PASSWORD"}]
                ),
                "HUB_PASSWORD": RW.password,
                "REGISTRY_UPSTREAM_TAG_TTL": "0",  # every pull asks: the second one meets a dead hub
                "REGISTRY_UPSTREAM_TOKEN_DIR": str(workdir / "tokens"),
                "REGISTRY_UPSTREAM_CONNECT_TIMEOUT": "2",
            },
        ).start()
        started.append(mirror)
        daemon = DockerDaemon(daemon_config={"registry-mirrors": [mirror.url]}).start()

        def pull_all() -> None:
            for ref, img in (("alpine", alpine), ("acme/tool:1.0", tool)):
                daemon.docker("pull", ref, timeout=120)
                image_id = daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
                assert image_id == img.config_digest

        pull_all()  # cold
        assert access_pids(mirror, r" /v2/library/alpine/manifests/latest\b")
        assert access_pids(mirror, r" /v2/acme/tool/manifests/1\.0\b")
        for img in (alpine, tool):
            daemon.docker("rmi", "-f", img.config_digest)

        hub.stop()
        pull_all()  # the hub is gone: Berth's copies
        assert mirror.logs().count("could not be checked upstream: serving the stored copy") >= 2
    finally:
        if daemon is not None:
            daemon.stop()
            shutil.rmtree(daemon.workdir, ignore_errors=True)
        for server in reversed(started):
            server.stop()


# -- one token for every worker -----------------------------------------------------------------


def test_a_cold_instance_of_four_workers_asks_for_one_token(berth_only, tmp_path_factory):
    """Real gunicorn workers sharing the token directory (tests/test_upstream_tokens.py does 8
    workers' token caches in one process)."""
    signing, _ = keypair("EC")
    started = []
    try:
        upstream = BerthServer(
            tmp_path_factory.mktemp("up-tokens"),
            workers=1,
            access_log=True,
            extra_env={"REGISTRY_TOKEN_PRIVATE_KEY": b64(signing)},
        ).start()
        started.append(upstream)
        img = images.make_image(LAYER, n_layers=3)
        push(upstream.url, RW, "cold/app", "v1", img)
        workdir = tmp_path_factory.mktemp("front-8")
        front = BerthServer(
            workdir,
            workers=4,
            access_log=True,
            extra_env={
                "REGISTRIES_JSON": json.dumps(
                    [{"registry": upstream.url, "username": RO.username, "password_env": "UP_PASSWORD"}]
                ),
                "UP_PASSWORD": RO.password,
                "REGISTRY_UPSTREAM_TOKEN_DIR": str(workdir / "tokens"),
            },
        ).start()
        started.append(front)

        def head(i: int) -> int:
            blob = img.blobs()[i % 4]
            r = requests.head(  # a connection each, so the workers share them out
                f"{front.url}/v2/cold/app/blobs/{blob.digest}", auth=RO.tuple, timeout=30
            )
            return r.status_code

        with ThreadPoolExecutor(64) as pool:
            assert list(pool.map(head, range(128))) == [200] * 128
        workers = access_pids(front, r" /v2/cold/app/blobs/")
        assert len(workers) >= 2, f"only {workers} served: the test proves nothing"
        token_requests = Path(upstream.access_log_path).read_text().count(" /v2/token?")
        assert token_requests == 1, f"{token_requests} token requests from {len(workers)} workers"

        tokens = workdir / "tokens"
        assert stat.S_IMODE(os.stat(tokens).st_mode) == 0o700
        for path in tokens.iterdir():
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert RO.password.encode() not in path.read_bytes()
    finally:
        for server in reversed(started):
            server.stop()
