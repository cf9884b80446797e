"""The web UI in a real browser: Debian's chromium, driven through chromium-driver by Selenium,
against Berth under gunicorn. A multi-arch image is pushed with skopeo, a signature and an SBOM
with oras-style artifacts over the HTTP API, and an image whose config is hostile. The tests
sign in (an Authorization header set through the DevTools protocol), browse, filter, switch
platforms, copy a pull command, delete two tags, and check what the read-only user sees.
Screenshots of each page at desktop and phone widths go to docs/screenshots/."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
import requests

from tests.ui_documents import OCI_MANIFEST, Pushable, hostile_image, sbom_for, signature_for

from . import images
from .nginx import Nginx
from .process import REPO_ROOT, require_binary
from .servers import BerthServer

pytestmark = pytest.mark.e2e

SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
DESKTOP = (1366, 900)
PHONE = (390, 844)
TAGS = ("1.0", "1.9", "1.10", "old-1", "old-2")


# -- content -------------------------------------------------------------------------------------


def _image(arch: str) -> images.Image:
    """A small image whose bytes depend only on `arch` (stable screenshots), with a config like
    a real build's: a history with metadata-only steps, env, ports, labels."""
    layers, diff_ids = [], []
    for step in ("base system", "application"):
        tar = hashlib.sha256(f"{arch} {step}".encode()).digest() * (64 if step == "application" else 256)
        data = gzip.compress(tar, mtime=0)
        layers.append(images.Blob(images.sha256_digest(data), data, images.OCI_LAYER_GZIP))
        diff_ids.append(images.sha256_digest(tar))
    config = {
        "architecture": arch,
        "os": "linux",
        **({"variant": "v8"} if arch == "arm64" else {}),
        "created": "2025-03-14T09:26:53.589793238Z",
        "config": {
            "User": "app",
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "APP_ENV=production"],
            "Entrypoint": ["/usr/local/bin/server"],
            "Cmd": ["--listen", ":8080"],
            "WorkingDir": "/srv/app",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {
                "org.opencontainers.image.source": "https://git.example.com/team/multi",
                "org.opencontainers.image.version": "1.0",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2025-03-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:base.tar in / "},
            {
                "created": "2025-03-01T00:00:00Z",
                "created_by": '/bin/sh -c #(nop)  CMD ["sh"]',
                "empty_layer": True,
            },
            {"created": "2025-03-14T09:26:53Z", "created_by": "WORKDIR /srv/app", "empty_layer": True},
            {"created": "2025-03-14T09:26:53Z", "created_by": "COPY server /usr/local/bin/server # buildkit"},
            {"created": "2025-03-14T09:26:53Z", "created_by": "USER app", "empty_layer": True},
            {"created": "2025-03-14T09:26:53Z", "created_by": "EXPOSE map[8080/tcp:{}]", "empty_layer": True},
        ],
    }
    config_bytes = json.dumps(config, indent=2).encode()
    config_blob = images.Blob(images.sha256_digest(config_bytes), config_bytes, images.OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": images.OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    data = json.dumps(manifest, indent=2).encode()
    return images.Image(
        images.Blob(images.sha256_digest(data), data, images.OCI_MANIFEST),
        config_blob,
        layers,
        diff_ids,
        arch,
    )


def _index() -> images.Index:
    children = [_image("amd64"), _image("arm64")]
    doc = {
        "schemaVersion": 2,
        "mediaType": images.OCI_INDEX,
        "manifests": [
            c.manifest.descriptor(
                platform={
                    "architecture": c.arch,
                    "os": "linux",
                    **({"variant": "v8"} if c.arch == "arm64" else {}),
                }
            )
            for c in children
        ],
    }
    data = json.dumps(doc, indent=2).encode()
    return images.Index(images.Blob(images.sha256_digest(data), data, images.OCI_INDEX), children)


def _push(session: requests.Session, url: str, repo: str, doc: Pushable, tag: str) -> None:
    for blob in doc.blobs:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        r = session.post(f"{url}/v2/{repo}/blobs/uploads/?digest={digest}", data=blob, timeout=30)
        assert r.status_code == 201, r.text
    r = session.put(
        f"{url}/v2/{repo}/manifests/{tag}",
        data=doc.manifest,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=30,
    )
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def berth(tmp_path_factory):
    server = BerthServer(tmp_path_factory.mktemp("ui-browser"), workers=2)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def content(berth, tmp_path_factory):
    """team/multi: a two-platform index pushed by skopeo under several tags, signed (the index)
    and with an SBOM (its amd64 image); team/xss: the hostile image; other/app: one more."""
    from .clients import Skopeo

    skopeo = Skopeo(tmp_path_factory.mktemp("ui-skopeo"))
    index = _index()
    layout = images.write_oci_index_layout(tmp_path_factory.mktemp("ui-layout") / "oci", index, "1.0")
    skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        berth.rw.colon,
        layout,
        f"docker://{berth.host}/team/multi:1.0",
    )
    session = berth.session()
    for tag in TAGS[1:]:
        r = session.put(
            f"{berth.url}/v2/team/multi/manifests/{tag}",
            data=index.manifest.data,
            headers={"Content-Type": images.OCI_INDEX},
            timeout=30,
        )
        assert r.status_code == 201, r.text
    subject = {"mediaType": images.OCI_INDEX, "digest": index.digest, "size": index.manifest.size}
    _push(session, berth.url, "team/multi", signature_for(subject), "sha256-signature")
    amd64 = index.child("amd64")
    _push(session, berth.url, "team/multi", sbom_for(amd64.manifest.descriptor()), "sha256-sbom")
    _push(session, berth.url, "team/xss", hostile_image(), "evil")
    _push(session, berth.url, "other/app", hostile_image(salt="other"), "latest")
    return index


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = require_binary("chromium", "/usr/bin/chromium")
    for arg in (
        "--ignore-certificate-errors",  # the test nginx's certificate is self-signed
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(arg)
    # The driver from Debian's package: Selenium Manager never downloads one.
    service = Service(require_binary("chromedriver", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Network.enable", {})
    yield driver
    driver.quit()


def sign_in(driver, creds) -> None:
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": creds.basic_header}})


def shoot(driver, name: str) -> None:
    """The page at desktop and phone widths, as docs/screenshots/<name>-{desktop,phone}.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for label, (width, height), mobile in (("desktop", DESKTOP, False), ("phone", PHONE, True)):
        # No reload (a page answering a POST would be posted again): the layout follows the
        # new viewport by itself.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )
        driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
        driver.save_screenshot(str(SCREENSHOTS / f"{name}-{label}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def texts(driver, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def no_script_ran(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - the property raises when there is no alert
    assert driver.execute_script("return document.documentElement.getAttribute('data-xss')") is None
    assert driver.execute_script("return document.querySelectorAll('img, iframe, object, embed').length") == 0
    scripts = driver.execute_script("return Array.from(document.scripts).map(s => s.getAttribute('src'))")
    assert len(scripts) == 1 and scripts[0].startswith("/ui/static/ui.")


# -- the tests ----------------------------------------------------------------------------------


def test_browse_filter_switch_platforms_copy_and_referrers(berth, content, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    sign_in(browser, berth.rw)
    browser.get(f"{berth.url}/ui/")
    assert texts(browser, "#repositories td.name") == ["other/app", "team/multi", "team/xss"]
    shoot(browser, "repositories")

    box = browser.find_element(By.ID, "q")
    box.send_keys("team/")
    box.submit()
    WebDriverWait(browser, 10).until(lambda d: "q=team" in d.current_url)
    assert texts(browser, "#repositories td.name") == ["team/multi", "team/xss"]

    browser.find_element(By.LINK_TEXT, "team/multi").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/ui/r/team/multi"))
    tags = texts(browser, "#tags td.name")
    assert tags.index("1.9") < tags.index("1.10") and tags[:3] == ["1.0", "1.9", "1.10"]
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-tag="1.0"]')
    assert "Index" in row.text and "linux/amd64, linux/arm64/v8" in row.text
    assert (
        "Signature (cosign)" in browser.find_element(By.CSS_SELECTOR, 'tr[data-tag="sha256-signature"]').text
    )
    assert "SBOM (SPDX)" in browser.find_element(By.CSS_SELECTOR, 'tr[data-tag="sha256-sbom"]').text
    shoot(browser, "repository")

    # Copy the pull command: the clipboard holds exactly the line shown.
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": berth.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-tag="1.10"]')
    shown = row.find_element(By.CSS_SELECTOR, "code.pull-command").text
    assert shown == f"docker pull {berth.host}/team/multi:1.10"
    row.find_element(By.CSS_SELECTOR, "td.pull button.copy").click()
    button = row.find_element(By.CSS_SELECTOR, "td.pull button.copy")
    WebDriverWait(browser, 10).until(lambda d: button.get_attribute("data-copied"))
    assert button.get_attribute("data-copied") == shown
    clipboard = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, e => done('error: ' + e));"
    )
    assert clipboard == shown

    # The index: switch platforms (the select submits by itself), see the referrers.
    browser.find_element(By.LINK_TEXT, "1.0").click()
    WebDriverWait(browser, 10).until(lambda d: "/-/image/1.0" in d.current_url)
    assert browser.find_element(By.ID, "config-platform").text == "linux/amd64"
    assert "Signature (cosign)" in browser.find_element(By.ID, "index-referrers").text
    assert "SBOM (SPDX)" in browser.find_element(By.ID, "selected-platform").text
    shoot(browser, "image-index")
    assert not browser.find_element(By.CSS_SELECTOR, "#platform-form button").is_displayed()  # JS hid it
    Select(browser.find_element(By.ID, "platform")).select_by_visible_text("linux/arm64/v8")
    WebDriverWait(browser, 10).until(lambda d: "platform=" in d.current_url)
    assert browser.find_element(By.ID, "config-platform").text == "linux/arm64/v8"
    assert "No signatures, SBOMs" in browser.find_element(By.ID, "selected-platform").text
    history = texts(browser, "#selected-platform ol.history li")
    assert len(history) == 6 and "no layer" in history[1] and history[3].startswith("COPY server")

    # The raw JSON of the arm64 config, one click away.
    browser.find_element(By.CSS_SELECTOR, "#selected-platform a.raw-config").click()
    WebDriverWait(browser, 10).until(lambda d: "/-/raw/" in d.current_url)
    assert json.loads(browser.find_element(By.ID, "raw-json").text)["architecture"] == "arm64"
    shoot(browser, "raw-json")

    # The SBOM, from the amd64 image's referrers.
    browser.get(f"{berth.url}/ui/r/team/multi/-/image/1.0")
    browser.find_element(By.CSS_SELECTOR, "#selected-platform a.referrer").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "kind").text == "SBOM (SPDX)")
    assert "sbom.spdx.json" in browser.find_element(By.ID, "layers").text
    shoot(browser, "artifact")


def test_hostile_image_renders_as_text(berth, content, browser):
    from selenium.webdriver.common.by import By

    sign_in(browser, berth.rw)
    browser.get(f"{berth.url}/ui/r/team/xss/-/image/evil")
    no_script_ran(browser)
    labels = browser.find_element(By.ID, "labels").text
    assert "<script>document.documentElement.setAttribute('data-xss','1')" in labels
    assert "javascript:document" in labels
    links = browser.execute_script("return Array.from(document.links).map(a => a.getAttribute('href'))")
    assert not [h for h in links if h.lower().startswith("javascript")]
    assert "<script>" in browser.find_element(By.ID, "history").text
    shoot(browser, "image-hostile")
    no_script_ran(browser)
    browser.get(f"{berth.url}/ui/r/team/xss")
    no_script_ran(browser)


def test_delete_two_tags_then_read_only_sees_no_controls(berth, content, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sign_in(browser, berth.rw)
    browser.get(f"{berth.url}/ui/r/team/multi")
    for tag in ("old-1", "old-2"):
        browser.find_element(By.CSS_SELECTOR, f'tr[data-tag="{tag}"] input[name=tag]').click()
    browser.find_element(By.ID, "delete-selected").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "confirm-delete"))
    assert "Delete 2 tags of team/multi?" in browser.find_element(By.TAG_NAME, "h1").text
    assert berth.session().get(f"{berth.url}/v2/team/multi/manifests/old-1", timeout=10).status_code == 200
    shoot(browser, "delete-confirm")
    browser.find_element(By.ID, "confirm").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "deleted-notice"))
    assert browser.find_element(By.ID, "deleted-notice").text == "Deleted old-1, old-2."
    assert "old-1" not in texts(browser, "#tags td.name") and "1.10" in texts(browser, "#tags td.name")
    listed = berth.session().get(f"{berth.url}/v2/team/multi/tags/list", timeout=10).json()["tags"]
    assert "old-1" not in listed and "old-2" not in listed and "1.10" in listed
    for tag in ("old-1", "old-2"):
        assert (
            berth.session().get(f"{berth.url}/v2/team/multi/manifests/{tag}", timeout=10).status_code == 404
        )

    sign_in(browser, berth.ro)
    browser.get(f"{berth.url}/ui/r/team/multi")
    assert browser.find_element(By.CSS_SELECTOR, ".who .badge").text == "read-only"
    assert browser.find_elements(By.CSS_SELECTOR, "input[name=tag], button.danger, #delete-form") == []
    assert "1.10" in texts(browser, "#tags td.name")


def test_behind_the_shipped_nginx(berth, content, browser, tmp_path_factory):
    """Through deploy/nginx.conf with TLS: the pull line names the host the browser used, and a
    delete passes the same-origin check (https, from X-Forwarded-Proto of a trusted proxy)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    proxy = Nginx(tmp_path_factory.mktemp("ui-nginx"), [berth.host]).start()
    try:
        session = berth.session()
        r = session.put(
            f"{berth.url}/v2/team/multi/manifests/via-nginx",
            data=content.manifest.data,
            headers={"Content-Type": images.OCI_INDEX},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        sign_in(browser, berth.rw)
        browser.get(f"{proxy.url}/")
        WebDriverWait(browser, 10).until(lambda d: d.current_url == f"{proxy.url}/ui/")
        browser.get(f"{proxy.url}/ui/r/team/multi")
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-tag="via-nginx"]')
        assert row.find_element(By.CSS_SELECTOR, "code.pull-command").text == (
            f"docker pull {proxy.host}/team/multi:via-nginx"
        )
        row.find_element(By.CSS_SELECTOR, 'button[name="only"]').click()
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "confirm"))
        browser.find_element(By.ID, "confirm").click()
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "deleted-notice"))
        assert session.get(f"{berth.url}/v2/team/multi/manifests/via-nginx", timeout=10).status_code == 404
        assert "/ui/r/team/multi/-/delete" in proxy.access_log()
    finally:
        proxy.stop()
