"""Docker's token flow (REGISTRY_TOKEN_PRIVATE_KEY): Bearer challenges with realm, service and
scope; the token endpoint granting only what the caller may have; tokens used on every route;
and upload sessions that stay in their repository and with their owner."""

from __future__ import annotations

import base64
import json
import re

import pytest
from joserfc import jwt
from joserfc.jwk import JWKRegistry

from settings import TokenSettings
from tests.conftest import RO_PASS, RO_USER, RW_PASS, RW_USER, basic, build_api
from tests.jwt_keys import keypair, mint
from tests.test_auth_and_errors import assert_oci_error

SIGNING, SIGNING_PUBLIC = keypair("EC")
EXTERNAL, EXTERNAL_PUBLIC = keypair("EC")
REALM = "http://falconframework.org/v2/token"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def flow_api(tmp_path, **tokens):
    values = {"signing_key": SIGNING, "public_key": EXTERNAL_PUBLIC, **tokens}
    anonymous = values.pop("anonymous_pull", False)
    return build_api(tmp_path, tokens=TokenSettings(**values), anonymous_pull=anonymous)


@pytest.fixture
def flow(tmp_path):
    return flow_api(tmp_path)


def get_token(api, *scopes: str, headers=None, service: str | None = "berth"):
    query = "&".join([f"service={service}"] * (service is not None) + [f"scope={s}" for s in scopes])
    return api.request("GET", f"/v2/token?{query}", auth=headers is None, headers=headers)


def claims_of(token: str) -> dict:
    return jwt.decode(token, JWKRegistry.import_key(SIGNING_PUBLIC), algorithms=["ES256"]).claims


# ------------------------------------------------------------------------------ challenges


@pytest.mark.parametrize(
    "method,path,scope",
    [
        ("GET", "/v2/", None),
        ("GET", "/v2/_catalog", "registry:catalog:*"),
        ("GET", "/v2/team/app/tags/list", "repository:team/app:pull"),
        ("HEAD", "/v2/team/app/manifests/v1", "repository:team/app:pull"),
        ("PUT", "/v2/team/app/manifests/v1", "repository:team/app:pull,push"),
        ("DELETE", "/v2/team/app/manifests/v1", "repository:team/app:pull,push"),
        ("POST", "/v2/team/app/blobs/uploads/", "repository:team/app:pull,push"),
        ("POST", "/v2/team/app/blobs/uploads/?mount=sha256:x&from=lib/src", "repository:team/app:pull,push repository:lib/src:pull"),
        ("GET", '/v2/a"b/tags/list', None),  # never copied into the header
    ],
)  # fmt: skip
def test_bearer_challenges(flow, method, path, scope):
    r = flow.request(method, path, auth=False)
    assert_oci_error(r, 401, "UNAUTHORIZED")
    expected = f'Bearer realm="{REALM}",service="berth"' + (f',scope="{scope}"' if scope else "")
    assert r.headers["WWW-Authenticate"] == expected


def test_realm_follows_the_request_not_forwarded_headers(flow):
    # X-Forwarded-* are gunicorn's to honour (forwarded_allow_ips): it sets the WSGI scheme.
    r = flow.request(
        "GET", "/v2/", auth=False, headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    )
    assert f'realm="{REALM}"' in r.headers["WWW-Authenticate"]
    r = flow.client.simulate_get("/v2/", protocol="https", headers={"Host": "registry.example.com:8443"})
    assert 'realm="https://registry.example.com:8443/v2/token"' in r.headers["WWW-Authenticate"]
    r = flow.client.simulate_get("/v2/", headers={"Host": 'evil"host'})
    assert re.match(r'Bearer realm="http://[a-z.]+:\d+/v2/token"', r.headers["WWW-Authenticate"])


def test_explicit_realm_and_service(tmp_path):
    api = flow_api(tmp_path, realm_url="https://auth.example/token", service="registry.example")
    r = api.request("GET", "/v2/", auth=False)
    assert (
        r.headers["WWW-Authenticate"]
        == 'Bearer realm="https://auth.example/token",service="registry.example"'
    )
    assert get_token(api, service="registry.example").status_code == 200
    assert_oci_error(get_token(api, service="berth"), 400, "UNSUPPORTED")


def test_basic_credentials_still_work_in_the_flow(flow, repo):
    _, body = flow.push_image(repo, "v1")
    assert flow.request("GET", f"/v2/{repo}/manifests/v1", headers=basic(RO_USER, RO_PASS)).content == body


# ------------------------------------------------------------------------------ the endpoint


def test_token_endpoint_grants_what_the_user_may(flow):
    r = get_token(flow, "repository:team/app:pull,push", "repository:lib/x:pull")
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    doc = r.json
    assert set(doc) == {"token", "access_token", "expires_in", "issued_at"}
    assert doc["token"] == doc["access_token"] and doc["expires_in"] == 300
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", doc["issued_at"])
    c = claims_of(doc["token"])
    assert c["sub"] == RW_USER and c["aud"] == "berth" and c["iss"] == "berth"
    assert c["exp"] - c["iat"] == 300
    assert c["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "lib/x", "actions": ["pull"]},
    ]

    ro = get_token(flow, "repository:team/app:pull,push", headers=basic(RO_USER, RO_PASS)).json
    assert claims_of(ro["token"])["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull"]}
    ]


def test_scopes_several_ways(flow):
    r = get_token(flow, "repository:a/b:pull%20repository:c:push", "registry:catalog:*", "repository:d:*")
    access = claims_of(r.json["token"])["access"]
    assert access == [
        {"type": "repository", "name": "a/b", "actions": ["pull"]},
        {"type": "repository", "name": "c", "actions": ["push"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
        {"type": "repository", "name": "d", "actions": ["pull", "push"]},
    ]
    # Wildcards cannot be asked for; unknown actions and types grant nothing.
    r = get_token(flow, "repository:team/*:pull", "repository:x:delete", "plugin:y:pull")
    assert claims_of(r.json["token"])["access"] == [{"type": "repository", "name": "x", "actions": []}]
    assert claims_of(get_token(flow).json["token"])["access"] == []


@pytest.mark.parametrize("scope", ["repository", "repository:name", "::", "repository::pull"])
def test_malformed_scope_is_400(flow, scope):
    assert_oci_error(get_token(flow, scope), 400, "UNSUPPORTED")


@pytest.mark.parametrize(
    "headers",
    [None, basic(RW_USER, "wrong"), basic(RW_USER, ""), {"Authorization": "Basic !!!"}, bearer("a.b.c")],
)
def test_token_endpoint_refuses_bad_credentials_with_basic_challenge(flow, headers):
    r = get_token(flow, "repository:team/app:pull", headers=headers or {})
    if headers is None:
        r = flow.request("GET", "/v2/token?service=berth", auth=False)
    assert_oci_error(r, 401, "UNAUTHORIZED")
    assert r.headers["WWW-Authenticate"].startswith("Basic realm=")


def test_token_endpoint_only_with_a_signing_key(tmp_path):
    api = build_api(tmp_path, tokens=TokenSettings(public_key=EXTERNAL_PUBLIC))
    assert_oci_error(api.request("GET", "/v2/token"), 404, "UNSUPPORTED")
    assert_oci_error(flow_api(tmp_path).request("POST", "/v2/token"), 405, "UNSUPPORTED")


def test_anonymous_pull_gets_pull_only_tokens(tmp_path, repo):
    api = flow_api(tmp_path, anonymous_pull=True)
    _, body = api.push_image(repo, "v1")
    # The version check challenges even anonymous clients, so they learn where tokens are...
    assert_oci_error(api.request("GET", "/v2/", auth=False), 401)
    r = get_token(api, f"repository:{repo}:pull,push", headers={})
    token = r.json["token"]
    assert claims_of(token)["access"] == [{"type": "repository", "name": repo, "actions": ["pull"]}]
    assert api.request("GET", f"/v2/{repo}/manifests/v1", auth=False, headers=bearer(token)).content == body
    # ... but plain anonymous pulls work as before.
    assert api.request("GET", f"/v2/{repo}/manifests/v1", auth=False).content == body
    assert_oci_error(
        api.request("POST", f"/v2/{repo}/blobs/uploads/", auth=False, headers=bearer(token)), 403
    )


# ------------------------------------------------------------------------------ using tokens


def test_issued_tokens_on_the_routes(flow):
    token = get_token(flow, "repository:team/app:pull,push").json["token"]
    flow.headers = bearer(token)
    digest, body = flow.push_image("team/app", "v1")
    assert flow.request("GET", "/v2/team/app/manifests/v1").content == body
    r = flow.request("POST", "/v2/other/app/blobs/uploads/")
    assert_oci_error(r, 403, "DENIED")
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{REALM}",service="berth",scope="repository:other/app:pull,push",error="insufficient_scope"'
    )
    assert_oci_error(flow.request("GET", "/v2/_catalog"), 403, "DENIED")
    catalog = get_token(flow, "registry:catalog:*", headers=basic(RW_USER, RW_PASS)).json["token"]
    assert flow.request("GET", "/v2/_catalog", headers=bearer(catalog)).json == {"repositories": ["team/app"]}

    pull = get_token(flow, "repository:team/app:pull", headers=basic(RO_USER, RO_PASS)).json["token"]
    assert flow.request("GET", f"/v2/team/app/manifests/{digest}", headers=bearer(pull)).content == body
    r = flow.request("DELETE", f"/v2/team/app/manifests/{digest}", headers=bearer(pull))
    assert_oci_error(r, 403, "DENIED")
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]


def test_expired_issued_token(tmp_path):
    api = flow_api(tmp_path)
    stale = mint(
        SIGNING, exp=1, sub=RW_USER, access=[{"type": "repository", "name": "a", "actions": ["pull"]}]
    )
    r = api.request("GET", "/v2/a/tags/list", auth=False, headers=bearer(stale))
    assert_oci_error(r, 401, "UNAUTHORIZED")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_jwt_password_exchanged_for_a_narrower_token(flow):
    """A JWT scoped to team/* used as the Basic password at the token endpoint (docker login
    with a token) gets nothing on other repositories."""
    external = mint(
        EXTERNAL, sub="ci", access=[{"type": "repository", "name": "team/*", "actions": ["pull", "push"]}]
    )
    r = get_token(
        flow, "repository:team/app:pull,push", "repository:other/app:pull,push", headers=basic("ci", external)
    )
    assert claims_of(r.json["token"])["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "other/app", "actions": []},
    ]
    assert claims_of(r.json["token"])["sub"] == "ci"


def test_tokens_from_another_key_or_audience_are_refused(tmp_path):
    api = flow_api(tmp_path, audience="reg")
    good = get_token(api, "repository:a:pull", service=None).json["token"]
    assert claims_of(good)["aud"] == "reg"
    assert api.request("GET", "/v2/a/tags/list", auth=False, headers=bearer(good)).status_code == 404
    stranger, _ = keypair("EC")
    forged = mint(stranger, aud="reg", access=[{"type": "repository", "name": "a", "actions": ["pull"]}])
    assert_oci_error(api.request("GET", "/v2/a/tags/list", auth=False, headers=bearer(forged)), 401)


# ------------------------------------------------------------------------------ uploads


def test_upload_sessions_stay_in_their_repository_and_with_their_owner(flow):
    token = mint(
        EXTERNAL, sub="ci", access=[{"type": "repository", "name": "team/*", "actions": ["pull", "push"]}]
    )
    r = flow.request("POST", "/v2/team/a/blobs/uploads/", auth=False, headers=bearer(token))
    assert r.status_code == 202
    location = r.headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    assert re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", upload_id)
    # The same id under another repository the token may write: unknown there.
    r = flow.request(
        "PATCH", f"/v2/team/b/blobs/uploads/{upload_id}", auth=False, headers=bearer(token), body=b"x"
    )
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    # Another identity with push on the repository: unknown to it too.
    other = mint(EXTERNAL, sub="someone-else", capabilities=["pull", "push"])
    r = flow.request("PATCH", location, auth=False, headers=bearer(other), body=b"x")
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    # The owner continues it, with the token it started with or a fresh one for the same `sub`.
    again = mint(EXTERNAL, sub="ci", capabilities=["pull", "push"])
    assert flow.request("PATCH", location, auth=False, headers=bearer(again), body=b"x").status_code == 202
    ids = {
        flow.request("POST", "/v2/team/a/blobs/uploads/", auth=False, headers=bearer(token)).headers[
            "Location"
        ]
        for _ in range(20)
    }
    assert len(ids) == 20


def test_identity_names(flow):
    """Uploads belong to the identity's principal: `sub` (or `account_id`) under its issuer, else
    the token itself; the Basic username a token comes with is only a label
    (tests/test_upload_principals.py has the rest)."""
    by_account = mint(EXTERNAL, account_id="acct", capabilities=["pull", "push"])
    location = flow.request(
        "POST", "/v2/n/blobs/uploads/", auth=False, headers=basic("v0", by_account)
    ).headers["Location"]
    same_account = basic("other-name", mint(EXTERNAL, account_id="acct", capabilities=["pull", "push"]))
    assert flow.request("GET", location, auth=False, headers=same_account).status_code == 204
    anonymous_caps = mint(EXTERNAL, capabilities=["pull", "push"])
    location = flow.request(
        "POST", "/v2/n/blobs/uploads/", auth=False, headers=basic("robot", anonymous_caps)
    ).headers["Location"]
    for label in ("robot", "robot2"):
        assert (
            flow.request("GET", location, auth=False, headers=basic(label, anonymous_caps)).status_code == 204
        )
    other_token = basic("robot", mint(EXTERNAL, capabilities=["pull", "push"]))
    assert flow.request("GET", location, auth=False, headers=other_token).status_code == 404
    assert flow.request("GET", location, auth=False, headers=basic(RW_USER, RW_PASS)).status_code == 404


def test_token_response_is_json(flow):
    r = get_token(flow, "repository:a:pull")
    assert r.headers["Content-Type"].startswith("application/json")
    json.loads(r.content)
    header = json.loads(base64.urlsafe_b64decode(r.json["token"].split(".")[0] + "=="))
    assert header["alg"] == "ES256"
