"""Authentication and authorization with real clients: the read-only user may pull but a push
is refused; wrong credentials are refused at login."""

from __future__ import annotations

import json
import re

import pytest

from . import images
from .process import CommandError, Creds

pytestmark = pytest.mark.e2e

AUTH_ERROR = re.compile(
    r"unauthori[sz]ed|denied|authentication required|invalid username/password|forbidden|\b401\b|\b403\b",
    re.I,
)
WRONG = Creds("e2e-writer", "not-the-password")
UNKNOWN = Creds("nobody-here", "whatever")


@pytest.fixture
def needs_readonly(registry):
    if not registry.supports_readonly_user:
        pytest.skip(
            f"{registry.kind} has no read-only users (htpasswd auth authenticates, it does not authorize)"
        )


def _assert_auth_failure(exc: CommandError):
    text = exc.proc.stdout + exc.proc.stderr
    assert AUTH_ERROR.search(text), f"expected an authorization error, got:\n{text}"


def test_readonly_user_can_pull_but_not_push_skopeo(registry, needs_readonly, skopeo, repo, tmp_path):
    img = images.make_image(256 * 1024, n_layers=1)
    src = images.write_oci_layout(tmp_path / "src", img, "v1")
    ref = f"docker://{registry.host}/{repo}:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", registry.rw.colon, src, ref)

    # Pull (and inspect, list tags) as the read-only user works.
    ro = ["--tls-verify=false", "--creds", registry.ro.colon]
    assert skopeo("inspect", *ro, "--raw", ref).stdout.encode() == img.manifest.data
    assert json.loads(skopeo("list-tags", *ro, f"docker://{registry.host}/{repo}").stdout)["Tags"] == ["v1"]
    skopeo(
        "copy", "--src-tls-verify=false", "--src-creds", registry.ro.colon, ref, f"oci:{tmp_path / 'out'}:v1"
    )
    assert images.read_oci_layout(tmp_path / "out", "v1")[1] == img.manifest.data

    # Push as the read-only user: new repo, new tag in an existing repo, and delete.
    other = images.make_image(256 * 1024, n_layers=1)
    other_src = images.write_oci_layout(tmp_path / "other", other, "v1")
    for dest in (f"docker://{registry.host}/{repo}-ro:v1", f"docker://{registry.host}/{repo}:ro"):
        with pytest.raises(CommandError) as exc:
            skopeo(
                "copy",
                "--retry-times",
                "0",
                "--dest-tls-verify=false",
                "--dest-creds",
                registry.ro.colon,
                other_src,
                dest,
                timeout=60,
            )
        _assert_auth_failure(exc.value)
    with pytest.raises(CommandError) as exc:
        skopeo("delete", *ro, ref, timeout=60)
    _assert_auth_failure(exc.value)

    # Nothing changed.
    s = registry.session()
    assert s.get(f"{registry.url}/v2/{repo}/tags/list", timeout=30).json()["tags"] == ["v1"]
    assert s.head(f"{registry.url}/v2/{repo}/blobs/{other.layers[0].digest}", timeout=30).status_code == 404
    r = s.get(f"{registry.url}/v2/{repo}/manifests/v1", headers={"Accept": images.OCI_MANIFEST}, timeout=30)
    assert r.status_code == 200 and r.content == img.manifest.data


def test_readonly_user_push_refused_docker(registry, needs_readonly, docker_daemon, skopeo, repo, tmp_path):
    img = images.make_image(256 * 1024, n_layers=1)
    src = images.write_oci_layout(tmp_path / "src", img, "v1")
    archive = tmp_path / "image.tar"
    target = f"{registry.host}/{repo}:v1"
    skopeo("copy", src, f"docker-archive:{archive}:{target}")
    docker_daemon.docker("load", "-i", archive)
    try:
        out = docker_daemon.login(registry.host, registry.ro).stdout
        assert "Login Succeeded" in out
        with pytest.raises(CommandError) as exc:
            docker_daemon.docker("push", target, timeout=90)
        _assert_auth_failure(exc.value)
        r = registry.session().get(f"{registry.url}/v2/{repo}/tags/list", timeout=30)
        assert r.status_code == 404 or r.json().get("tags") in (None, []), r.text
    finally:
        docker_daemon.docker("logout", registry.host, check=False)
        docker_daemon.docker("rmi", "-f", img.config_digest, check=False)


@pytest.mark.parametrize("creds", [WRONG, UNKNOWN], ids=["wrong-password", "unknown-user"])
def test_wrong_credentials_refused_at_login(registry, docker_daemon, podman, skopeo, creds):
    with pytest.raises(CommandError) as exc:
        docker_daemon.login(registry.host, creds)
    _assert_auth_failure(exc.value)
    cfg = docker_daemon.config_dir / "config.json"
    if cfg.exists():
        assert registry.host not in json.loads(cfg.read_text()).get("auths", {})

    with pytest.raises(CommandError) as exc:
        podman(
            "login",
            "--tls-verify=false",
            "-u",
            creds.username,
            "--password-stdin",
            registry.host,
            input=creds.password + "\n",
            timeout=60,
        )
    _assert_auth_failure(exc.value)
    assert registry.host not in json.loads(podman.auth_file.read_text()).get("auths", {})

    with pytest.raises(CommandError) as exc:
        skopeo(
            "list-tags",
            "--tls-verify=false",
            "--creds",
            creds.colon,
            f"docker://{registry.host}/e2e/anything",
            timeout=60,
        )
    _assert_auth_failure(exc.value)

    # The right credentials work.
    docker_daemon.docker(
        "login",
        "-u",
        registry.rw.username,
        "--password-stdin",
        registry.host,
        input=registry.rw.password + "\n",
    )
    docker_daemon.docker("logout", registry.host)
