"""Upstream redirects and token realms go only where the upstream's entry allows (issue #10,
item 6): its own origin, or `redirect_hosts` on public addresses (private ones only with
`allow_private_redirects`), checked on the address actually connected to. Real servers on
127.0.0.1: an upstream on one port must not reach another port of the same machine."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from tests.conftest import OCI_MANIFEST, sha256
from tests.upstream_fakes import HttpServer, Redirector, StaticRegistry, nothing_stored, pull_through_app
from upstream.config import UpstreamConfigError, UpstreamRegistry, _host_pattern, parse_registries
from upstream.origins import OriginPolicy, TargetRefused, is_public, new_pools

REPO = "team/app"
LAYER = b"layer bytes " * 1000
CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2}
MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG, "layers": []}
).encode()


@pytest.fixture
def internal():
    """A service on another port of 127.0.0.1 that would happily answer as a registry."""
    server = StaticRegistry()
    server.add_blob(REPO, LAYER)
    server.add_manifest(REPO, "v1", MANIFEST, OCI_MANIFEST)
    yield server
    server.stop()


def _host(server: HttpServer) -> str:
    return server.url.removeprefix("http://")


def test_redirect_to_another_local_port_is_refused(tmp_path, internal, caplog):
    upstream = Redirector(internal.url)
    blob = internal.add_blob(REPO, LAYER)
    try:
        api, _, driver = pull_through_app(tmp_path, [{"registry": upstream.url}])
        with caplog.at_level(logging.WARNING, logger="berth.upstream"):
            for method, path in [
                ("GET", f"/v2/{REPO}/blobs/{blob}"),
                ("HEAD", f"/v2/{REPO}/blobs/{blob}"),
                ("GET", f"/v2/{REPO}/manifests/v1"),
                ("HEAD", f"/v2/{REPO}/manifests/v1"),
            ]:
                r = api.request(method, path)
                assert r.status_code == 503, (method, path, r.status_code)
        assert internal.requests == []  # never reached, not even for a HEAD
        assert nothing_stored(driver, REPO, blob)
        assert api.request("GET", f"/v2/{REPO}/tags/list").status_code == 404  # no tag copied
        # Logged with the target's origin, never its path or query (a presigned URL's
        # signature is a credential).
        assert f"redirect to http://{_host(internal)} refused" in caplog.text
        assert "redirect_hosts" in caplog.text
        assert "s3cr3t-sig" not in caplog.text
    finally:
        upstream.stop()


def test_redirect_to_own_origin_is_followed(tmp_path):
    upstream = StaticRegistry()
    blob = upstream.add_blob(REPO, LAYER)
    upstream.redirect_blobs_to = upstream.url  # /storage/<digest> on the same origin
    try:
        api, _, _ = pull_through_app(tmp_path, [{"registry": upstream.url}])
        r = api.request("GET", f"/v2/{REPO}/blobs/{blob}")
        assert (r.status_code, r.content) == (200, LAYER)
        assert [p for m, p, _ in upstream.requests if m == "GET"][-1] == f"/storage/{blob}"
    finally:
        upstream.stop()


def test_allowed_host_is_followed_only_with_private_allowed(tmp_path, internal):
    upstream = Redirector(internal.url)
    blob = internal.add_blob(REPO, LAYER)
    try:
        # Listed, but on loopback without allow_private_redirects: refused when connecting.
        entry = {"registry": upstream.url, "redirect_hosts": [_host(internal)]}
        api, _, driver = pull_through_app(tmp_path / "a", [entry])
        assert api.request("GET", f"/v2/{REPO}/blobs/{blob}").status_code == 503
        assert api.request("GET", f"/v2/{REPO}/manifests/v1").status_code == 503
        assert internal.requests == []
        assert nothing_stored(driver, REPO, blob)

        # Listed with another port: the port is part of what is allowed.
        entry = {"registry": upstream.url, "redirect_hosts": ["127.0.0.1:1"], "allow_private_redirects": True}
        api, _, _ = pull_through_app(tmp_path / "b", [entry])
        assert api.request("GET", f"/v2/{REPO}/blobs/{blob}").status_code == 503
        assert internal.requests == []

        entry = {
            "registry": upstream.url,
            "redirect_hosts": [_host(internal)],
            "allow_private_redirects": True,
        }
        api, _, _ = pull_through_app(tmp_path / "c", [entry])
        r = api.request("GET", f"/v2/{REPO}/blobs/{blob}")
        assert (r.status_code, r.content) == (200, LAYER)
        r = api.request("GET", f"/v2/{REPO}/manifests/v1")
        assert (r.status_code, r.content) == (200, MANIFEST)
    finally:
        upstream.stop()


def test_a_public_looking_name_that_connects_to_loopback_is_refused(tmp_path, internal, monkeypatch):
    """DNS rebinding: what counts is the address connected to, not what the name suggests."""
    port = internal.server.server_address[1]
    upstream = Redirector(f"http://cdn.example.com:{port}")
    blob = internal.add_blob(REPO, LAYER)
    real = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):
        return real("127.0.0.1" if host == "cdn.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    try:
        entry = {"registry": upstream.url, "redirect_hosts": [f"*.example.com:{port}"]}
        api, _, driver = pull_through_app(tmp_path, [entry])
        assert api.request("GET", f"/v2/{REPO}/blobs/{blob}").status_code == 503
        assert internal.requests == []
        assert nothing_stored(driver, REPO, blob)
    finally:
        upstream.stop()


def test_token_realm_on_another_local_port_is_refused(tmp_path):
    realm = HttpServer(lambda *a: (200, {"Content-Type": "application/json"}, b'{"token": "t0k"}'))

    def handle(method, path, query, headers, body):
        if headers.get("authorization") != "Bearer t0k":
            challenge = f'Bearer realm="{realm.url}/token",service="s"'
            return 401, {"WWW-Authenticate": challenge}, b""
        return 200, {"Content-Type": OCI_MANIFEST}, MANIFEST

    upstream = HttpServer(handle)
    try:
        api, _, _ = pull_through_app(tmp_path / "a", [{"registry": upstream.url}])
        assert api.request("GET", f"/v2/{REPO}/manifests/v1").status_code == 503
        assert realm.requests == []

        entry = {"registry": upstream.url, "redirect_hosts": [_host(realm)], "allow_private_redirects": True}
        api, _, _ = pull_through_app(tmp_path / "b", [entry])
        r = api.request("GET", f"/v2/{REPO}/manifests/v1")
        assert (r.status_code, r.content) == (200, MANIFEST)
        assert len(realm.requests) == 1
    finally:
        upstream.stop()
        realm.stop()


# -- the rules, one by one -------------------------------------------------------------------


def _policy(url: str, **entry) -> OriginPolicy:
    (registry,) = parse_registries(json.dumps([{"registry": url, **entry}]), {})
    return OriginPolicy(registry, new_pools())


def test_origin_policy_rules():
    pools = new_pools()
    policy = _policy("https://registry.example.com", redirect_hosts=["*.r2.example.net", "cdn.example.com"])
    home = "https://registry.example.com/v2/a/blobs/x"
    assert policy.redirect_pool(home, "https://registry.example.com/other") is not pools.public_only
    for allowed in ("https://b.acct.r2.example.net/k?sig=1", "https://cdn.example.com/k"):
        assert isinstance(policy.redirect_pool(home, allowed).pool_classes_by_scheme, dict)
    refused = [
        "http://registry.example.com/x",  # a downgrade, even to the same host
        "http://cdn.example.com/k",  # a downgrade
        "https://registry.example.com:8443/x",  # another port is another origin
        "https://cdn.example.com:8443/k",  # listed without a port: the default port only
        "https://r2.example.net/k",  # the wildcard covers names below it, not itself
        "https://evil.com/k",
        "https://169.254.169.254/latest/meta-data/",
        "ftp://cdn.example.com/k",
    ]
    for url in refused:
        with pytest.raises(TargetRefused):
            policy.redirect_pool(home, url)
    # An http upstream may go to https on an allowed host.
    plain = _policy("http://127.0.0.1:5000", redirect_hosts=["cdn.example.com"])
    plain.redirect_pool("http://127.0.0.1:5000/v2/", "https://cdn.example.com/k")
    with pytest.raises(TargetRefused):
        plain.redirect_pool("http://127.0.0.1:5000/v2/", "http://127.0.0.1:5001/v2/")


def test_public_and_private_addresses():
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert is_public(address), address
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1%eth0",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ):
        assert not is_public(address), address


def test_registries_json_redirect_keys():
    (hub,) = parse_registries('[{"registry": "https://index.docker.io"}]', {})
    assert {str(p) for p in hub.redirect_hosts} >= {"*.docker.com"}  # Docker Hub's CDNs by default
    (other,) = parse_registries('[{"registry": "https://ghcr.io"}]', {})
    assert (other.redirect_hosts, other.allow_private_redirects) == ((), False)
    (hub_own,) = parse_registries('[{"registry": "https://docker.io", "redirect_hosts": []}]', {})
    assert hub_own.redirect_hosts == ()  # an explicit list replaces the default
    (entry,) = parse_registries(
        json.dumps(
            [
                {
                    "registry": "https://r.example.com",
                    "redirect_hosts": ["*.R2.cloudflarestorage.com", "10.0.0.5:9000", "[fd00::5]:9000"],
                    "allow_private_redirects": True,
                }
            ]
        ),
        {},
    )
    assert [str(p) for p in entry.redirect_hosts] == [
        "*.r2.cloudflarestorage.com",
        "10.0.0.5:9000",
        "[fd00::5]:9000",
    ]
    assert entry.allow_private_redirects is True
    assert isinstance(entry, UpstreamRegistry)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"cdn.example.com"', "must be a list"),
        ('["https://cdn.example.com"]', "no scheme or path"),
        ('["cdn.example.com/path"]', "no scheme or path"),
        ('["*"]', "no scheme or path"),
        ('["*.com"]', "no scheme or path"),
        ('["a.*.example.com"]', "no scheme or path"),
        ('["cdn.example.com:99999"]', "no scheme or path"),
        ('[""]', "no scheme or path"),
        ("[5]", "no scheme or path"),
    ],
)
def test_bad_redirect_hosts_are_a_clear_error(value, message):
    with pytest.raises(UpstreamConfigError, match=message):
        parse_registries(f'[{{"registry": "https://x.io", "redirect_hosts": {value}}}]', {})


def test_bad_allow_private_redirects_is_a_clear_error():
    with pytest.raises(UpstreamConfigError, match="true or false"):
        parse_registries('[{"registry": "https://x.io", "allow_private_redirects": "yes"}]', {})
    with pytest.raises(UpstreamConfigError, match="unknown keys"):
        parse_registries('[{"registry": "https://x.io", "redirect_host": []}]', {})
    assert str(_host_pattern("CDN.example.com", "w")) == "cdn.example.com"
