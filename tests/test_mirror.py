"""Pull-through as a mirror (issue #13), over HTTP (Falcon's TestClient) with real upstream
servers on 127.0.0.1: tags pulled through are checked upstream again after
REGISTRY_UPSTREAM_TAG_TTL, the stored copy is served when the upstream cannot answer, one check
answers every concurrent request (also across apps sharing the storage, as gunicorn's workers
and several instances do), an upstream's 429 is respected, and prefixes and pushes decide which
repositories are filled from where."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from falcon import testing
from storage.drivers.filesystem import FilesystemDriver

from app import create_app
from settings import S3Settings
from storage import driver_from_settings, paths
from storage.driver import StorageError
from tests.conftest import OCI_MANIFEST, RO_PASS, RO_USER, Api, basic, make_settings
from tests.upstream_fakes import StaticRegistry
from upstream.config import UpstreamSettings, parse_registries

TTL = 0.6  # seconds: every wait below is a little longer than this
REPO = "team/app"


@pytest.fixture(params=["filesystem", "s3"])
def storage(request):
    if request.param == "s3":
        request.getfixturevalue("s3_bucket")
    return request.param


def _settings(tmp_path, entries: list[dict], storage: str = "filesystem", **upstream):
    values = {"connect_timeout": 1.0, "read_timeout": 5.0, "tag_ttl": TTL, **upstream}
    registries = parse_registries(json.dumps(entries), {})
    extra = {}
    if storage == "s3":
        extra = {"storage": "s3", "s3": S3Settings(bucket="berth-test", region="us-east-1", prefix="reg")}
    return make_settings(tmp_path / "data", upstream=UpstreamSettings(registries, **values), **extra)


def _api(settings) -> Api:
    """An app over `settings`' storage: call twice for two "workers" sharing it."""
    return Api(testing.TestClient(create_app(settings)), settings.data_dir)


@pytest.fixture
def upstream():
    server = StaticRegistry()
    yield server
    server.stop()


def _get(api: Api, ref: str, name: str = REPO, **kw):
    return api.request("GET", f"/v2/{name}/manifests/{ref}", **kw)


# -- tags stay fresh -----------------------------------------------------------------------------


def test_a_moved_tag_is_seen_after_the_ttl_and_not_before(tmp_path, upstream, storage):
    first, first_body = upstream.add_image(REPO, "v1")
    settings = _settings(tmp_path, [{"registry": upstream.url}], storage)
    api = _api(settings)
    assert _get(api, "v1").content == first_body

    moved, moved_body = upstream.add_image(REPO, "v1")
    r = api.request("HEAD", f"/v2/{REPO}/manifests/v1")
    assert r.headers["Docker-Content-Digest"] == first  # within the TTL: not asked
    assert _get(api, "v1").content == first_body
    assert upstream.count("HEAD", "/manifests/") == 0

    time.sleep(TTL + 0.2)
    r = api.request("HEAD", f"/v2/{REPO}/manifests/v1")  # docker asks HEAD by tag first
    assert (r.status_code, r.headers["Docker-Content-Digest"]) == (200, moved)
    assert _get(api, "v1").content == moved_body
    assert _get(api, moved).content == moved_body
    assert _get(api, first).content == first_body  # by digest: kept, never checked
    assert upstream.count("HEAD", "/manifests/v1") == 1
    assert upstream.count("GET", f"/manifests/{moved}") == 1  # the new one fetched by digest
    assert api.request("GET", f"/v2/{REPO}/tags/list").json["tags"] == ["v1"]

    # Unchanged upstream: a HEAD, nothing fetched.
    time.sleep(TTL + 0.2)
    assert _get(api, "v1").content == moved_body
    assert upstream.count("HEAD", "/manifests/v1") == 2
    assert upstream.count("GET", "/manifests/") == 2  # the first pull and the moved one


@pytest.mark.parametrize("failure", ["stopped", "500", "gone"])
def test_the_stored_copy_is_served_when_the_upstream_cannot_say(tmp_path, upstream, failure, caplog):
    digest, body = upstream.add_image(REPO, "v1")
    api = _api(_settings(tmp_path, [{"registry": upstream.url}]))
    assert _get(api, "v1").content == body
    if failure == "stopped":
        upstream.stop()
    elif failure == "500":
        upstream.fail_with = 500
    else:
        del upstream.manifests[(REPO, "v1")]  # the tag deleted upstream
    time.sleep(TTL + 0.2)
    with caplog.at_level(logging.INFO, logger="berth.upstream"):
        for _ in range(3):
            r = _get(api, "v1")
            assert (r.status_code, r.content, r.headers["Docker-Content-Digest"]) == (200, body, digest)
    expected = "is gone upstream (404)" if failure == "gone" else "could not be checked upstream"
    said = [rec.getMessage() for rec in caplog.records if expected in rec.getMessage()]
    assert len(said) == 1, caplog.text  # one check per TTL, so said once
    assert "serving the stored copy" in said[0] and digest in said[0]


def test_a_429_serves_the_stored_copy_and_the_next_check_waits(tmp_path, upstream):
    _, body = upstream.add_image(REPO, "v1")
    settings = _settings(tmp_path, [{"registry": upstream.url}])
    api = _api(settings)
    assert _get(api, "v1").content == body
    upstream.fail_with, upstream.fail_headers = 429, {"Retry-After": "30"}
    time.sleep(TTL + 0.2)
    r = _get(api, "v1")
    assert (r.status_code, r.content) == (200, body)
    asked = len(upstream.requests)

    # The upstream recovers and moves the tag; the Retry-After (30 s) has not passed.
    upstream.fail_with = None
    upstream.add_image(REPO, "v1")
    time.sleep(TTL + 0.2)
    assert _get(api, "v1").content == body
    # Another worker (its own memory, the same storage) waits too: the record says until when.
    other = _api(settings)
    assert _get(other, "v1").content == body
    # A miss meanwhile is answered 429 with the wait left, rather than hammering the upstream.
    r = _get(api, "v2")
    assert (r.status_code, r.json["errors"][0]["code"]) == (429, "TOOMANYREQUESTS")
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    assert len(upstream.requests) == asked


def test_one_upstream_check_for_50_concurrent_requests(tmp_path, upstream, storage):
    upstream.add_image(REPO, "v1")
    settings = _settings(tmp_path, [{"registry": upstream.url}], storage)
    workers = [_api(settings), _api(settings)]  # two processes' worth of apps, one storage
    assert _get(workers[0], "v1").status_code == 200
    moved, moved_body = upstream.add_image(REPO, "v1")
    # The check lasts 1.5 s, so every request arrives while it runs or within the TTL after it
    # (a request arriving later would rightly start a check of its own), even on a slow machine.
    upstream.head_delay = 1.5
    time.sleep(TTL + 0.2)

    def pull(i: int):
        r = _get(workers[i % 2], "v1")
        return r.status_code, r.headers.get("Docker-Content-Digest")

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(pull, range(50)))
    assert upstream.count("HEAD", "/manifests/v1") == 1
    assert upstream.count("GET", f"/manifests/{moved}") == 1
    assert answers == [(200, moved)] * 50  # everyone waited for the one check's answer
    assert _get(workers[1], "v1").content == moved_body


# -- which repositories are filled ---------------------------------------------------------------


def test_pushed_repositories_stay_local(tmp_path, upstream):
    upstream.add_image(REPO, "v2")
    upstream_blob = upstream.add_blob(REPO, b"upstream layer")
    upstream.add_image("team/mirrored", "v1")
    api = _api(_settings(tmp_path, [{"registry": upstream.url}]))
    api.push_image(REPO, "v1")
    reader = {"headers": basic(RO_USER, RO_PASS)}  # a pull-only user, as a CI runner would be

    assert _get(api, "v2", **reader).status_code == 404
    assert api.request("HEAD", f"/v2/{REPO}/blobs/{upstream_blob}", **reader).status_code == 404
    assert api.request("GET", f"/v2/{REPO}/blobs/{upstream_blob}", **reader).status_code == 404
    assert [p for _, p, _ in upstream.requests if p.startswith(f"/v2/{REPO}/")] == []
    assert api.request("GET", f"/v2/{REPO}/tags/list").json["tags"] == ["v1"]

    # A repository that was only ever pulled through is filled, until someone pushes to it.
    assert _get(api, "v1", name="team/mirrored", **reader).status_code == 200
    api.push_image("team/mirrored", "mine")
    upstream.add_image("team/mirrored", "v3")
    upstream.add_image("team/mirrored", "v1")  # moved upstream
    time.sleep(TTL + 0.2)
    before = len(upstream.requests)
    assert _get(api, "v3", name="team/mirrored", **reader).status_code == 404
    r = _get(api, "v1", name="team/mirrored", **reader)
    assert r.status_code == 200  # the copy it had, no longer checked upstream
    assert len(upstream.requests) == before
    assert not api_driver(api).exists(paths.upstream_tag_check("team/mirrored", "v1"))


def api_driver(api: Api):
    return driver_from_settings(make_settings(api.data_dir))


def test_prefixes_route_names_to_their_upstream_only(tmp_path):
    one, two, rest = StaticRegistry(), StaticRegistry(), StaticRegistry()
    try:
        _, body_one = one.add_image("library/nginx", "1")
        _, body_two = two.add_image("library/nginx", "1")
        _, body_deep = two.add_image("deep/library/nginx", "1")
        _, body_rest = rest.add_image("library/nginx", "1")
        entries = [
            {"registry": one.url, "prefix": "one"},
            {"registry": two.url, "prefix": "two"},
            {"registry": f"{two.url}/deep", "prefix": "two/deep/"},
            {"registry": rest.url},
        ]
        api = _api(_settings(tmp_path, entries))
        assert _get(api, "1", name="one/library/nginx").content == body_one
        assert _get(api, "1", name="two/library/nginx").content == body_two
        assert _get(api, "1", name="two/deep/library/nginx").content == body_deep  # longest prefix
        assert _get(api, "1", name="library/nginx").content == body_rest  # no prefix: the rest
        assert one.count("GET", "/v2/library/nginx/manifests/1") == 1
        # Under a prefix, only that prefix's upstream is asked.
        assert _get(api, "1", name="one/library/redis").status_code == 404
        assert rest.count("GET", "redis") == 0 and two.count("GET", "redis") == 0
        assert one.count("GET", "/v2/library/redis/manifests/1") == 1
        # Only prefixed entries: a name under none is never looked up.
        api = _api(_settings(tmp_path / "prefixed-only", entries[:2]))
        assert _get(api, "1", name="library/nginx").status_code == 404
        assert rest.count("GET", "/manifests/") == 1 and one.count("GET", "/v2/one/") == 0
    finally:
        for server in (one, two, rest):
            server.stop()


def test_a_prefixed_namespace_is_filled_even_after_a_push(tmp_path, upstream):
    """The namespace belongs to its upstream: a push there (an index copied alone, a tag of
    one's own) does not stop missing content from coming through; a tag pushed here is never
    replaced by a check upstream."""
    _, v2_body = upstream.add_image(REPO, "v2")
    upstream.add_image(REPO, "v1")
    name = f"hub/{REPO}"
    api = _api(_settings(tmp_path, [{"registry": upstream.url, "prefix": "hub"}]))
    assert _get(api, "v1", name=name).status_code == 200  # pulled through, then pushed over:
    pushed, pushed_body = api.push_image(name, "v1")
    assert _get(api, "v2", name=name).content == v2_body
    upstream.add_image(REPO, "v1")  # moved upstream
    time.sleep(TTL + 0.2)
    r = _get(api, "v1", name=name)
    assert (r.content, r.headers["Docker-Content-Digest"]) == (pushed_body, pushed)
    assert upstream.count("HEAD", "/manifests/v1") == 0


# -- sparse indexes ------------------------------------------------------------------------------


def _index(api: Api, repo: str, children: list[str], tag: str):
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": d,
                "size": 500,
                "platform": {"architecture": a, "os": "linux"},
            }
            for d, a in zip(children, ["amd64", "arm64", "s390x"], strict=False)
        ],
    }
    return api.push_manifest(repo, tag, doc, "application/vnd.oci.image.index.v1+json")


@pytest.mark.parametrize("sparse", [False, True])
def test_sparse_indexes_are_opt_in(tmp_path, sparse):
    api = _api(make_settings(tmp_path / "data", allow_sparse_index=sparse))
    present, _ = api.push_image("multi/arch", "amd64")
    missing = "sha256:" + "ab" * 32
    r, digest, body = _index(api, "multi/arch", [present, missing], "latest")
    if not sparse:
        assert (r.status_code, r.json["errors"][0]["code"]) == (400, "MANIFEST_BLOB_UNKNOWN")
        assert missing in json.dumps(r.json)
        return
    assert r.status_code == 201, r.text
    assert _get(api, "latest", name="multi/arch").content == body
    assert _get(api, digest, name="multi/arch").content == body
    r = _get(api, missing, name="multi/arch")
    assert (r.status_code, r.json["errors"][0]["code"]) == (404, "MANIFEST_UNKNOWN")
    # Image manifests still need their blobs.
    doc = json.loads(_get(api, present, name="multi/arch").content)
    doc["layers"][0]["digest"] = "sha256:" + "cd" * 32
    r, _, _ = api.push_manifest("multi/arch", "broken", doc)
    assert (r.status_code, r.json["errors"][0]["code"]) == (400, "MANIFEST_BLOB_UNKNOWN")


def test_a_sparse_index_child_comes_through_when_configured(tmp_path, upstream):
    """One platform of a multi-arch image copied here (the index alone), its other platforms
    pulled through on demand."""
    child, child_body = upstream.add_image(REPO, None)
    settings = _settings(tmp_path, [{"registry": upstream.url, "prefix": "hub"}])
    api = _api(make_settings(tmp_path / "data", upstream=settings.upstream, allow_sparse_index=True))
    name = f"hub/{REPO}"
    r, _, _ = _index(api, name, [child], "latest")
    assert r.status_code == 201, r.text
    assert _get(api, child, name=name).content == child_body
    assert upstream.count("GET", f"/v2/{REPO}/manifests/{child}") == 1


# -- bounds --------------------------------------------------------------------------------------


def test_upstream_requests_are_capped_per_process(tmp_path, upstream):
    blobs = [upstream.add_blob(REPO, bytes([i]) * 4096) for i in range(5)]
    upstream.hold_blobs = threading.Event()
    api = _api(_settings(tmp_path, [{"registry": upstream.url}], max_concurrency=2, connect_timeout=1.0))

    def pull(digest: str):
        started = time.monotonic()
        r = api.request("GET", f"/v2/{REPO}/blobs/{digest}")
        return r.status_code, time.monotonic() - started, time.monotonic()

    with ThreadPoolExecutor(5) as pool:
        running = [pool.submit(pull, d) for d in blobs]
        time.sleep(2.5)  # well past the 1 s a request waits for a slot
        released = time.monotonic()
        upstream.hold_blobs.set()
        results = [f.result() for f in running]
    assert upstream.max_in_flight == 2
    assert sorted(status for status, _, _ in results) == [200, 200, 503, 503, 503]
    # Refused after waiting for a slot, while the two relays still held theirs.
    assert all(took > 0.9 and ended < released for status, took, ended in results if status == 503)
    # The slots were given back: the refused blobs come through now.
    for digest in blobs:
        assert api.request("GET", f"/v2/{REPO}/blobs/{digest}").status_code == 200


def test_a_storage_failure_while_checking_serves_the_stored_copy(tmp_path, upstream, caplog):
    class NoLocks(FilesystemDriver):
        def exclusive(self, key, wait=0.0):
            raise StorageError("the lock cannot be written")

    settings = _settings(tmp_path, [{"registry": upstream.url}])
    api = Api(testing.TestClient(create_app(settings, NoLocks(settings.data_dir))), settings.data_dir)
    first, body = upstream.add_image(REPO, "v1")
    assert _get(api, "v1").content == body
    upstream.add_image(REPO, "v1")
    time.sleep(TTL + 0.2)
    with caplog.at_level(logging.WARNING, logger="berth.upstream"):
        r = _get(api, "v1")
    assert (r.status_code, r.headers["Docker-Content-Digest"]) == (200, first)
    assert (
        "not checked upstream (storage: the lock cannot be written): serving the stored copy" in caplog.text
    )
