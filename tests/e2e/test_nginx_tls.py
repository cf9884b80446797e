"""Berth behind the shipped reverse-proxy configuration (deploy/nginx.conf): Debian's nginx
terminating TLS with a certificate made here, in front of a real gunicorn (2 gevent workers,
basic auth).

- docker pushes (each layer in one chunked PATCH) and pulls through it; skopeo pushes and pulls
  an image with a 300 MiB layer, verifying the certificate; docker pulls that image too.
- Every Location and Link header seen through the proxy is relative or names the proxy's
  https://host:port, never the upstream's address; the health endpoints answer through it.
- With the token flow on, the 401 challenge's realm is the proxy's https URL (whatever
  scheme headers the client sends), and skopeo follows it; X-Forwarded-Proto is honoured only
  from FORWARDED_ALLOW_IPS.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import uuid
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.jwt_keys import b64, keypair

from . import images
from .nginx import Nginx
from .servers import BerthServer

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
BIG_LAYER_PAYLOAD = 300 * MiB
TIMEOUT = 30  # seconds, for each plain HTTP request


def _require_berth(registry_class) -> None:
    if registry_class is not BerthServer:
        pytest.skip("the proxy tests check Berth's headers and settings (unset E2E_TARGET)")


@pytest.fixture(scope="module")
def proxied(registry_class, tmp_path_factory):
    """nginx (deploy/nginx.conf) on https://127.0.0.1:<port> in front of one Berth: gunicorn with
    2 gevent workers, basic auth, access log."""
    _require_berth(registry_class)
    berth = BerthServer(tmp_path_factory.mktemp("proxied-berth"), workers=2, access_log=True)
    proxy = Nginx(tmp_path_factory.mktemp("nginx"), [berth.host])
    try:
        berth.start()
        proxy.start()
        yield proxy, berth
    finally:
        proxy.stop()
        berth.stop()


@pytest.fixture
def token_keys():
    return keypair("EC")


def _behind_nginx(make_registry, tmp_path_factory, request, **env: str) -> tuple[Nginx, BerthServer]:
    berth = make_registry(workers=2, access_log=True, extra_env=env)
    proxy = Nginx(tmp_path_factory.mktemp("nginx"), [berth.host])
    request.addfinalizer(proxy.stop)
    return proxy.start(), berth


# --------------------------------------------------------------------------- helpers


def _session(proxy: Nginx, berth: BerthServer) -> requests.Session:
    s = requests.Session()
    s.auth = berth.rw.tuple
    s.verify = str(proxy.ca)  # the certificate is verified: a real TLS setup, not -k
    s.trust_env = False  # or REQUESTS_CA_BUNDLE, when set, would replace s.verify
    return s


def _assert_points_at_proxy(value: str | None, proxy: Nginx, berth: BerthServer, what: str) -> str:
    """A URL Berth sent through the proxy: relative, or absolute on the proxy's https origin."""
    assert value, f"{what}: missing"
    assert f":{berth.port}" not in value, f"{what} names the upstream {berth.host}: {value}"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        assert (parts.scheme, parts.netloc) == ("https", proxy.host), f"{what} is not the proxy: {value}"
    else:
        assert value.startswith("/v2/"), f"{what}: {value}"
    return urljoin(f"{proxy.url}/", value)


def _link_target(link: str | None, proxy: Nginx, berth: BerthServer, what: str) -> str:
    assert link, f"{what}: no Link header"
    m = re.fullmatch(r'<([^>]+)>;\s*rel="next"', link)
    assert m, f"{what}: Link {link!r}"
    return _assert_points_at_proxy(m.group(1), proxy, berth, what)


def _realm(response: requests.Response) -> str:
    challenge = response.headers.get("WWW-Authenticate", "")
    m = re.match(r'Bearer realm="([^"]+)"', challenge)
    assert m, f"not a Bearer challenge: {challenge!r}"
    return m.group(1)


def _nginx_lines(proxy: Nginx, method: str, path_prefix: str) -> list[str]:
    return [line for line in proxy.access_log().splitlines() if f'"{method} {path_prefix}' in line]


class _HashingWriter:
    """Counts and hashes what goes through it to the file underneath."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class _RandomReader:
    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def _write_big_image(root: Path, payload_size: int, tag: str = "v1") -> dict:
    """An OCI layout with one image whose only layer is a gzip'd (level 0, so incompressible
    data stays its size) tar of `payload_size` random bytes, streamed to disk, never in memory."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = root / "layer.tmp"
    with open(tmp, "wb") as out:
        outer = _HashingWriter(out)
        with gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=0, mtime=0) as gz:
            inner = _HashingWriter(gz)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=MiB) as tar:
                info = tarfile.TarInfo("data/big.bin")
                info.size, info.mode, info.mtime = payload_size, 0o644, 0
                tar.addfile(info, _RandomReader(payload_size))
    layer_digest = "sha256:" + outer.sha256.hexdigest()
    diff_id = "sha256:" + inner.sha256.hexdigest()
    layer_size = tmp.stat().st_size
    tmp.rename(blobs / layer_digest.split(":")[1])
    config = json.dumps(
        {
            "architecture": images.host_arch(),
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_digest = images.sha256_digest(config)
    (blobs / config_digest.split(":")[1]).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": images.OCI_MANIFEST,
            "config": {"mediaType": images.OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": images.OCI_LAYER_GZIP, "digest": layer_digest, "size": layer_size}],
        }
    ).encode()
    manifest_digest = images.sha256_digest(manifest)
    (blobs / manifest_digest.split(":")[1]).write_bytes(manifest)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descriptor = {
        "mediaType": images.OCI_MANIFEST,
        "digest": manifest_digest,
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    return {
        "ref": f"oci:{root}:{tag}",
        "manifest": manifest_digest,
        "config": config_digest,
        "layer": layer_digest,
        "layer_size": layer_size,
    }


def _docker_login(docker_daemon, proxy: Nginx, berth: BerthServer) -> None:
    out = docker_daemon.login(proxy.host, berth.rw).stdout
    assert "Login Succeeded" in out, out


# --------------------------------------------------------------------------- tests


def test_docker_chunked_push_and_pull_over_tls(proxied, docker_daemon, skopeo, tmp_path):
    proxy, berth = proxied
    img = images.make_image(2 * MiB, n_layers=2)
    local = f"e2e-local/nginx-{uuid.uuid4().hex[:8]}:v1"
    archive = tmp_path / "image.tar"
    skopeo("copy", images.write_oci_layout(tmp_path / "oci", img, "v1"), f"docker-archive:{archive}:{local}")
    docker_daemon.docker("load", "-i", archive)
    repo = f"proxy/docker-{uuid.uuid4().hex[:8]}"
    target = f"{proxy.host}/{repo}:v1"
    try:
        _docker_login(docker_daemon, proxy, berth)
        docker_daemon.docker("tag", local, target)
        out = docker_daemon.docker("push", target, timeout=120).stdout
        assert re.search(r"digest: sha256:[0-9a-f]{64}", out), out
        docker_daemon.docker("rmi", target, local)
        docker_daemon.docker("rmi", "-f", img.config_digest, check=False)
        docker_daemon.docker("pull", target, timeout=120)
        image_id = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", target).stdout.strip()
        assert image_id == img.config_digest
    finally:
        docker_daemon.docker("rmi", "-f", target, local, check=False)
        docker_daemon.docker("logout", proxy.host, check=False)

    # docker streams each layer (compressed on the fly, size unknown) in one chunked PATCH: nginx
    # saw Transfer-Encoding: chunked and passed it, unbuffered, to Berth, which took it.
    patches = _nginx_lines(proxy, "PATCH", f"/v2/{repo}/blobs/uploads/")
    chunked = [
        line
        for line in patches
        if re.search(
            rf'HTTP/1\.1" 202 \d+ len=(\d+) te=chunked up={re.escape(berth.host)} upstatus=202 ', line
        )
        and int(re.search(r"len=(\d+)", line).group(1)) > MiB  # a whole layer in the request
    ]
    assert len(chunked) >= 2, "no chunked layer PATCHes through nginx:\n" + "\n".join(patches)
    berth_log = berth.access_log_path.read_text()
    assert len(re.findall(rf"PATCH /v2/{repo}/blobs/uploads/\S+ HTTP/1\.1 202", berth_log)) >= 2
    # ... and docker's pull went through the proxy too (the config blob and both layers, which
    # docker compressed itself, so their digests are its own).
    pulled = [line for line in _nginx_lines(proxy, "GET", f"/v2/{repo}/blobs/sha256:") if '" 200 ' in line]
    assert len(pulled) >= 3, "\n".join(pulled)


@pytest.fixture
def big_tmp(tmp_path):
    """tmp_path, emptied at teardown: pytest keeps recent runs' directories, not 600 MiB of them."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_300mib_layer_skopeo_and_docker_over_tls(proxied, skopeo, docker_daemon, big_tmp):
    proxy, berth = proxied
    tmp_path = big_tmp
    big = _write_big_image(tmp_path / "big", BIG_LAYER_PAYLOAD)
    assert big["layer_size"] > BIG_LAYER_PAYLOAD
    repo = f"proxy/big-{uuid.uuid4().hex[:8]}"
    ref = f"docker://{proxy.host}/{repo}:v1"
    creds = berth.rw.colon
    # --cert-dir: skopeo verifies nginx's certificate against the test CA.
    skopeo("copy", "--dest-cert-dir", proxy.cert_dir, "--dest-creds", creds, big["ref"], ref, timeout=180)
    back = tmp_path / "back"
    skopeo("copy", "--src-cert-dir", proxy.cert_dir, "--src-creds", creds, ref, f"oci:{back}:v1", timeout=180)
    desc, _ = images.read_oci_layout(back, "v1")
    assert desc["digest"] == big["manifest"]
    pulled = back / "blobs" / "sha256" / big["layer"].split(":")[1]
    assert pulled.stat().st_size == big["layer_size"]
    sha = hashlib.sha256()
    with open(pulled, "rb") as f:
        while chunk := f.read(4 * MiB):
            sha.update(chunk)
    assert "sha256:" + sha.hexdigest() == big["layer"]
    pulled.unlink()  # 300 MiB less on disk

    target = f"{proxy.host}/{repo}:v1"
    try:
        _docker_login(docker_daemon, proxy, berth)
        docker_daemon.docker("pull", target, timeout=180)
        image_id = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", target).stdout.strip()
        assert image_id == big["config"]
    finally:
        docker_daemon.docker("rmi", "-f", target, check=False)
        docker_daemon.docker("logout", proxy.host, check=False)

    # The layer crossed nginx whole, both ways: one upload request carrying all of it, and two
    # full downloads (skopeo, docker).
    uploads = [
        int(m.group(1))
        for method in ("PATCH", "PUT")
        for line in _nginx_lines(proxy, method, f"/v2/{repo}/blobs/uploads/")
        if (m := re.search(r"len=(\d+) ", line))
    ]
    assert max(uploads) >= big["layer_size"], uploads
    downloads = [
        int(line.split('" ')[1].split()[1])
        for line in _nginx_lines(proxy, "GET", f"/v2/{repo}/blobs/{big['layer']}")
        if '" 200 ' in line
    ]
    assert downloads.count(big["layer_size"]) >= 2, downloads
    # Streamed, not spooled: nginx warns when it buffers a request or response body to disk.
    assert "buffered to a temporary file" not in proxy.error_log_path.read_text()
    assert not any(
        p.is_file() for kind in ("client_body", "proxy") for p in (proxy.workdir / kind).rglob("*")
    )


def test_location_and_link_headers_point_at_the_proxy(proxied):
    proxy, berth = proxied
    s = _session(proxy, berth)
    repo = f"proxy/headers-{uuid.uuid4().hex[:8]}"
    base = f"{proxy.url}/v2/{repo}"

    r = s.get(f"{proxy.url}/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    r = requests.get(f"{proxy.url}/v2/", verify=str(proxy.ca), timeout=TIMEOUT)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic realm=")

    # A chunked upload: POST, two PATCHes, an out-of-order PATCH (416), status, PUT.
    data = os.urandom(3 * MiB + 17)
    digest = images.sha256_digest(data)
    r = s.post(f"{base}/blobs/uploads/")
    assert r.status_code == 202, r.text
    url = _assert_points_at_proxy(r.headers.get("Location"), proxy, berth, "POST Location")
    half = len(data) // 2
    for start, end in ((0, half), (half, len(data))):
        headers = {"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}"}
        r = s.patch(url, data=data[start:end], headers=headers)
        assert r.status_code == 202, r.text
        url = _assert_points_at_proxy(r.headers.get("Location"), proxy, berth, "PATCH Location")
    r = s.patch(url, data=b"x", headers={"Content-Range": "0-0", "Content-Type": "application/octet-stream"})
    assert r.status_code == 416, r.text
    _assert_points_at_proxy(r.headers.get("Location"), proxy, berth, "416 Location")
    r = s.get(url)
    assert r.status_code == 204
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    _assert_points_at_proxy(r.headers.get("Location"), proxy, berth, "status Location")
    r = s.put(url, params={"digest": digest})
    assert r.status_code == 201, r.text
    blob_url = _assert_points_at_proxy(r.headers.get("Location"), proxy, berth, "PUT Location")
    assert blob_url == f"{base}/blobs/{digest}"

    # Downloads, whole and ranged, through unbuffered proxying.
    assert s.get(blob_url).content == data
    r = s.get(blob_url, headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206
    assert r.content == data[1000:2000]

    # A monolithic upload and a cross-repository mount.
    config = b'{"architecture":"amd64","os":"linux"}'
    r = s.post(
        f"{base}/blobs/uploads/",
        params={"digest": images.sha256_digest(config)},
        data=config,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    _assert_points_at_proxy(r.headers.get("Location"), proxy, berth, "monolithic Location")
    r = s.post(f"{proxy.url}/v2/{repo}-mounted/blobs/uploads/", params={"mount": digest, "from": repo})
    assert r.status_code == 201, r.text
    _assert_points_at_proxy(r.headers.get("Location"), proxy, berth, "mount Location")

    # Manifests under three tags, then the paginated tags list and catalog.
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": images.OCI_MANIFEST,
            "config": {
                "mediaType": images.OCI_CONFIG,
                "digest": images.sha256_digest(config),
                "size": len(config),
            },
            "layers": [{"mediaType": images.OCI_LAYER_GZIP, "digest": digest, "size": len(data)}],
        }
    ).encode()
    for tag in ("a", "b", "c"):
        r = s.put(f"{base}/manifests/{tag}", data=manifest, headers={"Content-Type": images.OCI_MANIFEST})
        assert r.status_code == 201, r.text
        _assert_points_at_proxy(r.headers.get("Location"), proxy, berth, "manifest Location")
    r = s.get(f"{base}/tags/list", params={"n": 1})
    assert r.json()["tags"] == ["a"]
    following = _link_target(r.headers.get("Link"), proxy, berth, "tags Link")
    r = s.get(following)
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["b"]
    _link_target(r.headers.get("Link"), proxy, berth, "tags Link (page 2)")
    r = s.get(f"{proxy.url}/v2/_catalog", params={"n": 1})
    assert r.status_code == 200, r.text
    _link_target(r.headers.get("Link"), proxy, berth, "catalog Link")

    # Health endpoints, for probes (no credentials), and nothing outside the API.
    for path in ("/healthz", "/readyz"):
        r = requests.get(f"{proxy.url}{path}", verify=str(proxy.ca), timeout=TIMEOUT)
        assert r.status_code == 200, (path, r.text)
        assert r.json()["status"] == "ok"
    # `/` goes to Berth (it sends browsers to the web UI, after asking for credentials); any
    # other path outside /v2/, /ui/ and the health checks is nginx's own 404.
    assert requests.get(f"{proxy.url}/", verify=str(proxy.ca), timeout=TIMEOUT).status_code == 401
    assert requests.get(f"{proxy.url}/other", verify=str(proxy.ca), timeout=TIMEOUT).status_code == 404

    # No response that went through nginx came from anywhere but Berth's port.
    upstreams = set(re.findall(r" up=(\S+) ", proxy.access_log())) - {"-"}
    assert upstreams == {berth.host}, upstreams


def test_token_realm_is_the_proxy(
    make_registry, registry_class, tmp_path_factory, request, token_keys, skopeo, tmp_path
):
    _require_berth(registry_class)
    signing, _ = token_keys
    proxy, berth = _behind_nginx(
        make_registry, tmp_path_factory, request, REGISTRY_TOKEN_PRIVATE_KEY=b64(signing)
    )
    expected = f"https://127.0.0.1:{proxy.port}/v2/token"
    verify = str(proxy.ca)

    r = requests.get(f"{proxy.url}/v2/", verify=verify, timeout=TIMEOUT)
    assert r.status_code == 401
    assert _realm(r) == expected
    r = requests.get(f"{proxy.url}/v2/team/app/tags/list", verify=verify, timeout=TIMEOUT)
    assert r.status_code == 401
    assert _realm(r) == expected
    assert 'scope="repository:team/app:pull"' in r.headers["WWW-Authenticate"]
    # Scheme headers a client sends are replaced (X-Forwarded-Proto) or dropped by nginx: no
    # downgrade of the realm, and no 400 from gunicorn for contradictory scheme headers.
    spoofed = {"X-Forwarded-Proto": "http", "X-Forwarded-Ssl": "off", "X-Forwarded-Protocol": "plain"}
    r = requests.get(f"{proxy.url}/v2/", headers=spoofed, verify=verify, timeout=TIMEOUT)
    assert r.status_code == 401, r.text
    assert _realm(r) == expected

    # The realm works: a token from it, used through the proxy.
    service = re.search(r'service="([^"]+)"', r.headers["WWW-Authenticate"]).group(1)
    r = requests.get(
        expected,
        params={"service": service, "scope": "repository:team/app:pull,push"},
        auth=berth.rw.tuple,
        verify=verify,
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    r = requests.get(
        f"{proxy.url}/v2/", headers={"Authorization": f"Bearer {token}"}, verify=verify, timeout=TIMEOUT
    )
    assert r.status_code == 200, r.text

    # skopeo follows the realm (verifying the certificate) to push and pull.
    img = images.make_image(512 * 1024, n_layers=1)
    src = images.write_oci_layout(tmp_path / "src", img, "v1")
    ref = f"docker://{proxy.host}/team/token-{uuid.uuid4().hex[:8]}:v1"
    skopeo("copy", "--dest-cert-dir", proxy.cert_dir, "--dest-creds", berth.rw.colon, src, ref)
    raw = skopeo("inspect", "--cert-dir", proxy.cert_dir, "--creds", berth.ro.colon, "--raw", ref).stdout
    assert raw.encode() == img.manifest.data
    assert len(_nginx_lines(proxy, "GET", "/v2/token?")) >= 2
    assert re.search(r"GET /v2/token\?\S* HTTP/1\.1 200", berth.access_log_path.read_text())

    # Directly from a trusted peer (127.0.0.1 is in the default FORWARDED_ALLOW_IPS), Berth does
    # take X-Forwarded-Proto: the control for the untrusted case below.
    r = requests.get(f"{berth.url}/v2/", headers={"X-Forwarded-Proto": "https"}, timeout=TIMEOUT)
    assert _realm(r) == f"https://{berth.host}/v2/token"
    r = requests.get(f"{berth.url}/v2/", timeout=TIMEOUT)
    assert _realm(r) == f"http://{berth.host}/v2/token"


def test_forwarded_proto_from_untrusted_peer_is_ignored(
    make_registry, registry_class, tmp_path_factory, request, token_keys
):
    _require_berth(registry_class)
    signing, _ = token_keys
    # Only 192.0.2.10 (a documentation address) may set forwarded headers: not 127.0.0.1.
    proxy, berth = _behind_nginx(
        make_registry,
        tmp_path_factory,
        request,
        REGISTRY_TOKEN_PRIVATE_KEY=b64(signing),
        FORWARDED_ALLOW_IPS="192.0.2.10",
    )
    for header, value in (
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Ssl", "on"),
        ("X-Forwarded-Protocol", "ssl"),
    ):
        r = requests.get(f"{berth.url}/v2/", headers={header: value}, timeout=TIMEOUT)
        assert r.status_code == 401
        assert _realm(r) == f"http://{berth.host}/v2/token", (header, r.headers["WWW-Authenticate"])
    # The same holds for nginx when it is not listed: its X-Forwarded-Proto is ignored too, and
    # the realm advertises plain http on the TLS port (why FORWARDED_ALLOW_IPS must name the
    # proxy; deploy/README-deploy.md).
    r = requests.get(f"{proxy.url}/v2/", verify=str(proxy.ca), timeout=TIMEOUT)
    assert _realm(r) == f"http://{proxy.host}/v2/token"
