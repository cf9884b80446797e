"""Pull-through with real upstreams on 127.0.0.1: Berth in front, with REGISTRIES_JSON naming
CNCF distribution (htpasswd Basic auth) and another Berth that speaks Docker's Bearer token flow
(REGISTRY_TOKEN_PRIVATE_KEY, realm /v2/token). skopeo and docker pull images that exist only
upstream; with the upstreams stopped the same pulls are served from Berth's copies. And a
misbehaving upstream (endless and trickling blobs, a redirect to another local port) in front
of Berth under gunicorn's gevent workers: bounded, refused, logged once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.jwt_keys import b64, keypair
from tests.upstream_fakes import StaticRegistry, endless, registry, sha256, trickle

from . import images
from .process import RO, RW, CommandError
from .servers import BerthServer, DistributionServer

pytestmark = pytest.mark.e2e

LAYER = 1 << 20


@dataclass
class Upstreams:
    distribution: DistributionServer
    token: BerthServer  # Bearer token flow
    front: BerthServer  # pulls through both

    def stop_upstreams(self) -> None:
        self.distribution.stop()
        self.token.stop()

    def token_requests(self) -> int:
        log = Path(self.token.access_log_path).read_text()
        return len(re.findall(r" /v2/token\?", log))

    def content_requests(self, repo: str) -> int:
        log = Path(self.token.access_log_path).read_text()
        return len(re.findall(rf" /v2/{re.escape(repo)}/(?:blobs|manifests)/", log))


@pytest.fixture
def upstreams(registry_class, tmp_path_factory):
    if registry_class is not BerthServer:
        pytest.skip("pull-through is Berth's")
    signing, _ = keypair("EC")
    started = []
    try:
        distribution = DistributionServer(tmp_path_factory.mktemp("up-distribution"), auth=True).start()
        started.append(distribution)
        token = BerthServer(
            tmp_path_factory.mktemp("up-token"),
            workers=2,
            access_log=True,
            extra_env={"REGISTRY_TOKEN_PRIVATE_KEY": b64(signing)},
        ).start()
        started.append(token)
        registries = [
            {"registry": distribution.url, "username": RW.username, "password_env": "UP_DIST_PASSWORD"},
            {"registry": token.url, "username": RO.username, "password_env": "UP_TOKEN_PASSWORD"},
        ]
        front_dir = tmp_path_factory.mktemp("front")
        front = BerthServer(
            front_dir,
            workers=2,
            access_log=True,
            extra_env={
                "REGISTRY_UPSTREAM_TOKEN_DIR": str(front_dir / "tokens"),  # this instance's own
                "REGISTRIES_JSON": json.dumps(registries),
                "UP_DIST_PASSWORD": RW.password,
                "UP_TOKEN_PASSWORD": RO.password,
                "REGISTRY_UPSTREAM_CONNECT_TIMEOUT": "2",
                "REGISTRY_UPSTREAM_READ_TIMEOUT": "20",
            },
        ).start()
        started.append(front)
        # The challenge is what makes upstream 2 a token-flow registry.
        assert requests.get(f"{token.url}/v2/", timeout=10).headers["WWW-Authenticate"].startswith("Bearer ")
        yield Upstreams(distribution, token, front)
    finally:
        for server in reversed(started):
            server.stop()
    # Credentials of the upstreams never reach the front's log.
    assert RW.password not in front.logs() and RO.password not in front.logs()


def _push(skopeo, upstream, src: str, repo: str, tag: str) -> None:
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        upstream.rw.colon,
        *(["--all"] if "index" in repo else []),
        src,
        f"docker://{upstream.host}/{repo}:{tag}",
    )


def _pull(skopeo, front, ref: str, dest: Path, tag: str | None, all_arches: bool = False) -> None:
    """Into an OCI layout, or with no tag into a `dir:` (which keeps Docker manifests as they
    are: an OCI layout would convert them)."""
    args = ["--src-tls-verify=false", "--src-creds", front.ro.colon]  # a pull-only user suffices
    dest.parent.mkdir(parents=True, exist_ok=True)
    target = f"oci:{dest}:{tag}" if tag else f"dir:{dest}"
    skopeo("copy", *args, *(["--all"] if all_arches else []), f"docker://{front.host}/{ref}", target)


def _assert_image(out: Path, tag: str, img: images.Image) -> None:
    desc, manifest = images.read_oci_layout(out, tag)
    assert (desc["digest"], manifest) == (img.digest, img.manifest.data)
    for blob in img.blobs():
        assert images.read_oci_blob(out, blob.digest) == blob.data


def _assert_dir_image(out: Path, img: images.Image) -> None:
    assert (out / "manifest.json").read_bytes() == img.manifest.data
    for blob in img.blobs():
        assert (out / blob.digest.split(":", 1)[1]).read_bytes() == blob.data


def _assert_index(out: Path, tag: str, index: images.Index) -> None:
    desc, manifest = images.read_oci_layout(out, tag)
    assert (desc["digest"], manifest) == (index.digest, index.manifest.data)
    for child in index.children:
        assert images.read_oci_blob(out, child.digest) == child.manifest.data
        for blob in child.blobs():
            assert images.read_oci_blob(out, blob.digest) == blob.data


def test_skopeo_pulls_through_and_keeps_copies(upstreams, skopeo, tmp_path):
    oci = images.make_image(LAYER)
    docker = images.make_image(LAYER, docker=True)
    index = images.make_index(LAYER // 2)
    _push(
        skopeo, upstreams.distribution, images.write_oci_layout(tmp_path / "oci", oci, "v1"), "pt/oci", "v1"
    )
    _push(skopeo, upstreams.token, images.write_dir_image(tmp_path / "docker", docker), "pt/docker", "v1")
    _push(skopeo, upstreams.token, images.write_oci_index_layout(tmp_path / "index", index), "pt/index", "v1")
    front = upstreams.front

    def pull_all(out: Path) -> None:
        _pull(skopeo, front, "pt/oci:v1", out / "oci", "v1")
        _pull(skopeo, front, f"pt/oci@{oci.digest}", out / "oci-digest", "d")
        _pull(skopeo, front, "pt/docker:v1", out / "docker", None)
        _pull(skopeo, front, f"pt/docker@{docker.digest}", out / "docker-digest", None)
        _pull(skopeo, front, "pt/index:v1", out / "index", "v1", all_arches=True)
        _pull(skopeo, front, f"pt/index@{index.digest}", out / "index-digest", "d", all_arches=True)
        _assert_image(out / "oci", "v1", oci)
        _assert_image(out / "oci-digest", "d", oci)
        _assert_dir_image(out / "docker", docker)
        _assert_dir_image(out / "docker-digest", docker)
        _assert_index(out / "index", "v1", index)
        _assert_index(out / "index-digest", "d", index)

    pushed = upstreams.token_requests()  # skopeo's own, for its pushes
    pull_all(tmp_path / "first")
    # Two repositories behind the token flow: a token per scope, shared by the two workers.
    assert upstreams.token_requests() - pushed == 2
    r = front.session(front.ro).get(
        f"{front.url}/v2/pt/docker/manifests/v1", headers={"Accept": images.DOCKER_MANIFEST}, timeout=30
    )
    assert (r.content, r.headers["Content-Type"]) == (docker.manifest.data, images.DOCKER_MANIFEST)

    upstreams.stop_upstreams()
    pull_all(tmp_path / "again")
    tags = front.session(front.ro).get(f"{front.url}/v2/pt/index/tags/list", timeout=30).json()
    assert tags["tags"] == ["v1"]


def test_docker_pulls_through(upstreams, skopeo, docker_daemon, tmp_path):
    schema2 = images.make_image(LAYER, docker=True)
    oci = images.make_image(LAYER)
    _push(
        skopeo, upstreams.distribution, images.write_dir_image(tmp_path / "s2", schema2), "pt/d-schema2", "v1"
    )
    _push(skopeo, upstreams.token, images.write_oci_layout(tmp_path / "oci", oci, "v1"), "pt/d-oci", "v1")
    front = upstreams.front
    docker_daemon.login(front.host, RO)
    refs = {
        f"{front.host}/pt/d-schema2:v1": schema2,
        f"{front.host}/pt/d-schema2@{schema2.digest}": schema2,
        f"{front.host}/pt/d-oci:v1": oci,
        f"{front.host}/pt/d-oci@{oci.digest}": oci,
    }

    def pull_all() -> None:
        for ref, img in refs.items():
            docker_daemon.docker("pull", ref, timeout=120)
            image_id = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
            assert image_id == img.config_digest

    def remove_all() -> None:
        for img in refs.values():
            docker_daemon.docker("rmi", "-f", img.config_digest, check=False)

    try:
        pull_all()
        remove_all()
        upstreams.stop_upstreams()
        pull_all()
    finally:
        remove_all()


def test_corrupt_upstream_blob_is_refused_and_not_stored(upstreams, skopeo, tmp_path):
    img = images.make_image(LAYER)
    dist = upstreams.distribution
    _push(skopeo, dist, images.write_oci_layout(tmp_path / "src", img, "v1"), "pt/corrupt", "v1")
    bad = img.layers[0].digest
    hexd = bad.split(":", 1)[1]
    stored = dist.data_dir / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, wrong bytes
    stored.write_bytes(bytes(data))

    front = upstreams.front
    with pytest.raises(CommandError):
        _pull(skopeo, front, "pt/corrupt:v1", tmp_path / "out", "v1")
    with pytest.raises(requests.RequestException):
        r = front.session(front.ro).get(f"{front.url}/v2/pt/corrupt/blobs/{bad}", timeout=30)
        assert hashlib.sha256(r.content).hexdigest() == hexd  # never reached: the body breaks off
    root = front.data_dir
    assert not (root / "blobs/sha256" / hexd[:2] / hexd / "data").exists()
    assert not (root / "repositories/pt/corrupt/_layers/sha256" / hexd).exists()
    assert not list((root / "uploads").glob("*/data")) if (root / "uploads").exists() else True
    assert "failed verification" in front.logs() or "discarded" in front.logs()
    # The intact blobs of the same image were copied.
    good = img.layers[1].digest.split(":", 1)[1]
    assert (root / "blobs/sha256" / good[:2] / good / "data").read_bytes() == img.layers[1].data


def test_upstream_tokens_are_cached(upstreams, skopeo, tmp_path):
    img = images.make_image(LAYER // 4, n_layers=3)
    _push(skopeo, upstreams.token, images.write_oci_layout(tmp_path / "src", img, "v1"), "pt/cached", "v1")
    front = upstreams.front
    session = front.session(front.ro)
    pushed = upstreams.token_requests()
    for _ in range(10):
        for blob in img.blobs():  # blob HEADs answer from upstream each time (no copy)
            r = session.head(f"{front.url}/v2/pt/cached/blobs/{blob.digest}", timeout=30)
            assert (r.status_code, r.headers["Docker-Content-Digest"]) == (200, blob.digest)
    for n in range(10):  # misses of tags that do not exist go upstream each time too
        assert session.get(f"{front.url}/v2/pt/cached/manifests/nope-{n}", timeout=30).status_code == 404
    _pull(skopeo, front, "pt/cached:v1", tmp_path / "out", "v1")
    _assert_image(tmp_path / "out", "v1", img)
    assert upstreams.content_requests("pt/cached") >= 50 + 10  # and skopeo's pushes
    assert upstreams.token_requests() - pushed == 1  # one scope, shared by the two front workers


def test_misbehaving_upstream_is_bounded_under_gunicorn(registry_class, tmp_path_factory):
    if registry_class is not BerthServer:
        pytest.skip("pull-through is Berth's")
    slow = os.urandom(1000)
    internal = StaticRegistry()  # another port of this machine, which would answer
    hidden = internal.add_blob("pt/bad", b"internal only")
    endless_digest, slow_digest = sha256(b"endless"), sha256(slow)
    upstream = registry(
        {
            f"/v2/pt/bad/blobs/{endless_digest}": lambda: (200, {}, endless(os.urandom(65536), cap=64 << 20)),
            f"/v2/pt/bad/blobs/{slow_digest}": lambda: (
                200,
                {"Content-Length": str(len(slow)), "Docker-Content-Digest": slow_digest},
                trickle(slow, 0.2),
            ),
            f"/v2/pt/bad/blobs/{hidden}": (
                307,
                {"Location": f"{internal.url}/v2/pt/bad/blobs/{hidden}"},
                b"",
            ),
        }
    )
    front = BerthServer(
        tmp_path_factory.mktemp("front-bounded"),
        workers=1,
        extra_env={
            "REGISTRIES_JSON": json.dumps([{"registry": upstream.url}]),
            "REGISTRY_UPSTREAM_READ_TIMEOUT": "1",
            "REGISTRY_UPSTREAM_MIN_RATE": "1024",  # 1000 bytes: 1 + 1 s in all
            "REGISTRY_UPSTREAM_MAX_BLOB_BYTES": str(4 << 20),
        },
    )
    try:
        front.start()

        def pull(digest: str) -> tuple[int, int, float]:
            started, received = time.monotonic(), 0
            # Cut: after the headers, or before them when no chunk had gone out yet.
            with pytest.raises(requests.RequestException):
                r = front.session(front.ro).get(
                    f"{front.url}/v2/pt/bad/blobs/{digest}", stream=True, timeout=30
                )
                assert r.status_code == 200
                for chunk in r.iter_content(65536):
                    received += len(chunk)
            return received, upstream.sent, time.monotonic() - started

        received, sent, _ = pull(endless_digest)
        assert received <= 4 << 20
        assert sent < 40 << 20
        received, _, took = pull(slow_digest)
        assert received < len(slow)
        assert took < 8
        session = front.session(front.ro)
        r = session.get(f"{front.url}/v2/pt/bad/blobs/{hidden}", timeout=30)
        assert r.status_code == 503
        assert internal.requests == []
        assert session.get(f"{front.url}/v2/", timeout=10).status_code == 200  # the worker is fine
    finally:
        front.stop()
        upstream.stop()
        internal.stop()
    # (Up to the stop: closing idle keep-alive connections at a stop logs a traceback of its own.)
    logs = front.logs().split("Handling signal: term")[0]
    assert logs.count("discarded, client connection cut") == 2
    assert "redirect to http://127.0.0.1:" in logs
    assert "Traceback" not in logs and "Error handling request" not in logs
    root = front.data_dir
    assert not list(root.glob("blobs/**/data")) and not list(root.glob("repositories/pt/bad/_layers/*/*"))
