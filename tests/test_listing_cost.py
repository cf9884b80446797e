"""Listings cost what they return: a catalog page walks the repository tree in order and stops,
and an index PUT looks up each distinct child once. Counted on the storage driver, on local
disk and on S3 (moto)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from falcon import testing

from app import create_app
from storage.drivers.filesystem import FilesystemDriver
from tests.conftest import OCI_INDEX, OCI_MANIFEST, Api, make_settings
from tests.test_auth_and_errors import assert_oci_error


class CountingDriver:
    """A driver that counts the calls made to the one it wraps."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


@pytest.fixture(params=["filesystem", "s3"])
def counted(request, tmp_path):
    if request.param == "s3":
        driver = request.getfixturevalue("make_s3_driver")()
    else:
        driver = FilesystemDriver(tmp_path / "data")
    wrapper = CountingDriver(driver)
    api = Api(testing.TestClient(create_app(make_settings(tmp_path / "data"), driver=wrapper)), tmp_path)
    return api, wrapper


def _tiny_manifest(api: Api, repo: str, tag: str = "latest") -> str:
    config = json.dumps({"repo": repo}).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": api.push_blob(repo, config),
            "size": len(config),
        },
        "layers": [],
    }
    r, digest, _ = api.push_manifest(repo, tag, doc)
    assert r.status_code == 201, r.text
    return digest


def test_catalog_page_costs_what_it_returns(counted):
    api, driver = counted
    names = [f"repo-{i:02d}" for i in range(40)] + [f"team/app-{i:02d}" for i in range(10)]
    for name in names:
        _tiny_manifest(api, name)
    driver.calls.clear()
    r = api.request("GET", "/v2/_catalog?n=1")
    assert r.json == {"repositories": ["repo-00"]}
    assert r.headers["Link"] == '</v2/_catalog?n=1&last=repo-00>; rel="next"'
    # The root, then two listings for each of the two repositories read (n + 1 to know there
    # is a next page); 83 on S3 before this walk.
    assert driver.calls["list_children"] <= 6, driver.calls

    driver.calls.clear()
    r = api.request("GET", "/v2/_catalog?n=2&last=team/app-03")
    assert r.json == {"repositories": ["team/app-04", "team/app-05"]}
    # Everything before `last` (the 40 repo-NN) is skipped without being listed.
    assert driver.calls["list_children"] <= 10, driver.calls


def test_catalog_order_and_pages_follow_sorted_names(api):
    # '-' and '.' sort before '/', so a name's children can come after its siblings.
    names = ["a", "a-b", "a/b", "a/b/c", "a.c", "a0", "b", "b/a", "ab/c"]
    for name in names:
        _tiny_manifest(api, name)
    assert api.request("GET", "/v2/_catalog").json["repositories"] == sorted(names)
    seen, path = [], "/v2/_catalog?n=2"
    while path:
        r = api.request("GET", path)
        seen += r.json["repositories"]
        link = r.headers.get("Link")
        path = link[1 : link.index(">")] if link else None
    assert seen == sorted(names)
    for last in ["a", "a/b", "a-b", "a.c", "aa", "b", ""]:
        r = api.request("GET", f"/v2/_catalog?last={last}")
        assert r.json["repositories"] == [n for n in sorted(names) if n > last], last


def test_index_with_repeated_children_checks_each_once(counted):
    api, driver = counted
    child = _tiny_manifest(api, "team/app", "child")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 100}] * 4000,
        }
    ).encode()
    driver.calls.clear()
    r = api.request("PUT", "/v2/team/app/manifests/multi", body=body, headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 201, r.text
    # The child (its link and data), the manifest's own data and link, the tag's old value, and
    # the garbage collection state before and after: a constant, not one per child.
    lookups = driver.calls["size"] + driver.calls["exists"] + driver.calls["read_bytes"]
    assert lookups <= 8, driver.calls


def test_absurd_descriptor_counts_are_refused(api):
    child = _tiny_manifest(api, "team/app", "child")
    desc = {"mediaType": OCI_MANIFEST, "digest": child, "size": 100}
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc] * 20_000}).encode()
    r = api.request("PUT", "/v2/team/app/manifests/huge", body=body, headers={"Content-Type": OCI_INDEX})
    assert_oci_error(r, 400, "MANIFEST_INVALID")
    assert "too many manifests" in r.json["errors"][0]["message"]
