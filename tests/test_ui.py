"""The web UI through Falcon's TestClient: who sees what, escaping, the same-origin check on
deletes, pagination, tag order, headers, and the caches. The browser itself is in
tests/e2e/test_ui_browser.py."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from auth.client_address import TrustedProxies
from settings import Settings, SettingsError, TokenSettings
from storage import inventory as inventory_module
from storage.lru import LruCache
from storage.usage import human_size
from tests.conftest import OCI_INDEX, OCI_MANIFEST, RO_PASS, RO_USER, basic, build_api
from tests.jwt_keys import keypair, mint
from tests.ui_documents import LONG, Pushable, digest_of, hostile_image, sbom_for, signature_for
from ui import browse

PRIVATE, PUBLIC = keypair("EC")
SIGNING, _ = keypair("EC")
SAME_ORIGIN = {"Origin": "http://falconframework.org"}  # TestClient's default Host


def push(api, repo: str, doc: Pushable, tag: str) -> str:
    for blob in doc.blobs:
        api.push_blob(repo, blob)
    r = api.request(
        "PUT", f"/v2/{repo}/manifests/{tag}", body=doc.manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201, r.text
    return doc.digest


def page(api, path: str, **kwargs):
    r = api.request("GET", path, **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    return r


def tag_names(html: str) -> list[str]:
    return re.findall(r'<tr data-tag="([^"]*)"', html)


def repository_names(html: str) -> list[str]:
    return re.findall(r'<tr data-repository="([^"]*)"', html)


# -- setting and routes -----------------------------------------------------------------------


def test_registry_ui_setting():
    base = {"USERNAME": "u", "PASSWORD": "p"}
    assert Settings.from_env(base).ui is True
    assert Settings.from_env({**base, "REGISTRY_UI": "false"}).ui is False
    with pytest.raises(SettingsError, match="REGISTRY_UI"):
        Settings.from_env({**base, "REGISTRY_UI": "maybe"})


def test_ui_off_is_an_unknown_route(tmp_path):
    api = build_api(tmp_path, ui=False)
    for path in ("/ui/", "/ui", "/", "/ui/r/team/app", "/ui/static/ui.css"):
        r = api.request("GET", path)
        assert r.status_code == 404
        assert r.json["errors"][0]["message"] == "unknown route"
        assert "Content-Security-Policy" not in r.headers


def test_root_redirects_to_the_ui(tmp_path):
    api = build_api(tmp_path, anonymous_pull=True)
    for path in ("/", "/ui"):
        assert api.request("GET", path).headers["Location"] == "/ui/"
        r = api.request("GET", path, auth=False)
        assert r.status_code == 302 and r.headers["Location"] == "/ui/"
    # Without anonymous pull `/` asks for credentials, as every route does.
    r = build_api(tmp_path / "b").request("GET", "/", auth=False)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")


# -- authentication -----------------------------------------------------------------------------


def test_no_credentials_get_a_basic_challenge_as_an_html_page(api):
    r = api.request("GET", "/ui/", auth=False)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="Berth", charset="UTF-8"'
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Sign in required" in r.text


def test_browsers_get_basic_even_in_the_token_flow(tmp_path):
    api = build_api(tmp_path, tokens=TokenSettings(public_key=PUBLIC, signing_key=SIGNING))
    assert api.request("GET", "/v2/", auth=False).headers["WWW-Authenticate"].startswith("Bearer ")
    r = api.request("GET", "/ui/", auth=False)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
    token = mint(PRIVATE, sub="ci", capabilities=["pull"])
    assert page(api, "/ui/", auth=False, headers=basic("anything", token))
    assert api.request("GET", "/ui/", auth=False, headers=basic("alice", "wrong")).status_code == 401


def test_anonymous_pull_browses_and_can_sign_in(tmp_path):
    api = build_api(tmp_path, anonymous_pull=True)
    push(api, "team/app", hostile_image(), "1")
    html = page(api, "/ui/r/team/app", auth=False).text
    assert tag_names(html) == ["1"] and "Delete" not in html and 'id="sign-in"' in html
    r = api.request("GET", "/ui/login", auth=False)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
    r = api.request("GET", "/ui/login")
    assert r.status_code == 303 and r.headers["Location"] == "/ui/"


# -- rights ---------------------------------------------------------------------------------------


def test_read_only_user_sees_no_delete_controls_and_cannot_delete(api):
    push(api, "team/app", hostile_image(), "1")
    ro = basic(RO_USER, RO_PASS)
    html = page(api, "/ui/r/team/app", auth=False, headers=ro).text
    assert tag_names(html) == ["1"]
    assert "delete-form" not in html and 'name="only"' not in html and "read-only" in html
    r = api.request(
        "POST",
        "/ui/r/team/app/-/delete",
        auth=False,
        headers={**ro, **SAME_ORIGIN, **FORM},
        body="tag=1&confirm=yes",
    )
    assert r.status_code == 403
    assert api.request("GET", "/v2/team/app/manifests/1").status_code == 200


def test_scoped_token_sees_only_its_repositories_also_in_counts(tmp_path):
    api = build_api(tmp_path, tokens=TokenSettings(public_key=PUBLIC))
    team = push(api, "team/app", hostile_image(), "1")
    push(api, "team/app", signature_for({"mediaType": OCI_MANIFEST, "digest": team, "size": 1}), "sig")
    push(api, "other/secret", hostile_image(), "1")
    push(api, "teams/not-team", hostile_image(), "1")
    token = mint(PRIVATE, sub="ci", access=[{"type": "repository", "name": "team/*", "actions": ["pull"]}])
    headers = basic("ci", token)
    html = page(api, "/ui/", auth=False, headers=headers).text
    assert repository_names(html) == ["team/app"]
    assert "secret" not in html and "not-team" not in html
    assert api.request("GET", "/ui/r/other/secret", auth=False, headers=headers).status_code == 403
    assert api.request("GET", "/ui/?q=secret", auth=False, headers=headers).text.count("data-repository") == 0
    html = page(api, "/ui/r/team/app", auth=False, headers=headers).text
    assert "<b>2</b> tags" in html and "delete-form" not in html
    # A token that may push team/* may delete there, and only there.
    pusher = basic(
        "ci", mint(PRIVATE, sub="ci", access=[{"type": "repository", "name": "team/*", "actions": ["*"]}])
    )
    assert "delete-form" in page(api, "/ui/r/team/app", auth=False, headers=pusher).text
    r = api.request(
        "POST",
        "/ui/r/other/secret/-/delete",
        auth=False,
        headers={**pusher, **SAME_ORIGIN, **FORM},
        body="tag=1&confirm=yes",
    )
    assert r.status_code == 403


def test_a_token_without_pull_sees_no_repository(tmp_path):
    api = build_api(tmp_path, tokens=TokenSettings(public_key=PUBLIC))
    push(api, "team/app", hostile_image(), "1")
    headers = basic("ci", mint(PRIVATE, sub="ci", capabilities=["push"]))
    assert repository_names(page(api, "/ui/", auth=False, headers=headers).text) == []


# -- escaping -------------------------------------------------------------------------------------


class _Elements(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _assert_no_active_content(html: str) -> None:
    """The only script is the static file; no handler attribute, no javascript: link, no
    element a document could have injected."""
    for tag, attrs in _Elements(html).tags:
        assert tag not in ("img", "iframe", "object", "embed"), (tag, attrs)
        if tag == "script":
            assert re.fullmatch(r"/ui/static/ui\.[0-9a-f]{10}\.js", attrs.get("src") or ""), attrs
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for name in ("href", "src", "action", "formaction"):
            assert not (attrs.get(name) or "").strip().lower().startswith("javascript"), (tag, attrs)


def _assert_inert(html: str, shows_hostile_text: bool = True) -> None:
    _assert_no_active_content(html)
    assert "<script>" not in html
    if shows_hostile_text:
        assert "&lt;script&gt;" in html
    assert LONG not in html  # cut


def test_hostile_manifest_and_config_render_as_text(api):
    digest = push(api, "team/app", hostile_image(), "1")
    html = page(api, "/ui/r/team/app/-/image/1").text
    _assert_inert(html)
    assert "javascript:document" in html  # shown, as text
    assert '<a href="https://example.com/docs?a=1&amp;b=2"' in html  # a real URL is a link
    assert "LABEL x=&lt;script&gt;" in html and "no layer" in html  # empty_layer step
    _assert_inert(page(api, "/ui/r/team/app").text, shows_hostile_text=False)
    raw = page(api, f"/ui/r/team/app/-/raw/{digest}").text
    assert "<script>" not in raw and "&lt;script&gt;" in raw and LONG in raw  # raw JSON is whole
    config = json.loads(api.request("GET", "/v2/team/app/manifests/1").content)["config"]["digest"]
    raw = page(api, f"/ui/r/team/app/-/raw/{config}").text
    assert "&lt;script&gt;" in raw and "<script>" not in raw and "&#34;EVIL=" in raw


def test_every_page_carries_the_csp_and_no_inline_script(api):
    digest = push(api, "team/app", hostile_image(), "1")
    for path in (
        "/ui/",
        "/ui/r/team/app",
        "/ui/r/team/app/-/image/1",
        f"/ui/r/team/app/-/raw/{digest}",
        "/ui/r/x",
    ):
        r = api.request("GET", path)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        _assert_no_active_content(r.text)


# -- deleting ---------------------------------------------------------------------------------

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_delete_two_tags_with_a_confirmation_step(api):
    doc = hostile_image()
    push(api, "team/app", doc, "1")
    push(api, "team/app", doc, "2")
    push(api, "team/app", doc, "3")
    headers = {**SAME_ORIGIN, **FORM}
    r = api.request("POST", "/ui/r/team/app/-/delete", headers=headers, body="tag=1&tag=2")
    assert r.status_code == 200 and 'id="confirm-delete"' in r.text
    assert api.request("GET", "/v2/team/app/manifests/1").status_code == 200  # nothing gone yet
    r = api.request("POST", "/ui/r/team/app/-/delete", headers=headers, body="tag=1&tag=2&confirm=yes")
    assert r.status_code == 303
    assert r.headers["Location"] == "/ui/r/team/app?deleted=1&deleted=2"
    assert api.request("GET", "/v2/team/app/tags/list").json["tags"] == ["3"]
    html = page(api, r.headers["Location"]).text
    assert "Deleted 1, 2" in html and tag_names(html) == ["3"]
    # One row's own button deletes that tag only, whatever else is ticked.
    push(api, "team/app", doc, "4")
    r = api.request("POST", "/ui/r/team/app/-/delete", headers=headers, body="tag=3&only=4&confirm=yes")
    assert api.request("GET", "/v2/team/app/tags/list").json["tags"] == ["3"]


@pytest.mark.parametrize(
    "headers",
    [
        {},  # neither Origin nor Referer
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "https://falconframework.org"},  # another scheme is another origin
        {"Referer": "http://evil.example/ui/r/team/app"},
        {"Origin": "http://falconframework.org", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://falconframework.org", "Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_site_delete_is_refused(api, headers):
    push(api, "team/app", hostile_image(), "1")
    r = api.request("POST", "/ui/r/team/app/-/delete", headers={**headers, **FORM}, body="tag=1&confirm=yes")
    assert r.status_code == 403, r.text
    assert api.request("GET", "/v2/team/app/manifests/1").status_code == 200


def test_same_origin_by_referer_and_never_by_get(api):
    push(api, "team/app", hostile_image(), "1")
    r = api.request("GET", "/ui/r/team/app/-/delete", query_string="tag=1&confirm=yes")
    assert r.status_code == 405
    headers = {"Referer": "http://falconframework.org/ui/r/team/app", "Sec-Fetch-Site": "same-origin", **FORM}
    r = api.request("POST", "/ui/r/team/app/-/delete", headers=headers, body="tag=1&confirm=yes")
    assert r.status_code == 303
    assert api.request("GET", "/v2/team/app/manifests/1").status_code == 404


def test_deletes_disabled_show_no_controls_and_refuse(tmp_path):
    api = build_api(tmp_path, delete_enabled=False)
    push(api, "team/app", hostile_image(), "1")
    assert "delete-form" not in page(api, "/ui/r/team/app").text
    r = api.request(
        "POST", "/ui/r/team/app/-/delete", headers={**SAME_ORIGIN, **FORM}, body="tag=1&confirm=yes"
    )
    assert r.status_code == 405
    assert api.request("GET", "/v2/team/app/manifests/1").status_code == 200


# -- lists, order, pagination ---------------------------------------------------------------


def test_tags_in_natural_order_and_newest_first(api):
    doc = hostile_image()
    for tag in ("1.10", "latest", "1.9", "1.2-alpine", "v10", "v2"):
        push(api, "team/app", doc, tag)
    assert tag_names(page(api, "/ui/r/team/app").text) == ["1.2-alpine", "1.9", "1.10", "latest", "v2", "v10"]
    assert tag_names(page(api, "/ui/r/team/app?sort=newest").text)[0] == "v2"
    assert tag_names(page(api, "/ui/r/team/app?q=1.").text) == ["1.2-alpine", "1.9", "1.10"]


def test_repository_list_pages_and_filter(api, monkeypatch):
    monkeypatch.setattr(browse, "REPOSITORIES_PER_PAGE", 3)
    monkeypatch.setattr(browse, "MAX_SCANNED_NAMES", 5)
    doc = hostile_image()
    names = [f"ns/app{i:02d}" for i in range(8)] + ["zz/needle"]
    for name in names:
        push(api, name, doc, "1")
    seen, url = [], "/ui/"
    while url:
        html = page(api, url).text
        seen += repository_names(html)
        found = re.search(r'href="([^"]+)" rel="next"', html)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert seen == names
    # A filter that matches late: the screen stops after 5 names and offers to keep looking.
    html = page(api, "/ui/?q=needle").text
    assert repository_names(html) == [] and "Keep looking" in html
    found = re.search(r'href="([^"]+)" rel="next"', html).group(1).replace("&amp;", "&")
    assert repository_names(page(api, found).text) == ["zz/needle"]


def test_repository_list_shows_counts_sizes_and_push_time(api):
    doc = hostile_image()
    push(api, "team/app", doc, "1")
    push(api, "team/app", doc, "2")
    html = page(api, "/ui/").text
    row = re.search(r'<tr data-repository="team/app">(.*?)</tr>', html, re.S).group(1)
    size = human_size(sum(len(b) for b in doc.blobs) + len(doc.manifest))
    assert '<td class="num">2</td>' in row and f">{size}<" in row and "just now" in row


# -- images, indexes, referrers -------------------------------------------------------------


def _index(api, repo):
    children = []
    for arch in ("amd64", "arm64"):
        doc = hostile_image()
        config = json.loads(doc.blobs[0])
        config["architecture"] = arch
        config["config"]["Env"] = [f"ARCH={arch}"]
        doc.blobs[0] = json.dumps(config).encode()
        manifest = json.loads(doc.manifest)
        manifest["config"]["digest"] = digest_of(doc.blobs[0])
        manifest["config"]["size"] = len(doc.blobs[0])
        doc.manifest = json.dumps(manifest).encode()
        push(api, repo, doc, f"only-{arch}")
        children.append((arch, doc))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": d.digest,
                "size": len(d.manifest),
                "platform": {"os": "linux", "architecture": arch},
            }
            for arch, d in children
        ],
    }
    r, digest, body = api.push_manifest(repo, "multi", index, OCI_INDEX)
    assert r.status_code == 201
    return digest, body, dict(children)


def test_index_platforms_switch_and_referrers(api):
    index_digest, index_body, children = _index(api, "team/multi")
    arm = children["arm64"]
    push(
        api,
        "team/multi",
        signature_for({"mediaType": OCI_INDEX, "digest": index_digest, "size": len(index_body)}),
        "sig",
    )
    push(
        api,
        "team/multi",
        sbom_for({"mediaType": OCI_MANIFEST, "digest": arm.digest, "size": len(arm.manifest)}),
        "sbom",
    )
    html = page(api, "/ui/r/team/multi").text
    row = re.search(r'<tr data-tag="multi">(.*?)</tr>', html, re.S).group(1)
    assert "Index" in row and "linux/amd64, linux/arm64" in row
    sig_row = re.search(r'<tr data-tag="sig">(.*?)</tr>', html, re.S).group(1)
    assert "Signature (cosign)" in sig_row
    assert "SBOM (SPDX)" in re.search(r'<tr data-tag="sbom">(.*?)</tr>', html, re.S).group(1)

    html = page(api, "/ui/r/team/multi/-/image/multi").text
    assert 'data-platform="linux/amd64"' in html and 'data-platform="linux/arm64"' in html
    assert "ARCH=amd64" in html and "ARCH=arm64" not in html  # the first platform by default
    assert "Signature (cosign)" in html  # the index's referrer
    html = page(api, f"/ui/r/team/multi/-/image/multi?platform={arm.digest}").text
    assert "ARCH=arm64" in html and "ARCH=amd64" not in html
    assert "SBOM (SPDX)" in html and 'data-artifact-type="application/spdx+json"' in html
    selected = html[html.index('id="selected-platform"') :]
    sbom = re.search(r'<a href="(/ui/r/team/multi/-/image/sha256:[0-9a-f]+)" class="referrer">', selected)
    sbom = sbom.group(1)
    artifact = page(api, sbom).text
    assert "sbom.spdx.json" in artifact and "SBOM (SPDX)" in artifact and arm.digest[:19] in artifact


def test_pull_command_uses_the_host_the_browser_came_through(tmp_path):
    api = build_api(tmp_path, trusted_proxies=TrustedProxies.parse("127.0.0.1"))
    push(api, "team/app", hostile_image(), "1")
    proxy, client = {"remote_addr": "127.0.0.1"}, {"remote_addr": "192.0.2.7"}
    html = page(api, "/ui/r/team/app", headers={"Host": "registry.example.com:8443"}, **client).text
    assert "docker pull registry.example.com:8443/team/app:1" in html
    forwarded = {"Host": "127.0.0.1:5000", "X-Forwarded-Host": "public.example.com"}
    html = page(api, "/ui/r/team/app", headers=forwarded, **proxy).text
    assert "docker pull public.example.com/team/app:1" in html  # from a trusted proxy
    html = page(api, "/ui/r/team/app", headers=forwarded, **client).text
    assert "docker pull 127.0.0.1:5000/team/app:1" in html  # anyone else's is ignored
    html = page(api, "/ui/r/team/app", headers={"Host": 'evil"><script>'}, **client).text
    assert "<script>" not in html and "docker pull falconframework.org/team/app:1" in html


def test_unknown_things_are_html_404s(api):
    push(api, "team/app", hostile_image(), "1")
    for path in (
        "/ui/r/nope/app",
        "/ui/r/team/app/-/image/missing",
        "/ui/r/team/app/-/raw/sha256:" + "0" * 64,
        "/ui/nowhere",
    ):
        r = api.request("GET", path)
        assert r.status_code == 404 and "Not found" in r.text, path
    assert api.request("GET", "/ui/r/Team!/app").status_code == 400


def test_raw_json_only_of_what_the_repository_holds(api):
    digest = push(api, "team/app", hostile_image(), "1")
    push(api, "team/other", hostile_image(salt="other"), "1")
    assert api.request("GET", f"/ui/r/team/other/-/raw/{digest}").status_code == 404
    raw = page(api, f"/ui/r/team/app/-/raw/{digest}").text
    assert "&#34;schemaVersion&#34;: 2" in raw  # pretty-printed


# -- static files and caches ------------------------------------------------------------------


def test_static_files_are_content_addressed_and_cached(api):
    html = page(api, "/ui/").text
    css = re.search(r'href="(/ui/static/ui\.[0-9a-f]{10}\.css)"', html).group(1)
    js = re.search(r'src="(/ui/static/ui\.[0-9a-f]{10}\.js)"', html).group(1)
    for url, kind in ((css, "text/css"), (js, "text/javascript")):
        r = api.request("GET", url, auth=False)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind)
        assert "immutable" in r.headers["Cache-Control"] and "max-age=31536000" in r.headers["Cache-Control"]
        again = api.request("GET", url, auth=False, headers={"If-None-Match": r.headers["ETag"]})
        assert again.status_code == 304 and again.content == b""
    assert api.request("GET", "/ui/static/ui.css", auth=False).status_code == 404


def test_second_view_reads_no_manifest_or_tag_again(api, monkeypatch):
    doc = hostile_image()
    for tag in ("1", "2", "3"):
        push(api, "team/app", doc, tag)
    page(api, "/ui/r/team/app")
    from storage.drivers.filesystem import FilesystemDriver

    reads = []
    original = FilesystemDriver.read_bytes
    monkeypatch.setattr(
        FilesystemDriver, "read_bytes", lambda self, key: reads.append(key) or original(self, key)
    )
    page(api, "/ui/r/team/app")
    assert reads == []


def test_lru_cache_is_bounded():
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)  # "b" is the least recently used
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2


def test_a_repository_with_too_many_images_is_not_totalled_on_every_view(api, monkeypatch):
    """Beyond TOTAL_SIZE_IMAGES distinct images a view summarises only the rows it shows: it
    must not read every manifest of a huge repository on each view."""
    monkeypatch.setattr(inventory_module, "TOTAL_SIZE_IMAGES", 2)
    monkeypatch.setattr(browse, "TAGS_PER_PAGE", 1)
    for tag in ("1", "2", "3"):
        push(api, "team/big", hostile_image(salt=tag), tag)
    summarised = []
    from storage.inventory import Inventory

    real = Inventory.summary
    monkeypatch.setattr(
        Inventory, "summary", lambda self, digest: summarised.append(digest) or real(self, digest)
    )
    html = page(api, "/ui/r/team/big").text
    assert "size not totalled" in html
    assert len(summarised) == 1  # the one row shown
    assert tag_names(html) == ["1"]
