"""Authentication, authorization on every route, and OCI error bodies everywhere."""

from __future__ import annotations

import base64

import pytest

from settings import Settings, SettingsError
from tests.conftest import RO_PASS, RO_USER, RW_PASS, RW_USER, basic, build_api, sha256

ROUTES = [
    ("GET", "/v2/"),
    ("GET", "/v2/_catalog"),
    ("GET", "/v2/r/tags/list"),
    ("GET", "/v2/r/manifests/latest"),
    ("HEAD", "/v2/r/manifests/latest"),
    ("PUT", "/v2/r/manifests/latest"),
    ("DELETE", "/v2/r/manifests/latest"),
    ("GET", f"/v2/r/blobs/{sha256(b'')}"),
    ("HEAD", f"/v2/r/blobs/{sha256(b'')}"),
    ("DELETE", f"/v2/r/blobs/{sha256(b'')}"),
    ("POST", "/v2/r/blobs/uploads/"),
    ("PATCH", "/v2/r/blobs/uploads/00000000-0000-0000-0000-000000000000"),
    ("PUT", "/v2/r/blobs/uploads/00000000-0000-0000-0000-000000000000"),
    ("GET", "/v2/r/blobs/uploads/00000000-0000-0000-0000-000000000000"),
    ("DELETE", "/v2/r/blobs/uploads/00000000-0000-0000-0000-000000000000"),
    ("GET", f"/v2/r/referrers/{sha256(b'')}"),
    ("GET", "/v2/no/such/route/here"),
    ("GET", "/"),
]
PUSH_ROUTES = [(m, p) for m, p in ROUTES if m in ("PUT", "POST", "PATCH", "DELETE")]


def assert_oci_error(r, status, code=None):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    if r.content:  # HEAD has no body
        errors = r.json["errors"]
        assert errors and all({"code", "message"} <= set(e) for e in errors)
        if code:
            assert errors[0]["code"] == code


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_needs_credentials(api, method, path):
    r = api.request(method, path, auth=False)
    assert_oci_error(r, 401, "UNAUTHORIZED")
    assert r.headers["WWW-Authenticate"] == 'Basic realm="Berth", charset="UTF-8"'


@pytest.mark.parametrize("method,path", ROUTES)
def test_no_credentials_configured_refuses_everything(tmp_path, method, path):
    api = build_api(tmp_path, users=())
    for headers in ({}, basic(RW_USER, RW_PASS)):
        r = api.request(method, path, auth=False, headers=headers)
        assert_oci_error(r, 401, "UNAUTHORIZED")


@pytest.mark.parametrize("method,path", PUSH_ROUTES)
def test_read_only_user_is_denied_writes(api, method, path):
    r = api.request(method, path, headers=basic(RO_USER, RO_PASS))
    assert_oci_error(r, 403, "DENIED")


def test_read_only_user_may_pull(api, repo):
    _digest, body = api.push_image(repo, "v1")
    ro = basic(RO_USER, RO_PASS)
    assert api.request("GET", f"/v2/{repo}/manifests/v1", headers=ro).content == body
    assert api.request("GET", "/v2/", headers=ro).status_code == 200
    assert api.request("GET", "/v2/_catalog", headers=ro).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic",
        "Basic !!!notbase64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(f"{RW_USER}:".encode()).decode(),
        "Basic " + base64.b64encode(f"{RW_USER}:wrong".encode()).decode(),
        "Basic " + base64.b64encode(f"{RW_USER}:{RO_PASS}".encode()).decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Bearer abc.def.ghi",
        "Digest whatever",
        "",
    ],
)
def test_bad_credentials_are_401_never_500(api, authorization):
    r = api.request("GET", "/v2/", auth=False, headers={"Authorization": authorization})
    assert_oci_error(r, 401, "UNAUTHORIZED")
    assert "WWW-Authenticate" in r.headers


def test_anonymous_pull(tmp_path, repo):
    api = build_api(tmp_path, anonymous_pull=True)
    _digest, body = api.push_image(repo, "v1")
    assert api.request("GET", "/v2/", auth=False).status_code == 200
    assert api.request("GET", f"/v2/{repo}/manifests/v1", auth=False).content == body
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/", auth=False)
    assert_oci_error(r, 401, "UNAUTHORIZED")  # asks for credentials rather than denying
    r = api.request("POST", f"/v2/{repo}/blobs/uploads/", headers=basic(RO_USER, RO_PASS))
    assert_oci_error(r, 403, "DENIED")


def test_mount_needs_pull_on_source(tmp_path):
    # With global grants every user who may push may pull; the check is still made.
    api = build_api(tmp_path)
    digest = api.push_blob("src/repo", b"data")
    r = api.request(
        "POST", f"/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo", headers=basic(RO_USER, RO_PASS)
    )
    assert_oci_error(r, 403, "DENIED")


@pytest.mark.parametrize(
    "method,path,status,code",
    [
        ("GET", "/v2/UPPER/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a..b/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/-a/blobs/" + sha256(b""), 400, "NAME_INVALID"),
        ("POST", "/v2/a_/blobs/uploads/", 400, "NAME_INVALID"),
        ("GET", "/v2/" + "a" * 256 + "/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/r/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
        ("GET", "/v2/r/blobs/sha999:" + "a" * 64, 400, "DIGEST_INVALID"),
        ("GET", "/v2/no/route", 404, "UNSUPPORTED"),
        ("POST", "/v2/r/tags/list", 405, "UNSUPPORTED"),
        ("PATCH", "/v2/r/manifests/latest", 405, "UNSUPPORTED"),
        ("PUT", "/v2/_catalog", 405, "UNSUPPORTED"),
        ("DELETE", "/v2/", 405, "UNSUPPORTED"),
    ],
)
def test_bad_requests_get_oci_errors(api, method, path, status, code):
    assert_oci_error(api.request(method, path), status, code)


def test_api_version_header_on_success(api):
    r = api.request("GET", "/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize(
    "env,message",
    [
        ({"REGISTRY_STORAGE": "ftp"}, "REGISTRY_STORAGE"),
        ({"REGISTRY_AUTH_REALM": 'my "realm"'}, "REGISTRY_AUTH_REALM"),
        ({"REGISTRY_STORAGE": "s3"}, "REGISTRY_S3_BUCKET"),
        ({"REGISTRY_STORAGE": "s3", "REGISTRY_S3_BUCKET": "b", "REGISTRY_S3_PART_SIZE": "1000"}, "at least"),
        (
            {"REGISTRY_STORAGE": "s3", "REGISTRY_S3_BUCKET": "b", "REGISTRY_S3_ENDPOINT_URL": "ftp://x"},
            "http",
        ),
        ({"USERNAME": "u"}, "PASSWORD"),
        ({"READONLY_PASSWORD": "p"}, "READONLY_USERNAME"),
        ({"USERNAME": "a:b", "PASSWORD": "p"}, "':'"),
        ({"ANONYMOUS_PULL": "maybe"}, "ANONYMOUS_PULL"),
        ({"REGISTRY_DELETE_ENABLED": "2"}, "REGISTRY_DELETE_ENABLED"),
        ({"REGISTRY_MANIFEST_MAX_BYTES": "100"}, "at least"),
        ({"USERNAME": "x", "PASSWORD": "p", "READONLY_USERNAME": "x", "READONLY_PASSWORD": "q"}, "differ"),
    ],
)
def test_invalid_settings_fail_at_start(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_settings_from_environment(tmp_path):
    s = Settings.from_env(
        {
            "REGISTRY_DATA_DIR": str(tmp_path),
            "USERNAME": "u",
            "PASSWORD": "s3cr3t-value",
            "ANONYMOUS_PULL": "true",
            "REGISTRY_DELETE_ENABLED": "false",
        }
    )
    assert s.data_dir == tmp_path
    assert s.anonymous_pull and not s.delete_enabled
    assert [(u.name, u.can_push) for u in s.users] == [("u", True)]
    assert "s3cr3t-value" not in repr(s)  # passwords never printed


def test_health_endpoints_need_no_credentials(tmp_path):
    api = build_api(tmp_path, users=())  # even a registry that refuses everything else
    r = api.request("GET", "/healthz", auth=False)
    assert r.status_code == 200 and r.json == {"status": "ok"}
    r = api.request("GET", "/readyz", auth=False)
    assert r.status_code == 200 and r.json["storage"] == "ok"
    assert api.request("GET", "/v2/", auth=False).status_code == 401


def test_readiness_reports_broken_storage(tmp_path):
    api = build_api(tmp_path)
    (tmp_path / "data").rename(tmp_path / "moved")
    (tmp_path / "data").write_text("a file where the data directory was")
    r = api.request("GET", "/readyz", auth=False)
    assert r.status_code == 503
    assert r.json["status"] == "unavailable"


def test_the_jose_library_loads_only_when_jwts_are_configured(tmp_path):
    """joserfc and cryptography cost ~9 MiB per worker: with Basic users only, they stay out."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.jwt_keys import b64, keypair

    probe = "import sys, app; app.app; print('joserfc' in sys.modules, 'cryptography' in sys.modules)"
    env = {**os.environ, "USERNAME": "u", "PASSWORD": "p", "REGISTRY_DATA_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parent.parent
    basic_only = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True
    )
    assert basic_only.stdout.split() == ["False", "False"], basic_only.stderr
    env["JWT_REGISTRY_TOKENS_PUBLIC_KEY"] = b64(keypair("EC")[1])
    with_jwt = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True
    )
    assert with_jwt.stdout.split()[0] == "True", with_jwt.stderr
