"""Upstream configuration (REGISTRIES_JSON), challenge parsing, token negotiation against a
real token realm on 127.0.0.1, and token caching."""

from __future__ import annotations

import json

import pytest

from settings import Settings, SettingsError
from tests.upstream_fakes import StaticRegistry, TokenGate
from upstream.client import UpstreamClient, UpstreamUnavailable, new_pools
from upstream.config import UpstreamConfigError, UpstreamSettings, parse_registries
from upstream.routing import Routes
from upstream.tokens import Challenge, TokenCache, parse_challenges

USERS = {"puller": "pull-s3cret"}
SETTINGS = UpstreamSettings(connect_timeout=2, read_timeout=5)

# -- configuration ---------------------------------------------------------------------------


def test_registries_json_parsed_in_order_with_credentials_from_env():
    raw = json.dumps(
        [
            {"registry": "https://ghcr.io/acme/", "username": "bot", "password_env": "GHCR_TOKEN"},
            {"registry": "https://index.docker.io"},
            {"registry": "http://127.0.0.1:5001/v2/"},
        ]
    )
    ghcr, hub, local = parse_registries(raw, {"GHCR_TOKEN": "t0ken"})
    assert (ghcr.base_url, ghcr.path_prefix, ghcr.username, ghcr.password) == (
        "https://ghcr.io",
        "acme",
        "bot",
        "t0ken",
    )
    assert ghcr.remote_name("tools/cli") == "acme/tools/cli"
    assert "t0ken" not in repr(ghcr)
    assert hub.base_url == "https://registry-1.docker.io"
    assert hub.remote_name("alpine") == "library/alpine"
    assert hub.remote_name("grafana/grafana") == "grafana/grafana"
    assert (local.base_url, local.path_prefix, local.username) == ("http://127.0.0.1:5001", "", None)
    assert local.remote_name("alpine") == "alpine"


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        ("{not json", {}, "not valid JSON"),
        ('{"registry": "https://x.io"}', {}, "JSON list"),
        ('["https://x.io"]', {}, "must be an object"),
        ('[{"url": "https://x.io"}]', {}, "unknown keys"),
        ('[{"registry": "ftp://x.io"}]', {}, "http(s) URL"),
        ('[{"registry": "x.io"}]', {}, "http(s) URL"),
        ('[{"registry": "https://"}]', {}, "http(s) URL"),
        ('[{"registry": "https://u:p@x.io"}]', {}, "credentials"),
        ('[{"registry": "https://x.io:99999"}]', {}, "bad registry URL"),
        ('[{"registry": "https://x.io", "username": "u"}]', {}, "together"),
        ('[{"registry": "https://x.io", "username": "u", "password_env": "NOPE"}]', {}, "NOPE"),
        (
            '[{"registry": "https://x.io", "username": "u", "password_env": "E"}]',
            {"E": ""},
            "not set or empty",
        ),
    ],
)
def test_bad_registries_json_is_a_clear_error(raw, env, message):
    with pytest.raises(UpstreamConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_registries(raw, env)


def test_settings_report_upstream_errors_at_start():
    with pytest.raises(SettingsError, match="REGISTRIES_JSON"):
        Settings.from_env({"REGISTRIES_JSON": "[1]"})
    with pytest.raises(SettingsError, match="REGISTRY_UPSTREAM_READ_TIMEOUT"):
        Settings.from_env({"REGISTRY_UPSTREAM_READ_TIMEOUT": "soon"})
    with pytest.raises(SettingsError, match="REGISTRY_UPSTREAM_CONNECT_TIMEOUT"):
        Settings.from_env({"REGISTRY_UPSTREAM_CONNECT_TIMEOUT": "0"})
    settings = Settings.from_env(
        {
            "REGISTRIES_JSON": '[{"registry": "http://127.0.0.1:1"}]',
            "REGISTRY_UPSTREAM_CONNECT_TIMEOUT": "1.5",
            "REGISTRY_UPSTREAM_READ_TIMEOUT": "7",
        }
    )
    assert len(settings.upstream.registries) == 1
    assert (settings.upstream.connect_timeout, settings.upstream.read_timeout) == (1.5, 7.0)
    assert Settings.from_env({}).upstream.registries == ()


# -- challenges ------------------------------------------------------------------------------


def test_parse_challenges():
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/a:pull,push", Basic realm="x\\"y"'
    )
    bearer, basic = parse_challenges(header)
    assert bearer == Challenge(
        "bearer",
        {
            "realm": "https://auth.docker.io/token",
            "service": "registry.docker.io",
            "scope": "repository:library/a:pull,push",
        },
    )
    assert basic == Challenge("basic", {"realm": 'x"y'})
    assert parse_challenges("") == []


# -- negotiation -----------------------------------------------------------------------------


@pytest.fixture
def backend():
    server = StaticRegistry()
    server.add_manifest(
        "team/app", "v1", b'{"schemaVersion": 2}', "application/vnd.oci.image.manifest.v1+json"
    )
    yield server
    server.stop()


def _client(url: str, username: str | None = "puller", password: str | None = USERS["puller"], tokens=None):
    raw = json.dumps(
        [{"registry": url, "username": username, "password_env": "P"}] if username else [{"registry": url}]
    )
    (registry,) = parse_registries(raw, {"P": password or ""})
    return UpstreamClient(registry, new_pools(), SETTINGS, tokens or TokenCache())


def _get(client: UpstreamClient, name: str = "team/app", ref: str = "v1") -> int:
    response = client.request("GET", name, f"manifests/{ref}")
    response.read()
    response.release_conn()
    return response.status


@pytest.mark.parametrize("post_supported", [True, False])
def test_bearer_token_via_post_form_or_get_fallback(backend, post_supported):
    gate = TokenGate(backend.url, USERS, post_supported=post_supported)
    try:
        client = _client(gate.url)
        assert _get(client) == 200
        methods = [m for m, _ in gate.token_requests]
        assert methods == (["POST"] if post_supported else ["GET"])
        assert gate.token_requests[0][1] == "repository:team/app:pull"
        # Cached: more requests for the same scope ask the realm nothing more.
        for _ in range(5):
            assert _get(client) == 200
        assert len(gate.token_requests) == 1
        # Another repository is another scope.
        assert _get(client, "team/other") == 404
        assert len(gate.token_requests) == 2
        assert gate.token_requests[1][1] == "repository:team/other:pull"
    finally:
        gate.stop()


def test_expired_and_revoked_tokens_are_renegotiated(backend):
    now = [1000.0]
    tokens = TokenCache(margin=10, clock=lambda: now[0])
    gate = TokenGate(backend.url, USERS, expires_in=60)
    try:
        client = _client(gate.url, tokens=tokens)
        assert _get(client) == 200
        now[0] += 45  # within 60 - 10 seconds: still cached
        assert _get(client) == 200
        assert len(gate.token_requests) == 1
        now[0] += 10  # past expiry minus the margin: a new token
        assert _get(client) == 200
        assert len(gate.token_requests) == 2
        gate.tokens.clear()  # the realm forgot every token: a 401 leads to one renegotiation
        assert _get(client) == 200
        assert len(gate.token_requests) == 3
    finally:
        gate.stop()


def test_wrong_credentials_are_refused_not_retried_forever(backend):
    gate = TokenGate(backend.url, USERS)
    try:
        client = _client(gate.url, password="wrong")
        with pytest.raises(UpstreamUnavailable, match="token realm answered 401"):
            _get(client)
    finally:
        gate.stop()


def test_basic_challenge_and_anonymous_upstreams(backend):
    protected = StaticRegistry(users=USERS)
    protected.add_manifest("team/app", "v1", b"{}", "application/json")
    try:
        assert _get(_client(protected.url)) == 200
        with pytest.raises(UpstreamUnavailable, match="wants credentials"):
            _get(_client(protected.url, username=None))
        assert _get(_client(protected.url, password="wrong")) == 401
        # An upstream whose /v2/ answers 200 gets no Authorization at all.
        assert _get(_client(backend.url, username=None)) == 200
        assert all("authorization" not in h for _, _, h in backend.requests)
    finally:
        protected.stop()


def test_unreachable_upstream_raises_quickly():
    client = _client("http://127.0.0.1:9", username=None)  # discard port: nothing listens
    with pytest.raises(UpstreamUnavailable):
        _get(client)


# -- mirror settings (issue #13) ---------------------------------------------------------------


def test_prefixes_map_names_to_their_upstream():
    raw = json.dumps(
        [
            {"registry": "https://index.docker.io", "prefix": "dockerhub"},
            {"registry": "https://ghcr.io/acme", "prefix": "/mirror/ghcr/"},
            {"registry": "https://quay.io", "prefix": "mirror"},
            {"registry": "https://registry.internal"},
        ]
    )
    registries = parse_registries(raw, {})
    assert [r.namespace for r in registries] == ["dockerhub", "mirror/ghcr", "mirror", ""]
    routes = Routes([UpstreamClient(r, new_pools(), SETTINGS, TokenCache()) for r in registries])

    def where(name: str) -> list[tuple[str, str]]:
        return [
            (r.client.registry.host, r.client.registry.remote_name(r.name)) for r in routes.for_name(name)
        ]

    assert where("dockerhub/library/alpine") == [("registry-1.docker.io", "library/alpine")]
    assert where("dockerhub/alpine") == [("registry-1.docker.io", "library/alpine")]  # Hub's rule
    assert where("mirror/ghcr/tools/cli") == [("ghcr.io", "acme/tools/cli")]  # the longest prefix
    assert where("mirror/coreos/etcd") == [("quay.io", "coreos/etcd")]
    assert where("library/alpine") == [("registry.internal", "library/alpine")]
    assert where("dockerhubx/alpine") == [("registry.internal", "dockerhubx/alpine")]
    assert where("dockerhub") == [("registry.internal", "dockerhub")]  # the prefix is no repository
    only_prefixed = Routes([UpstreamClient(registries[0], new_pools(), SETTINGS, TokenCache())])
    assert only_prefixed.for_name("library/alpine") == []


@pytest.mark.parametrize("prefix", ["", "/", "Docker", "a//b", "-hub", "hub/", "hub/../x", 7, ["hub"]])
def test_bad_prefixes_are_a_clear_error(prefix):
    if prefix == "hub/":  # trailing and leading slashes are forgiven
        assert parse_registries(json.dumps([{"registry": "https://x.io", "prefix": prefix}]), {})
        return
    with pytest.raises(UpstreamConfigError, match="'prefix' must be the start of repository names"):
        parse_registries(json.dumps([{"registry": "https://x.io", "prefix": prefix}]), {})


def test_mirror_settings_from_the_environment():
    defaults = Settings.from_env({})
    assert (defaults.upstream.tag_ttl, defaults.upstream.max_concurrency) == (300.0, 32)
    assert defaults.upstream.token_dir is not None and defaults.upstream.token_dir.is_absolute()
    assert defaults.allow_sparse_index is False
    settings = Settings.from_env(
        {
            "REGISTRY_UPSTREAM_TAG_TTL": "0",
            "REGISTRY_UPSTREAM_MAX_CONCURRENCY": "4",
            "REGISTRY_UPSTREAM_TOKEN_DIR": "/run/berth/tokens",
            "REGISTRY_ALLOW_SPARSE_INDEX": "true",
        }
    )
    assert (settings.upstream.tag_ttl, settings.upstream.max_concurrency) == (0.0, 4)
    assert str(settings.upstream.token_dir) == "/run/berth/tokens"
    assert settings.allow_sparse_index is True
    for name, value in [
        ("REGISTRY_UPSTREAM_TAG_TTL", "-1"),
        ("REGISTRY_UPSTREAM_TAG_TTL", "5m"),
        ("REGISTRY_UPSTREAM_MAX_CONCURRENCY", "0"),
        ("REGISTRY_UPSTREAM_TOKEN_DIR", "relative/dir"),
        ("REGISTRY_ALLOW_SPARSE_INDEX", "sometimes"),
    ]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
