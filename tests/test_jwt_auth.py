"""JWTs as credentials (JWT_REGISTRY_TOKENS_PUBLIC_KEY): the settings that configure them, the
token matrix (capabilities and access lists against every route, as Basic password and as
Bearer), and every way a token can be bad: each a 401 with a challenge, never a 500."""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest

from app import create_app
from settings import Settings, SettingsError, TokenSettings
from tests.conftest import RO_PASS, RO_USER, RW_PASS, RW_USER, basic, build_api, make_settings, sha256
from tests.jwt_keys import b64, claims, forge, keypair, mint
from tests.test_auth_and_errors import assert_oci_error

PRIVATE, PUBLIC = keypair("EC")
OTHER_PRIVATE, _ = keypair("EC")
SIGNING, _ = keypair("EC")
UPLOAD = "00000000-0000-0000-0000-000000000000"
D = sha256(b"")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def as_password(token: str, username: str = "v0") -> dict[str, str]:
    return basic(username, token)


@pytest.fixture
def jwt_api(tmp_path):
    return build_api(tmp_path, tokens=TokenSettings(public_key=PUBLIC))


# ------------------------------------------------------------------------------ settings


def _env(**values: str) -> dict[str, str]:
    return {"USERNAME": "u", "PASSWORD": "p", **values}


@pytest.mark.parametrize("kind", ["EC", "RSA", "OKP"])
def test_settings_accept_public_keys(kind):
    _, public = keypair(kind)
    s = Settings.from_env(_env(JWT_REGISTRY_TOKENS_PUBLIC_KEY=b64(public)))
    assert s.tokens.public_key == public and s.tokens.verifies_jwts and not s.tokens.token_flow
    # Raw JSON and URL-safe unpadded base64 are taken too.
    assert (
        Settings.from_env(_env(JWT_REGISTRY_TOKENS_PUBLIC_KEY=json.dumps(public))).tokens.public_key == public
    )
    urlsafe = base64.urlsafe_b64encode(json.dumps(public).encode()).decode().rstrip("=")
    assert Settings.from_env(_env(JWT_REGISTRY_TOKENS_PUBLIC_KEY=urlsafe)).tokens.public_key == public


def test_settings_token_flow_defaults():
    s = Settings.from_env(_env(REGISTRY_TOKEN_PRIVATE_KEY=b64(PRIVATE), REGISTRY_AUTH_AUDIENCE="reg"))
    assert s.tokens.token_flow and s.tokens.service == "reg" and s.tokens.lifetime == 300
    assert PRIVATE["d"] not in repr(s)  # the private key is never printed
    assert Settings.from_env(_env()).tokens == TokenSettings()


def _b64text(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "env,message",
    [
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": "!!!not base64!!!"}, "not base64"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": _b64text("not json")}, "not JSON"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": _b64text("[1, 2]")}, "JSON object"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": b64({"kty": "oct", "k": "c2VjcmV0"})}, "symmetric"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": b64({"kty": "XYZ"})}, "key type"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": b64({"kty": "EC", "crv": "P-256", "x": "AA"})}, "'y'"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": b64({**PUBLIC, "x": "not base64url!"})}, "base64url"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": b64({**PUBLIC, "crv": "secp256k1"})}, "curve"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": b64(PRIVATE)}, "private key"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": b64({**PUBLIC, "alg": "HS256"})}, "ES256"),
        ({"JWT_REGISTRY_TOKENS_PUBLIC_KEY": b64({**PUBLIC, "use": "enc"})}, "signing key"),
        ({"REGISTRY_TOKEN_PRIVATE_KEY": b64(PUBLIC)}, "'d'"),
        ({"REGISTRY_TOKEN_REALM": "https://r.example/v2/token"}, "REGISTRY_TOKEN_PRIVATE_KEY"),
        ({"REGISTRY_TOKEN_PRIVATE_KEY": b64(PRIVATE), "REGISTRY_TOKEN_REALM": "r.example/token"}, "absolute"),
        ({"REGISTRY_TOKEN_PRIVATE_KEY": b64(PRIVATE), "REGISTRY_TOKEN_SERVICE": 'a"b'}, "quotes"),
        ({"REGISTRY_TOKEN_PRIVATE_KEY": b64(PRIVATE), "REGISTRY_TOKEN_LIFETIME": "10"}, "at least"),
        ({"REGISTRY_TOKEN_PRIVATE_KEY": b64(PRIVATE), "REGISTRY_TOKEN_LIFETIME": "999999"}, "at most"),
    ],
)
def test_bad_auth_settings_are_startup_errors(env, message):
    with pytest.raises(SettingsError, match=message) as exc:
        Settings.from_env(_env(**env))
    for secret in (PRIVATE["d"],):
        assert secret not in str(exc.value)


def test_unusable_keys_fail_create_app(tmp_path):
    off_curve = {**PUBLIC, "y": PUBLIC["x"]}  # well formed, but not a point on P-256
    _, other_public = keypair("EC")
    mismatched = {**PRIVATE, "x": other_public["x"], "y": other_public["y"]}
    for tokens in (TokenSettings(public_key=off_curve), TokenSettings(signing_key=mismatched)):
        with pytest.raises(SettingsError):
            create_app(make_settings(tmp_path / "data", tokens=tokens))


def test_jwt_alone_is_a_configured_registry(tmp_path):
    api = build_api(tmp_path, users=(), tokens=TokenSettings(public_key=PUBLIC))
    assert (
        api.request(
            "GET", "/v2/", auth=False, headers=bearer(mint(PRIVATE, capabilities=["pull"]))
        ).status_code
        == 200
    )


# ------------------------------------------------------------------------------ the matrix

# (method, path, action, repository) for every route; repository None is the catalog.
ROUTES = [
    ("GET", "/v2/_catalog", "catalog", None),
    ("GET", "/v2/{r}/tags/list", "pull", "r"),
    ("GET", "/v2/{r}/manifests/latest", "pull", "r"),
    ("HEAD", "/v2/{r}/manifests/latest", "pull", "r"),
    ("PUT", "/v2/{r}/manifests/latest", "push", "r"),
    ("DELETE", "/v2/{r}/manifests/latest", "push", "r"),
    ("GET", "/v2/{r}/blobs/" + D, "pull", "r"),
    ("HEAD", "/v2/{r}/blobs/" + D, "pull", "r"),
    ("DELETE", "/v2/{r}/blobs/" + D, "push", "r"),
    ("POST", "/v2/{r}/blobs/uploads/", "push", "r"),
    ("PATCH", "/v2/{r}/blobs/uploads/" + UPLOAD, "push", "r"),
    ("PUT", "/v2/{r}/blobs/uploads/" + UPLOAD, "push", "r"),
    ("GET", "/v2/{r}/blobs/uploads/" + UPLOAD, "pull", "r"),  # status: the method decides
    ("DELETE", "/v2/{r}/blobs/uploads/" + UPLOAD, "push", "r"),
    ("GET", "/v2/{r}/referrers/" + D, "pull", "r"),
]
REPOS = ["team/app", "other/app"]


def _access(*entries):
    return [{"type": t, "name": n, "actions": a} for t, n, a in entries]


# name -> (claims, which (action, repository) it allows; repository None is the catalog)
TOKENS = {
    "caps-pull": ({"capabilities": ["pull"]}, {("pull", r) for r in REPOS} | {("catalog", None)}),
    "caps-push": ({"capabilities": ["push"]}, {("push", r) for r in REPOS}),
    "caps-pull-push": (
        {"capabilities": ["pull", "push"]},
        {(a, r) for a in ("pull", "push") for r in REPOS} | {("catalog", None)},
    ),
    "caps-empty": ({"capabilities": []}, set()),
    "no-claims": ({}, set()),
    "caps-unknown": ({"capabilities": ["delete", "admin"]}, set()),
    "access-team-star": (
        {"access": _access(("repository", "team/*", ["pull", "push"]))},
        {("pull", "team/app"), ("push", "team/app")},
    ),
    "access-exact-pull": ({"access": _access(("repository", "team/app", ["pull"]))}, {("pull", "team/app")}),
    "access-star-pull": (
        {"access": _access(("repository", "*", ["pull"]))},
        {("pull", r) for r in REPOS} | {("catalog", None)},
    ),
    "access-all-actions": (
        {"access": _access(("repository", "other/*", ["*"]))},
        {("pull", "other/app"), ("push", "other/app")},
    ),
    "access-catalog": ({"access": _access(("registry", "catalog", ["*"]))}, {("catalog", None)}),
    "access-empty": ({"access": []}, set()),
    "caps-pull-and-access": (
        {"capabilities": ["pull"], "access": _access(("repository", "team/*", ["pull", "push"]))},
        {("pull", "team/app")},
    ),
    "caps-both-and-access-prefix": (
        {"capabilities": ["pull", "push"], "access": _access(("repository", "team/ap*", ["push"]))},
        {("push", "team/app")},
    ),
}
CASES = [
    pytest.param(token, method, path.replace("{r}", repo), (action, repo if repo_key else None), id=f"{token}-{method}-{path.replace('{r}', repo)}")
    for token in TOKENS
    for method, path, action, repo_key in ROUTES
    for repo in (REPOS if repo_key else ["-"])
]  # fmt: skip


@pytest.mark.parametrize("transport", ["bearer", "basic-password"])
@pytest.mark.parametrize("token_name,method,path,need", CASES)
def test_token_matrix(jwt_api, transport, token_name, method, path, need):
    token_claims, allowed = TOKENS[token_name]
    token = mint(PRIVATE, sub="matrix", **token_claims)
    headers = bearer(token) if transport == "bearer" else as_password(token)
    r = jwt_api.request(method, path, auth=False, headers=headers)
    if need in allowed:
        assert r.status_code not in (401, 403, 500), r.text
    else:
        assert_oci_error(r, 403, "DENIED")
    # Every token authenticates: the version check needs nothing more.
    assert jwt_api.request("GET", "/v2/", auth=False, headers=headers).status_code == 200


def test_scoped_tokens_push_and_pull_for_real(jwt_api):
    push_team = mint(PRIVATE, sub="ci", access=_access(("repository", "team/*", ["pull", "push"])))
    jwt_api.headers = bearer(push_team)
    digest, body = jwt_api.push_image("team/app", "v1")
    assert jwt_api.request("GET", "/v2/team/app/manifests/v1").content == body
    assert_oci_error(jwt_api.request("POST", "/v2/other/app/blobs/uploads/"), 403, "DENIED")
    pull_only = as_password(mint(PRIVATE, capabilities=["pull"]))
    assert jwt_api.request("GET", f"/v2/team/app/manifests/{digest}", headers=pull_only).content == body
    assert_oci_error(jwt_api.request("DELETE", f"/v2/team/app/manifests/{digest}", headers=pull_only), 403)


def test_mount_needs_pull_on_the_source(jwt_api):
    digest = jwt_api.push_blob("other/app", b"secret layer")
    token = mint(PRIVATE, sub="ci", access=_access(("repository", "team/*", ["pull", "push"])))
    r = jwt_api.request(
        "POST",
        f"/v2/team/app/blobs/uploads/?mount={digest}&from=other/app",
        auth=False,
        headers=bearer(token),
    )
    assert_oci_error(r, 403, "DENIED")
    # Without `from`, a scoped token gets a plain upload session, never a blob from elsewhere.
    r = jwt_api.request(
        "POST", f"/v2/team/app/blobs/uploads/?mount={digest}", auth=False, headers=bearer(token)
    )
    assert r.status_code == 202
    assert jwt_api.request("HEAD", f"/v2/team/app/blobs/{digest}").status_code == 404


def test_basic_users_still_work(jwt_api, repo):
    jwt_api.push_image(repo, "v1")
    assert jwt_api.request("GET", f"/v2/{repo}/tags/list", headers=basic(RO_USER, RO_PASS)).status_code == 200
    assert_oci_error(
        jwt_api.request("POST", f"/v2/{repo}/blobs/uploads/", headers=basic(RO_USER, RO_PASS)), 403
    )


# ------------------------------------------------------------------------------ bad tokens


def _bad_tokens() -> dict[str, str]:
    now = int(time.time())
    good = mint(PRIVATE, capabilities=["pull", "push"])
    public_pem_like = json.dumps(PUBLIC).encode()
    return {
        "expired": mint(PRIVATE, capabilities=["pull"], exp=now - 3600),
        "no-exp": mint(PRIVATE, ttl=None, capabilities=["pull"]),
        "not-yet-valid": mint(PRIVATE, capabilities=["pull"], nbf=now + 3600),
        "issued-in-future": mint(PRIVATE, capabilities=["pull"], iat=now + 3600),
        "exp-not-a-number": mint(PRIVATE, capabilities=["pull"], exp="tomorrow"),
        "wrong-key": mint(OTHER_PRIVATE, capabilities=["pull"]),
        "alg-none": forge({"alg": "none", "typ": "JWT"}, claims(capabilities=["pull"])),
        "alg-none-upper": forge({"alg": "NONE"}, claims(capabilities=["pull"])),
        "hs256-public-key-json": forge({"alg": "HS256"}, claims(capabilities=["pull"]), public_pem_like),
        "hs256-public-key-b64": forge({"alg": "HS256"}, claims(capabilities=["pull"]), b64(PUBLIC).encode()),
        "hs256-x-coordinate": forge({"alg": "HS256"}, claims(capabilities=["pull"]), PUBLIC["x"].encode()),
        "truncated": good[: len(good) - 10],
        "no-signature": good.rsplit(".", 1)[0] + ".",
        "two-parts": good.rsplit(".", 1)[0],
        "garbage": "abc.def.ghi",
        "not-base64": "!!!.???.***",
        "payload-not-json": good.split(".")[0]
        + "."
        + base64.urlsafe_b64encode(b"nope").decode().rstrip("=")
        + ".x",
        "huge": "a" * 20000 + ".b.c",
        "capabilities-not-a-list": mint(PRIVATE, capabilities="pull,push"),
        "access-not-a-list": mint(PRIVATE, access={"type": "repository"}),
        "access-entry-without-name": mint(PRIVATE, access=[{"type": "repository", "actions": ["pull"]}]),
        "non-ascii": "é.é.é",
    }


BAD = _bad_tokens()


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("transport", ["bearer", "basic-password"])
def test_bad_tokens_are_401_invalid_token(jwt_api, name, transport):
    token = BAD[name]
    headers = bearer(token) if transport == "bearer" else as_password(token)
    for method, path in (
        ("GET", "/v2/"),
        ("GET", "/v2/team/app/tags/list"),
        ("POST", "/v2/team/app/blobs/uploads/"),
    ):
        r = jwt_api.request(method, path, auth=False, headers=headers)
        assert_oci_error(r, 401, "UNAUTHORIZED")
        challenge = r.headers["WWW-Authenticate"]
        if transport == "bearer":
            assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
        else:
            assert challenge.startswith("Basic ")
        assert token not in r.text


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_tokens_in_token_flow_challenge_with_invalid_token(tmp_path, name):
    api = build_api(tmp_path, tokens=TokenSettings(public_key=PUBLIC, signing_key=SIGNING))
    r = api.request("GET", "/v2/team/app/tags/list", auth=False, headers=bearer(BAD[name]))
    assert_oci_error(r, 401, "UNAUTHORIZED")
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="http://falconframework.org/v2/token"')
    assert 'scope="repository:team/app:pull"' in challenge and 'error="invalid_token"' in challenge


@pytest.mark.parametrize(
    "audience,issuer,token_claims,ok",
    [
        ("reg", None, {"aud": "reg"}, True),
        ("reg", None, {"aud": ["x", "reg"]}, True),
        ("reg", None, {"aud": "other"}, False),
        ("reg", None, {}, False),  # aud required once configured
        (None, None, {"aud": "anything"}, True),  # serverless-registry does not check aud
        (None, "https://issuer", {"iss": "https://issuer"}, True),
        (None, "https://issuer", {"iss": "https://evil"}, False),
        (None, "https://issuer", {}, False),
        ("reg", "https://issuer", {"aud": "reg", "iss": "https://issuer"}, True),
    ],
)
def test_audience_and_issuer(tmp_path, audience, issuer, token_claims, ok):
    api = build_api(tmp_path, tokens=TokenSettings(public_key=PUBLIC, audience=audience, issuer=issuer))
    r = api.request(
        "GET", "/v2/", auth=False, headers=bearer(mint(PRIVATE, capabilities=["pull"], **token_claims))
    )
    assert r.status_code == (200 if ok else 401), r.text


def test_clock_skew_leeway(jwt_api):
    now = int(time.time())
    token = mint(PRIVATE, capabilities=["pull"], exp=now - 5, nbf=now + 5)
    assert jwt_api.request("GET", "/v2/", auth=False, headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("kind", ["RSA", "OKP"])
def test_rsa_and_ed25519_keys(tmp_path, kind):
    private, public = keypair(kind)
    api = build_api(tmp_path, tokens=TokenSettings(public_key=public))
    assert (
        api.request(
            "GET", "/v2/", auth=False, headers=bearer(mint(private, capabilities=["pull"]))
        ).status_code
        == 200
    )
    assert (
        api.request(
            "GET", "/v2/", auth=False, headers=bearer(mint(PRIVATE, capabilities=["pull"]))
        ).status_code
        == 401
    )


def test_bearer_without_jwt_settings_is_refused(api):
    r = api.request("GET", "/v2/", auth=False, headers=bearer(mint(PRIVATE, capabilities=["pull"])))
    assert_oci_error(r, 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic",
        "Basic !!!notbase64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(f"{RW_USER}:".encode()).decode(),
        "Basic " + base64.b64encode(b":").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Bearer",
        "Bearer ",
        "Bearer a.b",
        "Digest x",
        "\u00e9\u00e9",
    ],
)
def test_malformed_headers_are_401_never_500(jwt_api, authorization):
    r = jwt_api.request("GET", "/v2/team/app/tags/list", auth=False, headers={"Authorization": authorization})
    assert_oci_error(r, 401, "UNAUTHORIZED")
    assert "WWW-Authenticate" in r.headers


def test_nothing_secret_is_logged(jwt_api, caplog):
    caplog.set_level(logging.DEBUG)
    good = mint(PRIVATE, capabilities=["pull", "push"], sub="ci")
    secrets = [good, BAD["wrong-key"], RW_PASS, "wrong-password-123"]
    jwt_api.request("GET", "/v2/", auth=False, headers=bearer(good))
    jwt_api.request("GET", "/v2/", auth=False, headers=bearer(BAD["wrong-key"]))
    jwt_api.request("GET", "/v2/", auth=False, headers=basic(RW_USER, "wrong-password-123"))
    jwt_api.request("POST", "/v2/x/blobs/uploads/", auth=False, headers=as_password(good))
    jwt_api.push_image("team/app")
    for secret in secrets:
        assert secret not in caplog.text
