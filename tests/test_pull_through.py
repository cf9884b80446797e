"""Pull-through over HTTP (Falcon's TestClient) with real upstream servers on 127.0.0.1: what is
missing here is fetched, verified and kept; corrupt or partial copies never become visible."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from falcon import testing

from app import create_app
from settings import S3Settings, TokenSettings
from storage import driver_from_settings, paths
from storage.digests import Digest
from tests.conftest import OCI_MANIFEST, RW_PASS, RW_USER, Api, basic, make_settings, sha256
from tests.jwt_keys import keypair, mint
from tests.upstream_fakes import HttpServer, StaticRegistry, TokenGate
from upstream.config import UpstreamSettings, parse_registries
from upstream.pullthrough import UpstreamBlobCorrupt

USERS = {"puller": "pull-s3cret"}
REPO = "team/app"
PRIVATE_KEY, PUBLIC_KEY = keypair("EC")


def _image(upstream: StaticRegistry, name: str = REPO, tag: str = "v1", layer_size: int = 2048):
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": os.urandom(4).hex()}).encode()
    layers = [os.urandom(layer_size + i) for i in range(2)]
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": upstream.add_blob(name, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": upstream.add_blob(name, data),
                "size": len(data),
            }
            for data in layers
        ],
    }
    body = json.dumps(doc, indent=2).encode()  # indented: exact bytes must survive
    digest = upstream.add_manifest(name, tag, body, OCI_MANIFEST)
    return digest, body, {sha256(b): b for b in [config, *layers]}


def _entries(*servers_or_urls, credentials: bool = True) -> list[dict]:
    entries = []
    for s in servers_or_urls:
        url = s if isinstance(s, str) else s.url
        entry = {"registry": url}
        if credentials and not isinstance(s, str):
            entry.update(username="puller", password_env="UPSTREAM_PASSWORD")
        entries.append(entry)
    return entries


@pytest.fixture(params=["filesystem", "s3"])
def backend(request, tmp_path):
    """Builds a Berth app (and a driver over the same storage, to inspect it) for upstreams."""

    def build(entries: list[dict], read_timeout: float = 5.0, **overrides):
        upstream = UpstreamSettings(
            parse_registries(json.dumps(entries), {"UPSTREAM_PASSWORD": USERS["puller"]}),
            connect_timeout=1.0,
            read_timeout=read_timeout,
        )
        extra = dict(overrides)
        if request.param == "s3":
            extra |= {
                "storage": "s3",
                "s3": S3Settings(bucket="berth-test", region="us-east-1", prefix="reg"),
            }
        settings = make_settings(tmp_path / "data", upstream=upstream, **extra)
        app = create_app(settings)
        return Api(testing.TestClient(app), tmp_path / "data"), app, driver_from_settings(settings)

    if request.param == "s3":
        request.getfixturevalue("s3_bucket")
    return build


@pytest.fixture
def upstream():
    server = StaticRegistry(users=USERS)
    yield server
    server.stop()


def _wsgi_get(app, path: str, headers: dict[str, str] | None = None):
    """Call the app as a WSGI server would; returns (status, headers, the response iterable)."""
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, {k.lower(): v for k, v in headers}

    env = testing.create_environ(path=path, headers=headers or basic(RW_USER, RW_PASS))
    result = app(env, start_response)
    return seen["status"], seen["headers"], result


def _nothing_staged(driver) -> bool:
    return driver.list_children(paths.UPLOADS) == []


def test_pulled_through_then_served_locally(backend, upstream):
    digest, body, blobs = _image(upstream)
    api, _, driver = backend(_entries(upstream))

    # HEAD by tag copies the manifest (docker pulls HEAD by tag, then GET by digest).
    r = api.request("HEAD", f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    assert int(r.headers["Content-Length"]) == len(body)
    assert r.headers["Content-Type"] == OCI_MANIFEST
    # A blob HEAD answers from upstream without copying.
    some = next(iter(blobs))
    r = api.request("HEAD", f"/v2/{REPO}/blobs/{some}")
    assert (r.status_code, int(r.headers["Content-Length"])) == (200, len(blobs[some]))
    assert not driver.exists(paths.blob_data(Digest.parse(some)))
    for blob_digest, data in blobs.items():
        r = api.request("GET", f"/v2/{REPO}/blobs/{blob_digest}", headers={"Range": "bytes=0-9"})
        assert r.status_code == 200  # a Range on a miss is answered with the whole blob
        assert r.content == data
        assert r.headers["Docker-Content-Digest"] == blob_digest
        assert int(r.headers["Content-Length"]) == len(data)
    assert _nothing_staged(driver)

    upstream.stop()  # everything is local now
    for ref in ("v1", digest):
        r = api.request("GET", f"/v2/{REPO}/manifests/{ref}")
        assert r.status_code == 200, r.text
        assert r.content == body
        assert r.headers["Content-Type"] == OCI_MANIFEST
    for blob_digest, data in blobs.items():
        r = api.request("GET", f"/v2/{REPO}/blobs/{blob_digest}", headers={"Range": "bytes=1-4"})
        assert (r.status_code, r.content) == (206, data[1:5])
    assert api.request("GET", f"/v2/{REPO}/tags/list").json["tags"] == ["v1"]


def test_corrupt_upstream_blob_is_refused_and_not_stored(backend, upstream):
    _, _, blobs = _image(upstream, layer_size=3 * 1024 * 1024)
    bad = max(blobs, key=lambda d: len(blobs[d]))
    upstream.corrupt.add(bad)
    _, app, driver = backend(_entries(upstream))

    status, _headers, result = _wsgi_get(app, f"/v2/{REPO}/blobs/{bad}")
    assert status.startswith("200")
    received = 0
    with pytest.raises(UpstreamBlobCorrupt):
        for chunk in result:
            received += len(chunk)
    result.close()
    # The last chunk was held back, so the client never got a complete body to trust.
    assert received < len(blobs[bad])
    assert not driver.exists(paths.blob_data(Digest.parse(bad)))
    assert not driver.exists(paths.layer_link(REPO, Digest.parse(bad)))
    assert _nothing_staged(driver)


def test_client_disconnect_leaves_no_partial_blob(backend, upstream):
    _, _, blobs = _image(upstream, layer_size=3 * 1024 * 1024)
    big = max(blobs, key=lambda d: len(blobs[d]))
    _, app, driver = backend(_entries(upstream))

    status, headers, result = _wsgi_get(app, f"/v2/{REPO}/blobs/{big}")
    assert status.startswith("200")
    assert int(headers["content-length"]) == len(blobs[big])
    first = next(iter(result))
    assert first == blobs[big][: len(first)]
    result.close()  # what the WSGI server does when the client hangs up
    assert not driver.exists(paths.blob_data(Digest.parse(big)))
    assert _nothing_staged(driver)

    # The next pull copies it whole.
    status, _, result = _wsgi_get(app, f"/v2/{REPO}/blobs/{big}")
    assert b"".join(result) == blobs[big]
    result.close()
    assert driver.read_bytes(paths.blob_data(Digest.parse(big))) == blobs[big]


def test_manifest_with_wrong_digest_is_refused(backend, upstream):
    digest, body, _ = _image(upstream)
    upstream.manifests[(REPO, digest)] = (body + b" ", OCI_MANIFEST)
    api, _, driver = backend(_entries(upstream))
    r = api.request("GET", f"/v2/{REPO}/manifests/{digest}")
    assert r.status_code == 503
    assert r.json["errors"][0]["code"] == "UNAVAILABLE"
    assert not driver.exists(paths.manifest_link(REPO, Digest.parse(digest)))


def test_fall_through_failing_upstreams_with_timeouts(backend, upstream):
    _digest, body, _ = _image(upstream)
    failing, empty = StaticRegistry(), StaticRegistry()
    failing.fail_with = 500
    blackhole = socket.socket()  # accepts connections (backlog) but never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(8)
    silent = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening
    try:
        entries = _entries(refused, silent, failing, empty, credentials=False) + _entries(upstream)
        api, _, _ = backend(entries, read_timeout=0.5)
        started = time.monotonic()
        r = api.request("GET", f"/v2/{REPO}/manifests/v1")
        assert (r.status_code, r.content) == (200, body), r.text
        assert time.monotonic() - started < 5
        # Nobody has it, and some upstreams could not say: 503 with an OCI body.
        r = api.request("GET", f"/v2/{REPO}/manifests/nope")
        assert r.status_code == 503
        assert r.json["errors"][0]["code"] == "UNAVAILABLE"

        api, _, _ = backend(_entries(empty, credentials=False) + _entries(upstream))
        r = api.request("GET", f"/v2/{REPO}/manifests/nope")
        assert (r.status_code, r.json["errors"][0]["code"]) == (404, "MANIFEST_UNKNOWN")
        r = api.request("GET", f"/v2/{REPO}/blobs/{sha256(b'nope')}")
        assert (r.status_code, r.json["errors"][0]["code"]) == (404, "BLOB_UNKNOWN")
        r = api.request("HEAD", f"/v2/{REPO}/blobs/{sha256(b'nope')}")
        assert r.status_code == 404
    finally:
        blackhole.close()
        closed.close()
        failing.stop()
        empty.stop()


def test_bearer_upstream_redirects_without_leaking_authorization(backend):
    origin = StaticRegistry()
    gate = TokenGate(origin.url, USERS)
    try:
        digest, body, blobs = _image(origin)
        # The gate's "storage" is another port of 127.0.0.1: allowed only because the entry
        # names it and allows private addresses.
        entry = _entries(gate)[0]
        entry.update(redirect_hosts=[gate.storage.url.removeprefix("http://")], allow_private_redirects=True)
        api, _, _ = backend([entry])
        assert api.request("GET", f"/v2/{REPO}/manifests/{digest}").content == body
        for blob_digest, data in blobs.items():
            r = api.request("GET", f"/v2/{REPO}/blobs/{blob_digest}")
            assert (r.status_code, r.content) == (200, data)
        storage_hits = gate.storage.requests
        assert len(storage_hits) == len(blobs)
        assert all("authorization" not in headers for _, _, headers in storage_hits)
        gated = [h for m, p, h in gate.requests if "/blobs/" in p]
        assert gated and all(h["authorization"].startswith("Bearer ") for h in gated)
        assert len(gate.token_requests) == 1  # one scope, one token
    finally:
        gate.stop()
        origin.stop()


def test_pushes_never_go_upstream(backend, upstream):
    _digest, body, blobs = _image(upstream)
    api, _, _ = backend(_entries(upstream))
    r = api.request("PUT", f"/v2/{REPO}/manifests/v2", body=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400
    assert r.json["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    api.push_blob(REPO, b"local only")
    r = api.request("POST", f"/v2/{REPO}/blobs/uploads/?mount={next(iter(blobs))}&from=other/repo")
    assert r.status_code == 202
    assert upstream.requests == []


def test_prefix_and_invalid_references(backend, upstream):
    _digest, body, _ = _image(upstream, name="mirror/team/app")
    api, _, _ = backend(
        [{"registry": f"{upstream.url}/mirror/", "username": "puller", "password_env": "UPSTREAM_PASSWORD"}]
    )
    assert api.request("GET", f"/v2/{REPO}/manifests/v1").content == body
    before = len(upstream.requests)
    assert api.request("GET", f"/v2/{REPO}/manifests/-bad-tag").status_code == 404
    assert api.request("GET", f"/v2/{REPO}/manifests/sha256:abc").status_code == 400
    assert len(upstream.requests) == before


def test_without_upstreams_nothing_changes(tmp_path: Path):
    settings = make_settings(tmp_path / "data")
    api = Api(testing.TestClient(create_app(settings)), tmp_path / "data")
    assert api.request("GET", f"/v2/{REPO}/manifests/v1").status_code == 404
    assert api.request("HEAD", f"/v2/{REPO}/blobs/{sha256(b'x')}").status_code == 404


# -- another repository's bytes -------------------------------------------------------------


def _catchall_caller() -> dict[str, str]:
    """A token that may pull only catchall/* (what a pull-through-only grant looks like)."""
    access = [{"type": "repository", "name": "catchall/*", "actions": ["pull"]}]
    return {"Authorization": f"Bearer {mint(PRIVATE_KEY, sub='mirror-user', access=access)}"}


def _claims_every_blob(size: int, get: str) -> HttpServer:
    """An upstream that answers every blob HEAD with 200 (whatever the digest) and then, on the
    GET, either has nothing (404) or sends other bytes of the claimed size."""

    def handle(method, path, query, headers, body):
        if path == "/v2/":
            return 200, {}, b""
        digest = path.rsplit("/", 1)[-1]
        if method == "HEAD":
            return 200, {"Content-Length": str(size), "Docker-Content-Digest": digest}, b""
        if get == "404":
            return 404, {"Content-Type": "application/json"}, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}'
        return 200, {"Docker-Content-Digest": digest}, os.urandom(size)

    return HttpServer(handle)


@pytest.mark.parametrize("get", ["404", "other bytes"])
def test_upstream_claims_never_open_another_repositorys_blob(backend, get):
    secret = os.urandom(3 * 1024 * 1024 + 5)
    liar = _claims_every_blob(len(secret), get)
    try:
        api, app, driver = backend(
            _entries(liar.url, credentials=False), tokens=TokenSettings(public_key=PUBLIC_KEY)
        )
        digest = api.push_blob("private/app", secret)  # pushed by the read-write user
        key = Digest.parse(digest)
        caller = _catchall_caller()
        assert api.request("GET", f"/v2/private/app/blobs/{digest}", headers=caller).status_code == 403

        status, _headers, result = _wsgi_get(app, f"/v2/catchall/x/blobs/{digest}", caller)
        received = b""
        if get == "404":
            assert status.startswith("404")
            received = b"".join(result)
        else:
            assert status.startswith("200")
            with pytest.raises(UpstreamBlobCorrupt):
                for chunk in result:
                    received += chunk
        if hasattr(result, "close"):
            result.close()
        assert secret[:4096] not in received
        assert not driver.exists(paths.layer_link("catchall/x", key))
        assert _nothing_staged(driver)
        assert driver.read_bytes(paths.blob_data(key)) == secret  # the stored copy is untouched

        # A HEAD answers with the upstream's claim (it says nothing about our bytes) and links
        # nothing, so the next GET still goes upstream and still misses.
        r = api.request("HEAD", f"/v2/catchall/x/blobs/{digest}", headers=caller)
        assert (r.status_code, int(r.headers["Content-Length"])) == (200, len(secret))
        assert not driver.exists(paths.layer_link("catchall/x", key))
        if get == "404":
            r = api.request("GET", f"/v2/catchall/x/blobs/{digest}", headers=caller)
            assert (r.status_code, r.json["errors"][0]["code"]) == (404, "BLOB_UNKNOWN")
        else:
            with pytest.raises(UpstreamBlobCorrupt):
                api.request("GET", f"/v2/catchall/x/blobs/{digest}", headers=caller)
        assert not driver.exists(paths.layer_link("catchall/x", key))
    finally:
        liar.stop()


def test_upstream_with_the_same_blob_links_the_stored_copy(backend, upstream):
    shared = os.urandom(2 * 1024 * 1024 + 1)
    digest = upstream.add_blob("catchall/x", shared)
    api, _, driver = backend(_entries(upstream), tokens=TokenSettings(public_key=PUBLIC_KEY))
    assert api.push_blob("private/app", shared) == digest
    key = Digest.parse(digest)
    caller = _catchall_caller()

    r = api.request("HEAD", f"/v2/catchall/x/blobs/{digest}", headers=caller)
    assert (r.status_code, int(r.headers["Content-Length"])) == (200, len(shared))
    assert not driver.exists(paths.layer_link("catchall/x", key))
    r = api.request("GET", f"/v2/catchall/x/blobs/{digest}", headers=caller)
    assert (r.status_code, r.content) == (200, shared)
    assert int(r.headers["Content-Length"]) == len(shared)
    assert driver.exists(paths.layer_link("catchall/x", key))
    assert _nothing_staged(driver)
    fetched = [p for m, p, _ in upstream.requests if m == "GET" and "/blobs/" in p]
    assert fetched == [f"/v2/catchall/x/blobs/{digest}"]  # the upstream proved it has the bytes

    upstream.stop()  # linked: served locally from now on
    r = api.request("GET", f"/v2/catchall/x/blobs/{digest}", headers=caller)
    assert (r.status_code, r.content) == (200, shared)
