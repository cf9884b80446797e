"""Garbage collection: what each mode collects, what it keeps, and the races with requests that
create references while it runs, made deterministic by a driver that runs a request at a chosen
step of the collection. On local disk and on S3 (moto)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from falcon import testing

from app import create_app
from settings import GcSettings
from storage import paths
from storage.digests import Digest
from storage.drivers.filesystem import FilesystemDriver
from storage.gc import CollectionRunning, GarbageCollector
from tests.conftest import OCI_INDEX, OCI_MANIFEST, Api, make_settings, sha256


class HookedDriver:
    """A driver that, once it wrote a key matching a hook's predicate, starts the hook's action
    (a request) in a thread beside the collection, and gives it a moment to reach the point
    where it writes its reference and looks for announcements, as a concurrent request would."""

    SETTLE = 0.5

    def __init__(self, inner) -> None:
        self._inner = inner
        self.hooks: list = []  # (predicate, action)
        self.threads: list[threading.Thread] = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def write_bytes(self, key, data):
        result = self._inner.write_bytes(key, data)
        for entry in list(self.hooks):
            predicate, action = entry
            if predicate(key, data):
                self.hooks.remove(entry)
                thread = threading.Thread(target=action, daemon=True)
                thread.start()
                self.threads.append(thread)
                time.sleep(self.SETTLE)
        return result

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture(autouse=True)
def short_verdict_wait(monkeypatch):
    import storage.tombstones

    monkeypatch.setattr(storage.tombstones, "VERDICT_WAIT", 5.0)
    monkeypatch.setattr(storage.tombstones, "POLL", 0.05)


@pytest.fixture(params=["filesystem", "s3"])
def store(request, tmp_path):
    if request.param == "s3":
        inner = request.getfixturevalue("make_s3_driver")()
    else:
        inner = FilesystemDriver(tmp_path / "data")
    driver = HookedDriver(inner)
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "data"), driver=driver)), tmp_path)
    return api, driver


def collector(driver, grace: float = -5.0, ttl: float = 3600.0) -> GarbageCollector:
    # A negative grace: everything written before the run counts as old, whatever the store's
    # clock resolution (S3 times have whole seconds).
    return GarbageCollector(driver, grace=grace, upload_ttl=ttl)


def blob_keys(driver) -> set[str]:
    return {i.key for i in driver.walk("blobs")}


def image(api: Api, repo: str, tag: str | None, layers: list[bytes], **extra) -> tuple[str, dict]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "r": os.urandom(4).hex()}).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": api.push_blob(repo, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": api.push_blob(repo, data),
                "size": len(data),
            }
            for data in layers
        ],
        **extra,
    }
    body = json.dumps(doc).encode()
    digest = sha256(body)
    r = api.request(
        "PUT", f"/v2/{repo}/manifests/{tag or digest}", body=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201, r.text
    return digest, doc


def pulls_whole(api: Api, repo: str, reference: str) -> bool:
    r = api.request("GET", f"/v2/{repo}/manifests/{reference}")
    if r.status_code != 200:
        return False
    doc = r.json
    for desc in [doc["config"], *doc["layers"]]:
        blob = api.request("GET", f"/v2/{repo}/blobs/{desc['digest']}")
        if blob.status_code != 200 or sha256(blob.content) != desc["digest"]:
            return False
    return True


# -- what is collected ----------------------------------------------------------------------------


def test_unreferenced_collects_what_no_manifest_or_repository_needs(store):
    api, driver = store
    shared = os.urandom(300)
    gone, _ = image(api, "team/a", "v1", [shared, os.urandom(200)])
    kept, _ = image(api, "team/b", "v1", [shared])
    orphan = api.push_blob("team/c", os.urandom(50))  # a layer no manifest ever used
    assert api.request("DELETE", f"/v2/team/a/manifests/{gone}").status_code == 202

    dry = collector(driver).collect(dry_run=True)
    before = blob_keys(driver)
    report = collector(driver).collect()
    assert (dry.layer_links, dry.blobs) == (report.layer_links, report.blobs)
    assert report.layer_links == 4  # a's config and two layers, and c's orphan
    assert report.blobs == 4  # a's config, its own layer, its manifest and c's orphan
    assert len(before) - len(blob_keys(driver)) == 4
    assert pulls_whole(api, "team/b", "v1") and pulls_whole(api, "team/b", kept)
    assert api.request("HEAD", f"/v2/team/c/blobs/{orphan}").status_code == 404
    # Complete: a second run finds nothing.
    again = collector(driver).collect()
    assert (again.layer_links, again.blobs, again.manifests) == (0, 0, 0)


def test_nothing_younger_than_the_grace_period_is_collected(store):
    api, driver = store
    api.push_blob("team/a", os.urandom(100))
    report = collector(driver, grace=3600).collect()
    assert (report.layer_links, report.blobs) == (0, 0)


def test_untagged_follows_indexes_and_referrers(store):
    api, driver = store
    child, _ = image(api, "team/app", None, [os.urandom(100)])
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1}],
        }
    ).encode()
    r = api.request("PUT", "/v2/team/app/manifests/multi", body=index, headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 201
    subject = {"mediaType": OCI_INDEX, "digest": sha256(index), "size": len(index)}
    signature, _ = image(
        api, "team/app", None, [os.urandom(10)], subject=subject, artifactType="application/x-sig"
    )
    lonely, _ = image(api, "team/app", None, [os.urandom(100)])
    doomed_subject, _ = image(api, "team/app", None, [os.urandom(100)])
    subject2 = {"mediaType": OCI_MANIFEST, "digest": doomed_subject, "size": 1}
    orphan_sig, _ = image(api, "team/app", None, [os.urandom(10)], subject=subject2)

    unreferenced = collector(driver).collect()
    assert unreferenced.manifests == 0  # untagged manifests stay in the default mode
    report = collector(driver).collect(mode="untagged")
    assert report.manifests == 3  # lonely, the doomed subject, and its referrer with it
    for kept in (child, sha256(index), signature):
        assert api.request("HEAD", f"/v2/team/app/manifests/{kept}").status_code == 200
    for gone in (lonely, doomed_subject, orphan_sig):
        assert api.request("HEAD", f"/v2/team/app/manifests/{gone}").status_code == 404
    assert pulls_whole(api, "team/app", child)
    referrers = api.request("GET", f"/v2/team/app/referrers/{sha256(index)}").json["manifests"]
    assert [d["digest"] for d in referrers] == [signature]
    assert api.request("GET", f"/v2/team/app/referrers/{doomed_subject}").json["manifests"] == []


def test_idle_uploads_are_purged_and_active_ones_kept(store):
    api, driver = store
    idle = api.request("POST", "/v2/team/app/blobs/uploads/").headers["Location"]
    api.request("PATCH", idle, body=os.urandom(1000))
    time.sleep(1.1)
    active = api.request("POST", "/v2/team/app/blobs/uploads/").headers["Location"]
    report = collector(driver, ttl=0.5).collect()  # S3 times have whole seconds
    assert report.uploads == 1
    assert api.request("GET", idle).status_code == 404
    assert api.request("GET", active).status_code == 204


def test_a_second_collection_finds_the_first_running(store):
    _, driver = store
    driver.write_bytes(paths.GC_CLOCK, b"")  # the lock's parent, as a collection makes it
    with driver.exclusive(paths.GC_LOCK), pytest.raises(CollectionRunning):
        collector(driver).collect()


# -- races: a request at each step of the collection -------------------------------------------


def _announcing(path_part: str):
    return lambda key, data: key.endswith(path_part) and b'"deleted"' not in data


def _deciding(path_part: str):
    return lambda key, data: key.endswith(path_part) and b'"deleted"' in data


def test_manifest_put_between_announce_and_second_look_keeps_its_layer(store):
    """docker HEADs a layer, skips its upload, and PUTs the manifest while the collector is
    about to delete the (unreferenced, old) link: the second look sees the manifest."""
    api, driver = store
    layer = os.urandom(100)
    api.push_blob("team/app", layer)
    results = []
    driver.hooks.append(
        (_announcing("/team/app/_gc"), lambda: results.append(image(api, "team/app", "v2", [layer])))
    )
    report = collector(driver).collect()
    driver.join()
    assert results, "the hook ran"
    assert report.spared >= 1
    assert pulls_whole(api, "team/app", "v2")


def test_manifest_put_after_the_verdict_is_refused_and_never_visible(store):
    api, driver = store
    layer = os.urandom(100)
    layer_digest = api.push_blob("team/app", layer)
    config = b'{"os": "linux"}'
    config_digest = api.push_blob("team/other", config)  # elsewhere: not in team/app
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": 100}
        ],
    }
    api.request("POST", f"/v2/team/app/blobs/uploads/?mount={config_digest}&from=team/other")
    answers = []

    def put():
        body = json.dumps(doc).encode()
        answers.append(
            api.request(
                "PUT", "/v2/team/app/manifests/late", body=body, headers={"Content-Type": OCI_MANIFEST}
            )
        )

    driver.hooks.append((_deciding("/team/app/_gc"), put))
    collector(driver).collect()
    driver.join()
    assert answers and answers[0].status_code in (400, 503), answers[0].text
    if answers[0].status_code == 400:
        assert answers[0].json["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    # Refused and invisible: no tag, no revision a reader can see.
    assert api.request("GET", "/v2/team/app/manifests/late").status_code == 404
    assert api.request("GET", f"/v2/team/app/manifests/{sha256(json.dumps(doc).encode())}").status_code == 404


def test_mount_during_the_blob_phase_keeps_the_blob_or_falls_back_to_an_upload(store):
    api, driver = store
    data = os.urandom(100)
    digest = api.push_blob("team/src", data)
    api.request("DELETE", f"/v2/team/src/blobs/{digest}")  # unreferenced everywhere now
    answers = []

    def mount():
        answers.append(api.request("POST", f"/v2/team/dst/blobs/uploads/?mount={digest}"))

    driver.hooks.append((lambda k, d: k.endswith("/doomed"), mount))
    collector(driver).collect()
    driver.join()
    assert answers
    if answers[0].status_code == 201:
        r = api.request("GET", f"/v2/team/dst/blobs/{digest}")
        assert r.status_code == 200 and r.content == data
    else:
        assert answers[0].status_code == 202  # not mountable: the client uploads it


def test_an_upload_landing_during_the_blob_phase_is_never_lost(store):
    api, driver = store
    data = os.urandom(100)
    digest = api.push_blob("team/src", data)
    api.request("DELETE", f"/v2/team/src/blobs/{digest}")
    answers = []

    def upload():
        answers.append(api.request("POST", f"/v2/team/dst/blobs/uploads/?digest={digest}", body=data))

    driver.hooks.append((lambda k, d: k.startswith("gc/verdicts/") or "/gc/verdicts/" in k, upload))
    collector(driver).collect()
    driver.join()
    assert answers
    if answers[0].status_code == 201:
        r = api.request("GET", f"/v2/team/dst/blobs/{digest}")
        assert r.status_code == 200 and r.content == data, "a 201 upload was lost"
    else:
        assert answers[0].status_code == 503 and answers[0].headers["Retry-After"]
        assert (
            api.request("POST", f"/v2/team/dst/blobs/uploads/?digest={digest}", body=data).status_code == 201
        )
        assert api.request("GET", f"/v2/team/dst/blobs/{digest}").content == data


def test_storage_unreachable_collection_fails_and_removes_nothing(tmp_path):
    from tests.test_listing_cost import CountingDriver

    inner = FilesystemDriver(tmp_path / "data")
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "data"), driver=inner)), tmp_path)
    digest, _ = image(api, "team/a", "v1", [os.urandom(100)])
    api.request("DELETE", f"/v2/team/a/manifests/{digest}")
    before = {i.key for i in inner.walk("blobs")} | {i.key for i in inner.walk("repositories")}

    class Failing(CountingDriver):
        def walk(self, prefix):
            if prefix == "blobs":
                from storage.driver import StorageError

                raise StorageError("the store went away")
            return inner.walk(prefix)

    from storage.driver import StorageError

    with pytest.raises(StorageError):
        collector(Failing(inner)).collect()
    after = {i.key for i in inner.walk("blobs")} | {i.key for i in inner.walk("repositories")}
    assert before <= after  # nothing removed
    assert not inner.exists(paths.doom_list("team/a"))


def test_a_crashed_collections_announcements_are_cleared(store):
    api, driver = store
    digest = api.push_blob("team/a", os.urandom(10))
    driver.write_bytes(paths.blob_tombstone(Digest.parse(digest)), b'{"run": "dead"}')
    driver.write_bytes(paths.doom_list("team/a"), b'{"run": "dead", "links": [], "manifests": []}')
    collector(driver, grace=3600).collect()
    assert not driver.exists(paths.blob_tombstone(Digest.parse(digest)))
    assert not driver.exists(paths.doom_list("team/a"))


# -- how it is run: the endpoint and the schedule ------------------------------------------------


def test_repository_endpoint_collects_that_repository_only(api):
    shared = os.urandom(100)
    digest_a, _ = image(api, "team/a", "v1", [shared, os.urandom(50)])
    image(api, "team/b", "v1", [shared])
    other_orphan = api.push_blob("team/c", os.urandom(10))
    api.request("DELETE", f"/v2/team/a/manifests/{digest_a}")
    time.sleep(0.01)
    r = api.request("POST", "/v2/team/a/gc?mode=unreferenced")
    assert r.status_code == 200, r.text
    # serverless-registry's answer, plus counts (the default grace of an hour spares it all).
    assert r.json["success"] is True and r.json["repository"] == "team/a"
    assert r.json["layer_links"] == 0
    # With the grace over: team/a's links go, and the data they alone pointed at (data team/b
    # still links stays; the manifest's own bytes, unlinked by the DELETE before, and team/c's
    # are a full collection's business).
    settings = make_settings(api.data_dir, gc=GcSettings(grace=-5))
    app = Api(testing.TestClient(create_app(settings)), api.data_dir)
    r = app.request("POST", "/v2/team/a/gc")
    assert r.status_code == 200 and r.json["layer_links"] == 3 and r.json["blobs"] == 2, r.text
    assert pulls_whole(app, "team/b", "v1")
    assert app.request("HEAD", f"/v2/team/c/blobs/{other_orphan}").status_code == 200


def test_repository_endpoint_refuses_bad_modes_readers_and_disabled_deletes(tmp_path):
    from tests.conftest import RO_PASS, RO_USER, basic, build_api
    from tests.test_auth_and_errors import assert_oci_error

    api = build_api(tmp_path)
    assert_oci_error(api.request("POST", "/v2/team/a/gc?mode=everything"), 400, "UNSUPPORTED")
    assert_oci_error(api.request("POST", "/v2/team/a/gc", headers=basic(RO_USER, RO_PASS)), 403, "DENIED")
    assert_oci_error(api.request("POST", "/v2/team/a/gc", auth=False), 401, "UNAUTHORIZED")
    no_deletes = build_api(tmp_path / "other", delete_enabled=False)
    assert_oci_error(no_deletes.request("POST", "/v2/team/a/gc"), 405, "UNSUPPORTED")


def test_schedule_runs_once_per_interval_across_processes(tmp_path):
    from storage.gc_schedule import GcSchedule

    driver = FilesystemDriver(tmp_path / "data")
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "data"), driver=driver)), tmp_path)
    digest = api.push_blob("team/a", os.urandom(10))
    api.request("DELETE", f"/v2/team/a/blobs/{digest}")
    first = GcSchedule(collector(driver), driver, interval=3600, mode="unreferenced")
    second = GcSchedule(
        collector(FilesystemDriver(tmp_path / "data")), driver, interval=3600, mode="unreferenced"
    )
    assert first.run_if_due() is True
    assert second.run_if_due() is False  # another process ran it a moment ago
    assert not driver.exists(paths.blob_data(Digest.parse(digest)))


def test_a_head_renews_an_old_link_and_a_doomed_one_is_gone_for_new_clients(tmp_path):
    driver = FilesystemDriver(tmp_path / "data")
    settings = make_settings(tmp_path / "data", gc=GcSettings(grace=0.2))  # renewed after 0.1 s
    api = Api(testing.TestClient(create_app(settings, driver=driver)), tmp_path)
    digest = api.push_blob("team/app", os.urandom(10))
    link = paths.layer_link("team/app", Digest.parse(digest))
    before = driver.stat(link)
    time.sleep(0.15)
    assert api.request("HEAD", f"/v2/team/app/blobs/{digest}").status_code == 200
    assert driver.stat(link).version != before.version  # renewed: the grace starts again
    # A collection announced it: a new client is told it is not there (and uploads it).
    driver.write_bytes(paths.GC_STATE, b'{"counter": 7, "active": true, "run": "r"}')
    driver.write_bytes(
        paths.doom_list("team/app"), json.dumps({"run": "r", "links": [digest], "manifests": []}).encode()
    )
    time.sleep(0.15)
    assert api.request("HEAD", f"/v2/team/app/blobs/{digest}").status_code == 404


def test_a_later_run_reads_manifest_links_but_not_their_bytes_again(tmp_path):
    """Manifests never change under their digest: a collector keeps what they reference between
    its runs (bounded), so a scheduled run reads each revision's link but not its bytes."""
    inner = FilesystemDriver(tmp_path / "data")
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "data"), driver=inner)), tmp_path)
    digests = [image(api, f"team/r{i}", "v1", [os.urandom(100)])[0] for i in range(3)]
    manifest_data = {paths.blob_data(Digest.parse(d)) for d in digests}

    class Counting:
        def __init__(self) -> None:
            self.reads: list[str] = []

        def __getattr__(self, name):
            return getattr(inner, name)

        def read_bytes(self, key):
            self.reads.append(key)
            return inner.read_bytes(key)

    driver = Counting()
    gc = collector(driver)
    gc.collect()
    assert manifest_data <= set(driver.reads)
    driver.reads.clear()
    report = gc.collect()
    assert not manifest_data & set(driver.reads)  # bytes: not read again
    assert {paths.manifest_link(f"team/r{i}", Digest.parse(d)) for i, d in enumerate(digests)} <= set(
        driver.reads
    )
    assert report.blobs == 0 and all(pulls_whole(api, f"team/r{i}", "v1") for i in range(3))
    # A fresh collector (another process) reads them again.
    driver.reads.clear()
    collector(driver).collect()
    assert manifest_data <= set(driver.reads)


def test_parsed_manifests_are_bounded():
    from storage.lru import LruCache

    carried = LruCache(2)
    a, b, c = (Digest.parse(sha256(bytes([i]))) for i in range(3))
    entry = (frozenset(), frozenset(), None)
    carried.put(a, entry)
    carried.put(b, entry)
    assert carried.get(a) == entry  # a is now the most recent
    carried.put(c, entry)
    assert len(carried) == 2 and carried.get(b) is None and carried.get(a) == entry
