"""JWT auth and Docker's token flow with real clients against a real gunicorn: a JWT as the
docker login password (serverless-registry style), a pull-only token refused a push, the Bearer
token flow (REGISTRY_TOKEN_PRIVATE_KEY) with docker, skopeo and podman, and per-repository
scopes (push allowed to team/*, refused to other/app)."""

from __future__ import annotations

import base64
import json
import re
import uuid

import pytest
import requests

from tests.jwt_keys import b64, keypair, mint

from . import images
from .process import CommandError, Creds
from .servers import BerthServer

pytestmark = pytest.mark.e2e

DENIED = re.compile(r"denied: requested access to the resource is denied", re.I)


@pytest.fixture(scope="module")
def keys():
    """(private, public) of the key JWTs are minted with, and the token endpoint's signing key."""
    return keypair("EC"), keypair("EC")


@pytest.fixture
def berth(registry_class, make_registry):
    if registry_class is not BerthServer:
        pytest.skip("JWT and token-flow settings are Berth's")

    def start(**env: str) -> BerthServer:
        return make_registry(workers=2, access_log=True, extra_env=env)

    return start


@pytest.fixture
def jwt_registry(berth, keys):
    """Basic challenges; JWTs accepted as the Basic password or as Bearer."""
    (_, public), _ = keys
    return berth(JWT_REGISTRY_TOKENS_PUBLIC_KEY=b64(public), REGISTRY_AUTH_AUDIENCE="berth-e2e")


@pytest.fixture
def token_registry(berth, keys):
    """The token flow: Bearer challenges and /v2/token, plus JWTs minted elsewhere."""
    (_, public), (signing, _) = keys
    return berth(
        JWT_REGISTRY_TOKENS_PUBLIC_KEY=b64(public),
        REGISTRY_TOKEN_PRIVATE_KEY=b64(signing),
        REGISTRY_AUTH_AUDIENCE="berth-e2e",
    )


def _token(keys, **claims) -> str:
    (private, _), _ = keys
    return mint(private, ttl=600, aud="berth-e2e", **claims)


@pytest.fixture
def image(docker_daemon, skopeo, tmp_path):
    """A 2-layer image loaded into dockerd under a local name; removed at teardown."""
    img = images.make_image(512 * 1024, n_layers=2)
    src = images.write_oci_layout(tmp_path / "oci", img, "v1")
    local = f"e2e-local/token-{uuid.uuid4().hex[:8]}:v1"
    archive = tmp_path / "image.tar"
    skopeo("copy", src, f"docker-archive:{archive}:{local}")
    docker_daemon.docker("load", "-i", archive)
    yield img, local, src
    docker_daemon.docker("rmi", "-f", img.config_digest, check=False)


def _login(docker_daemon, registry, creds: Creds) -> str:
    out = docker_daemon.login(registry.host, creds).stdout
    assert "Login Succeeded" in out, out
    return out


def _push_and_pull(docker_daemon, registry, local: str, img, repo: str) -> None:
    target = f"{registry.host}/{repo}:v1"
    docker_daemon.docker("tag", local, target)
    out = docker_daemon.docker("push", target, timeout=120).stdout
    assert re.search(r"digest: sha256:[0-9a-f]{64}", out), out
    docker_daemon.docker("rmi", target)
    docker_daemon.docker("rmi", "-f", img.config_digest, check=False)
    docker_daemon.docker("pull", target, timeout=120)
    inspected = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", target).stdout.strip()
    assert inspected == img.config_digest


def _assert_no_secrets(registry, *secrets: str) -> None:
    logs = registry.logs() + (registry.access_log_path.read_text() if registry.access_log_path else "")
    for secret in secrets:
        assert secret not in logs


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _tags(registry, repo: str) -> list[str]:
    r = requests.get(f"{registry.url}/v2/{repo}/tags/list", auth=registry.rw.tuple, timeout=30)
    return r.json().get("tags") or [] if r.status_code == 200 else []


def test_docker_login_with_jwt_password_push_pull(jwt_registry, docker_daemon, image, keys):
    img, local, _ = image
    token = _token(keys, capabilities=["pull", "push"], account_id="acct-1")
    try:
        _login(docker_daemon, jwt_registry, Creds("v0", token))
        repo = f"jwt/{uuid.uuid4().hex[:8]}"
        _push_and_pull(docker_daemon, jwt_registry, local, img, repo)
        assert _tags(jwt_registry, repo) == ["v1"]
    finally:
        docker_daemon.docker("logout", jwt_registry.host, check=False)
    _assert_no_secrets(jwt_registry, token)


def test_pull_only_token_refused_push_by_docker(jwt_registry, docker_daemon, image, keys):
    _img, local, _ = image
    token = _token(keys, capabilities=["pull"])
    repo = f"jwt/{uuid.uuid4().hex[:8]}"
    target = f"{jwt_registry.host}/{repo}:v1"
    docker_daemon.docker("tag", local, target)
    try:
        _login(docker_daemon, jwt_registry, Creds("v0", token))
        with pytest.raises(CommandError) as exc:
            docker_daemon.docker("push", target, timeout=90)
        text = exc.value.proc.stdout + exc.value.proc.stderr
        assert DENIED.search(text), text
        assert _tags(jwt_registry, repo) == []
    finally:
        docker_daemon.docker("logout", jwt_registry.host, check=False)


def test_token_flow_docker_login_push_pull(token_registry, docker_daemon, image):
    img, local, _ = image
    r = requests.get(f"{token_registry.url}/v2/", timeout=30)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith(f'Bearer realm="{token_registry.url}/v2/token"')
    try:
        _login(docker_daemon, token_registry, token_registry.rw)
        repo = f"team/{uuid.uuid4().hex[:8]}"
        _push_and_pull(docker_daemon, token_registry, local, img, repo)
    finally:
        docker_daemon.docker("logout", token_registry.host, check=False)
    access = token_registry.access_log_path.read_text()
    assert re.search(r"GET /v2/token\?\S* HTTP/1.1 200", access), access[-2000:]
    assert re.search(rf"PUT /v2/{repo}/manifests/v1 HTTP/1.1 201", access)
    _assert_no_secrets(token_registry, token_registry.rw.password)


def test_token_flow_skopeo_and_podman(token_registry, skopeo, podman, tmp_path):
    img = images.make_image(256 * 1024, n_layers=1)
    src = images.write_oci_layout(tmp_path / "src", img, "v1")
    repo = f"team/{uuid.uuid4().hex[:8]}"
    ref = f"docker://{token_registry.host}/{repo}:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", token_registry.rw.colon, src, ref)
    ro = ["--tls-verify=false", "--creds", token_registry.ro.colon]
    assert skopeo("inspect", *ro, "--raw", ref).stdout.encode() == img.manifest.data
    # The read-only user's token holds pull only: its push is refused.
    with pytest.raises(CommandError) as exc:
        skopeo("copy", "--retry-times", "0", "--dest-tls-verify=false", "--dest-creds",
               token_registry.ro.colon, src, f"docker://{token_registry.host}/{repo}-ro:v1", timeout=60)  # fmt: skip
    assert re.search(r"denied|unauthorized|403", exc.value.proc.stderr, re.I), exc.value.proc.stderr

    out = podman(
        "login", "--tls-verify=false", "-u", token_registry.ro.username, "--password-stdin",
        token_registry.host, input=token_registry.ro.password + "\n",
    ).stdout  # fmt: skip
    assert "Login Succeeded" in out
    podman("pull", "--tls-verify=false", f"{token_registry.host}/{repo}:v1", timeout=120)
    local = podman("images", "--format", "{{.ID}}", "--no-trunc").stdout.split()
    assert img.config_digest in local
    podman("logout", token_registry.host)
    access = token_registry.access_log_path.read_text()
    assert access.count("GET /v2/token") >= 2, access[-2000:]


@pytest.mark.parametrize("flow", ["basic", "token"])
def test_repository_scopes_docker(flow, jwt_registry_factory, docker_daemon, image, keys):
    """A JWT granting pull,push on team/* only: docker pushes to team/app, and is refused
    other/app, with the JWT as the Basic password (flow "basic") or exchanged at /v2/token."""
    registry = jwt_registry_factory(flow)
    img, local, _ = image
    token = _token(
        keys, sub="ci-bot", access=[{"type": "repository", "name": "team/*", "actions": ["pull", "push"]}]
    )
    suffix = uuid.uuid4().hex[:8]
    try:
        _login(docker_daemon, registry, Creds("ci-bot", token))
        _push_and_pull(docker_daemon, registry, local, img, f"team/app-{suffix}")
        refused = f"{registry.host}/other/app-{suffix}:v1"
        docker_daemon.docker("tag", f"{registry.host}/team/app-{suffix}:v1", refused)
        with pytest.raises(CommandError) as exc:
            docker_daemon.docker("push", refused, timeout=90)
        text = exc.value.proc.stdout + exc.value.proc.stderr
        assert DENIED.search(text), text
        assert _tags(registry, f"other/app-{suffix}") == []
        assert _tags(registry, f"team/app-{suffix}") == ["v1"]
    finally:
        docker_daemon.docker("logout", registry.host, check=False)
    _assert_no_secrets(registry, token)
    used_token_endpoint = "GET /v2/token" in registry.access_log_path.read_text()
    assert used_token_endpoint == (flow == "token")


@pytest.fixture
def jwt_registry_factory(request, berth, keys):
    def make(flow: str) -> BerthServer:
        (_, public), (signing, _) = keys
        env = {"JWT_REGISTRY_TOKENS_PUBLIC_KEY": b64(public), "REGISTRY_AUTH_AUDIENCE": "berth-e2e"}
        if flow == "token":
            env["REGISTRY_TOKEN_PRIVATE_KEY"] = b64(signing)
        return berth(**env)

    return make


def test_token_endpoint_over_http(token_registry):
    """The endpoint's JSON, as a real gunicorn serves it (and the realm it advertises)."""
    r = requests.get(
        f"{token_registry.url}/v2/token",
        params={"service": "berth-e2e", "scope": "repository:team/x:pull,push"},
        auth=token_registry.ro.tuple,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == {"token", "access_token", "expires_in", "issued_at"}
    payload = json.loads(_b64url(doc["token"].split(".")[1]))
    assert payload["access"] == [{"type": "repository", "name": "team/x", "actions": ["pull"]}]
    assert requests.get(f"{token_registry.url}/v2/token", timeout=30).status_code == 401


def test_token_flow_with_anonymous_pull_docker(berth, keys, docker_daemon, image):
    """With anonymous pull on, docker still learns the realm from the version check, so a logged
    in user pushes (plain Basic would let docker skip its credentials) and anyone pulls."""
    _, (signing, _) = keys
    registry = berth(REGISTRY_TOKEN_PRIVATE_KEY=b64(signing), ANONYMOUS_PULL="true")
    img, local, _ = image
    repo = f"team/anon-{uuid.uuid4().hex[:8]}"
    try:
        _login(docker_daemon, registry, registry.rw)
        target = f"{registry.host}/{repo}:v1"
        docker_daemon.docker("tag", local, target)
        docker_daemon.docker("push", target, timeout=120)
    finally:
        docker_daemon.docker("logout", registry.host, check=False)
    docker_daemon.docker("rmi", "-f", img.config_digest, check=False)
    docker_daemon.docker("pull", f"{registry.host}/{repo}:v1", timeout=120)
    assert _tags(registry, repo) == ["v1"]
