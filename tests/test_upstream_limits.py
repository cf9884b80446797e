"""Every upstream body is bounded (issue #10, item 7): /v2/ and token-realm answers are never
read past 64 KiB, every body has an overall deadline (READ_TIMEOUT + size / MIN_RATE: a body
that trickles a byte per read timeout cannot hold a request forever), and a blob relay stops at
the upstream's Content-Length or REGISTRY_UPSTREAM_MAX_BLOB_BYTES. Fake upstreams on 127.0.0.1
stream endless, huge and slow bodies; each is capped on its side too, so that code without the
bounds fails these tests instead of hanging or eating the machine's memory."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from settings import Settings, SettingsError
from tests.conftest import OCI_MANIFEST, sha256
from tests.upstream_fakes import HttpServer, endless, nothing_stored, pull_through_app, registry, trickle
from upstream.relay import RelayAborted

REPO = "team/app"
MiB = 1024 * 1024
CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2}
MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG, "layers": []}
).encode()
SLOW = {"read_timeout": 0.5}  # each read may wait 0.5 s; the whole body a little more


def _timed(api, method: str, path: str):
    started = time.monotonic()
    r = api.request(method, path)
    return r, time.monotonic() - started


def test_huge_v2_answer_is_not_read(tmp_path):
    upstream = registry(
        {
            "/v2/": lambda: (200, {"Content-Type": "text/plain"}, endless()),
            f"/v2/{REPO}/manifests/v1": (200, {"Content-Type": OCI_MANIFEST}, MANIFEST),
        }
    )
    try:
        api, _, _ = pull_through_app(tmp_path, [{"registry": upstream.url}])
        r, took = _timed(api, "GET", f"/v2/{REPO}/manifests/v1")
        assert (r.status_code, r.content) == (200, MANIFEST)
        assert took < 5
        # Closed, not read: at most what the socket buffers took before the cut.
        assert upstream.sent < 32 * MiB
    finally:
        upstream.stop()


def _token_upstream(realm_answer) -> tuple[HttpServer, HttpServer]:
    realm = HttpServer(lambda *a: realm_answer())

    def handle(method, path, query, headers, body):
        if headers.get("authorization") != "Bearer t0k":
            return 401, {"WWW-Authenticate": f'Bearer realm="{upstream.url}/token",service="s"'}, b""
        return 200, {"Content-Type": OCI_MANIFEST}, MANIFEST

    def route(method, path, query, headers, body):
        return (
            realm.handler(method, path, query, headers, body)
            if path == "/token"
            else handle(method, path, query, headers, body)
        )

    upstream = HttpServer(route)
    return upstream, realm


def test_huge_token_answer_fails_quickly(tmp_path):
    upstream, realm = _token_upstream(lambda: (200, {"Content-Type": "application/json"}, endless()))
    try:
        api, _, _ = pull_through_app(tmp_path, [{"registry": upstream.url}])
        r, took = _timed(api, "GET", f"/v2/{REPO}/manifests/v1")
        assert (r.status_code, r.json["errors"][0]["code"]) == (503, "UNAVAILABLE")
        assert took < 5
        assert upstream.sent < 32 * MiB
    finally:
        upstream.stop()
        realm.stop()


def test_trickling_token_answer_meets_its_deadline(tmp_path):
    token = json.dumps({"token": "t0k", "padding": "x" * 100}).encode()
    upstream, realm = _token_upstream(
        lambda: (
            200,
            {"Content-Type": "application/json", "Content-Length": str(len(token))},
            trickle(token, 0.1),
        )
    )
    try:
        # 0.5 s per read, and 0.5 + 64 KiB / 128 KiB/s = 1 s for the whole answer.
        api, _, _ = pull_through_app(tmp_path, [{"registry": upstream.url}], **SLOW)
        r, took = _timed(api, "GET", f"/v2/{REPO}/manifests/v1")
        assert r.status_code == 503
        assert took < 4
    finally:
        upstream.stop()
        realm.stop()


def test_trickling_manifest_and_error_bodies_meet_their_deadline(tmp_path):
    padded = MANIFEST + b" " * 200
    slow_manifest = registry(
        {
            f"/v2/{REPO}/manifests/v1": lambda: (
                200,
                {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(padded))},
                trickle(padded, 0.1),
            )
        }
    )
    slow_404 = registry(
        {f"/v2/{REPO}/manifests/v2": lambda: (404, {"Content-Length": "1000"}, trickle(b"x" * 1000, 0.1))}
    )
    try:
        # The manifest's deadline comes from its Content-Length: 0.5 + 300 B / 128 KiB/s.
        api, _, _ = pull_through_app(tmp_path / "a", [{"registry": slow_manifest.url}], **SLOW)
        r, took = _timed(api, "GET", f"/v2/{REPO}/manifests/v1")
        assert (r.status_code, took < 4) == (503, True)
        assert api.request("GET", f"/v2/{REPO}/tags/list").status_code == 404
        # A 404's body is drained only while it is small and quick.
        api, _, _ = pull_through_app(tmp_path / "b", [{"registry": slow_404.url}], **SLOW)
        r, took = _timed(api, "GET", f"/v2/{REPO}/manifests/v2")
        assert (r.status_code, took < 4) == (404, True)
    finally:
        slow_manifest.stop()
        slow_404.stop()


def _drain(result) -> tuple[bytes, BaseException | None]:
    received, error = b"", None
    try:
        for chunk in result:
            received += chunk
    except Exception as exc:
        error = exc
    finally:
        result.close()
    return received, error


def _wsgi_get(app, path: str):
    from falcon import testing

    from tests.conftest import RW_PASS, RW_USER, basic

    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"] = status

    result = app(testing.create_environ(path=path, headers=basic(RW_USER, RW_PASS)), start_response)
    return seen["status"], result


def test_endless_blob_stops_at_max_blob_bytes(tmp_path, caplog):
    digest = sha256(b"whatever it claims")
    upstream = registry(
        {f"/v2/{REPO}/blobs/{digest}": lambda: (200, {}, endless(os.urandom(65536), cap=64 * MiB))}
    )
    try:
        _, app, driver = pull_through_app(tmp_path, [{"registry": upstream.url}], max_blob_bytes=4 * MiB)
        started = time.monotonic()
        status, result = _wsgi_get(app, f"/v2/{REPO}/blobs/{digest}")
        assert status.startswith("200")  # chunked: the size was not known
        received, error = _drain(result)
        assert isinstance(error, RelayAborted)
        assert "more than 4194304 bytes" in str(error)
        assert len(received) <= 4 * MiB
        assert time.monotonic() - started < 10
        assert upstream.sent < 40 * MiB
        assert nothing_stored(driver, REPO, digest)
        assert caplog.text.count("discarded, client connection cut") == 1
    finally:
        upstream.stop()


def test_blob_larger_than_max_is_refused_before_a_byte(tmp_path):
    digest = sha256(b"big")
    headers = {"Content-Length": str(8 * MiB), "Docker-Content-Digest": digest}
    upstream = registry(
        {
            f"HEAD /v2/{REPO}/blobs/{digest}": (200, headers, b""),
            f"/v2/{REPO}/blobs/{digest}": lambda: (200, dict(headers), endless(b"\0" * 65536, cap=8 * MiB)),
        }
    )
    try:
        api, _, driver = pull_through_app(tmp_path, [{"registry": upstream.url}], max_blob_bytes=4 * MiB)
        for method in ("HEAD", "GET"):
            r = api.request(method, f"/v2/{REPO}/blobs/{digest}")
            assert r.status_code == 503, method
        assert nothing_stored(driver, REPO, digest)
    finally:
        upstream.stop()


def test_trickling_blob_is_cut_at_its_deadline(tmp_path):
    data = os.urandom(1000)
    digest = sha256(data)
    upstream = registry(
        {
            f"/v2/{REPO}/blobs/{digest}": lambda: (
                200,
                {"Content-Length": str(len(data)), "Docker-Content-Digest": digest},
                trickle(data, 0.2),  # 5 bytes/s, each byte well within the 0.5 s read timeout
            )
        }
    )
    try:
        # 0.5 s + 1000 B / 1000 B/s: cut after 1.5 s, in the middle of one long read.
        _, app, driver = pull_through_app(tmp_path, [{"registry": upstream.url}], min_rate=1000, **SLOW)
        started = time.monotonic()
        status, result = _wsgi_get(app, f"/v2/{REPO}/blobs/{digest}")
        assert status.startswith("200")
        received, error = _drain(result)
        took = time.monotonic() - started
        assert isinstance(error, RelayAborted)
        assert "was slower than 1000 bytes/s" in str(error)
        assert received != data
        assert 1.2 < took < 5
        assert nothing_stored(driver, REPO, digest)
    finally:
        upstream.stop()


def test_blob_of_unknown_size_must_keep_up_the_minimum_rate(tmp_path):
    """No Content-Length: the limit is MAX_BLOB_BYTES (16 GiB), so a deadline from the size
    alone would be hours; the average rate is what cuts a body that slows to a trickle."""
    digest = sha256(b"unknown size")

    def body() -> Iterator[bytes]:
        yield from endless(os.urandom(65536), cap=2 * MiB)  # a good start...
        yield from trickle(b"x" * 1000, 0.2)  # ...then a byte at a time, each within 0.5 s

    upstream = registry({f"/v2/{REPO}/blobs/{digest}": lambda: (200, {}, body())})
    try:
        # 1 MiB/s after 0.5 s of grace: 2 MiB plus the next chunk's 1 MiB are due by 3.5 s.
        _, app, driver = pull_through_app(tmp_path, [{"registry": upstream.url}], min_rate=MiB, **SLOW)
        started = time.monotonic()
        status, result = _wsgi_get(app, f"/v2/{REPO}/blobs/{digest}")
        assert status.startswith("200")
        received, error = _drain(result)
        took = time.monotonic() - started
        assert isinstance(error, RelayAborted)
        assert "was slower than 1048576 bytes/s" in str(error)
        assert 2 * MiB - 65536 <= len(received) < 2 * MiB + 1000
        assert 3 < took < 7
        assert nothing_stored(driver, REPO, digest)
    finally:
        upstream.stop()


def test_blob_shorter_than_its_content_length_is_discarded(tmp_path):
    data = os.urandom(3 * MiB)
    digest = sha256(data)
    headers = {"Content-Length": str(len(data) + 10), "Docker-Content-Digest": digest, "Connection": "close"}
    upstream = registry({f"/v2/{REPO}/blobs/{digest}": lambda: (200, headers, iter([data]))})
    try:
        _, app, driver = pull_through_app(tmp_path, [{"registry": upstream.url}])
        _, result = _wsgi_get(app, f"/v2/{REPO}/blobs/{digest}")
        received, error = _drain(result)
        assert isinstance(error, RelayAborted)
        assert len(received) < len(data)
        assert nothing_stored(driver, REPO, digest)
    finally:
        upstream.stop()


def test_limit_settings():
    env = {"REGISTRY_UPSTREAM_MIN_RATE": "65536", "REGISTRY_UPSTREAM_MAX_BLOB_BYTES": str(2 * 1024**3)}
    upstream = Settings.from_env(env).upstream
    assert (upstream.min_rate, upstream.max_blob_bytes) == (65536, 2 * 1024**3)
    assert upstream.body_seconds(65536) == pytest.approx(30 + 1)
    defaults = Settings.from_env({}).upstream
    assert (defaults.min_rate, defaults.max_blob_bytes) == (128 * 1024, 16 * 1024**3)
    for name, value in [
        ("REGISTRY_UPSTREAM_MIN_RATE", "fast"),
        ("REGISTRY_UPSTREAM_MIN_RATE", "10"),
        ("REGISTRY_UPSTREAM_MAX_BLOB_BYTES", "-1"),
        ("REGISTRY_UPSTREAM_MAX_BLOB_BYTES", "1000"),
    ]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
