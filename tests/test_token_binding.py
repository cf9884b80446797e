"""What binds a token: it never outlives the credential it was exchanged for (issue #10 item 4),
and the token flow's own key only accepts tokens made for this registry (item 5): `aud` and
`iss` are the registry's own even when REGISTRY_AUTH_AUDIENCE/ISSUER are unset."""

from __future__ import annotations

import base64
import json
import time

import pytest

from settings import TokenSettings
from tests.conftest import RW_PASS, RW_USER, basic, build_api
from tests.jwt_keys import keypair, mint
from tests.test_auth_and_errors import assert_oci_error
from tests.test_token_flow import EXTERNAL, EXTERNAL_PUBLIC, SIGNING, SIGNING_PUBLIC, claims_of, get_token

PUSH_ALL = {"capabilities": ["pull", "push"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def flow_api(tmp_path, **tokens):
    return build_api(tmp_path, tokens=TokenSettings(signing_key=SIGNING, **tokens))


def payload(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def ours(ttl: int = 300, **claims) -> str:
    """A token as this registry's token endpoint makes them (service "berth")."""
    return mint(SIGNING, ttl=ttl, aud="berth", iss="berth", sub="ci", **claims)


# ------------------------------------------------------------------------------ item 4


def _exchange(api, credential: str, how: str):
    headers = bearer(credential) if how == "bearer" else basic("v0", credential)
    return get_token(api, "repository:team/app:pull,push", headers=headers)


@pytest.mark.parametrize("how", ["bearer", "basic-password"])
@pytest.mark.parametrize("origin", ["issued-here", "external"])
def test_exchanging_a_token_never_extends_it(tmp_path, how, origin):
    api = flow_api(tmp_path, public_key=EXTERNAL_PUBLIC)
    if origin == "issued-here":
        token = ours(ttl=3, **PUSH_ALL)
    else:
        token = mint(EXTERNAL, ttl=3, sub="ci", **PUSH_ALL)
    original_exp = payload(token)["exp"]
    for _ in range(5):
        r = _exchange(api, token, how)
        assert r.status_code == 200, r.text
        doc = r.json
        new = claims_of(doc["token"])
        assert new["exp"] <= original_exp
        assert doc["expires_in"] <= 3 and doc["expires_in"] == new["exp"] - new["iat"]
        token = doc["token"]  # and exchange what we got, again and again
    # What came out still works until the original expires...
    assert api.request("GET", "/v2/team/app/tags/list", auth=False, headers=bearer(token)).status_code == 404


def test_passwords_get_the_full_lifetime(tmp_path):
    api = flow_api(tmp_path, lifetime=600)
    doc = get_token(api, "repository:a:pull", headers=basic(RW_USER, RW_PASS)).json
    c = claims_of(doc["token"])
    assert doc["expires_in"] == 600 == c["exp"] - c["iat"]


def test_a_credential_past_its_exp_gets_no_token(tmp_path):
    """Within the 30 s leeway an expired token is still accepted on the routes, but the token
    endpoint will not issue a token that is born expired."""
    api = flow_api(tmp_path)
    token = ours(exp=int(time.time()) - 5, **PUSH_ALL)
    assert api.request("GET", "/v2/a/tags/list", auth=False, headers=bearer(token)).status_code == 404
    r = _exchange(api, token, "bearer")
    assert_oci_error(r, 401, "UNAUTHORIZED")
    assert r.headers["WWW-Authenticate"].startswith("Basic ")


# ------------------------------------------------------------------------------ item 5


@pytest.fixture
def pushed(tmp_path):
    """(api with the token flow and no REGISTRY_AUTH_AUDIENCE, manifest digest in team/app)."""

    def make(**tokens):
        api = flow_api(tmp_path, **tokens)
        digest, _ = api.push_image("team/app", "v1")
        return api, digest

    return make


@pytest.mark.parametrize("shared_public_key", [False, True], ids=["signing-key-only", "same-key-as-public"])
@pytest.mark.parametrize(
    "token_claims",
    [
        {"aud": "staging", "iss": "staging"},  # a staging instance sharing the key pair
        {"aud": "staging", "iss": "berth"},
        {"aud": ["staging", "other"]},
        {},  # no aud at all
    ],
    ids=["staging", "staging-aud-our-iss", "aud-list-without-us", "no-aud"],
)
def test_tokens_for_another_service_are_refused(pushed, shared_public_key, token_claims):
    api, digest = pushed(public_key=SIGNING_PUBLIC if shared_public_key else None)
    token = mint(SIGNING, sub="ci", **PUSH_ALL, **token_claims)
    r = api.request("DELETE", f"/v2/team/app/manifests/{digest}", auth=False, headers=bearer(token))
    assert_oci_error(r, 401, "UNAUTHORIZED")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert api.request("HEAD", f"/v2/team/app/manifests/{digest}").status_code == 200


def test_own_key_needs_our_issuer_too(pushed):
    api, digest = pushed()
    token = mint(SIGNING, sub="ci", aud="berth", iss="staging", **PUSH_ALL)
    assert_oci_error(
        api.request("DELETE", f"/v2/team/app/manifests/{digest}", auth=False, headers=bearer(token)), 401
    )
    token = mint(SIGNING, sub="ci", aud="berth", **PUSH_ALL)  # no iss
    assert_oci_error(api.request("GET", "/v2/team/app/tags/list", auth=False, headers=bearer(token)), 401)
    r = api.request(
        "DELETE", f"/v2/team/app/manifests/{digest}", auth=False, headers=bearer(ours(**PUSH_ALL))
    )
    assert r.status_code == 202


@pytest.mark.parametrize(
    "settings,token_claims",
    [
        ({}, {"aud": "berth", "iss": "berth"}),
        ({"service": "registry.example"}, {"aud": "registry.example", "iss": "registry.example"}),
        ({"audience": "reg", "service": "reg"}, {"aud": "reg", "iss": "reg"}),  # as from the environment
        ({"audience": "reg", "issuer": "https://auth"}, {"aud": "reg", "iss": "https://auth"}),
    ],
)
def test_what_the_endpoint_issues_is_what_is_accepted(tmp_path, settings, token_claims):
    api = flow_api(tmp_path, **settings)
    doc = get_token(api, "repository:a:pull", service=None, headers=basic(RW_USER, RW_PASS)).json
    issued = claims_of(doc["token"])
    assert {k: issued[k] for k in ("aud", "iss")} == token_claims
    assert api.request("GET", "/v2/a/tags/list", auth=False, headers=bearer(doc["token"])).status_code == 404


def test_shared_key_pair_keeps_the_worked_example(tmp_path):
    """The README's example: one key pair as both settings, REGISTRY_AUTH_AUDIENCE set, tokens
    minted with `aud` and no `iss` (mint.py). They keep working; the same key's tokens for
    another audience do not."""
    api = flow_api(tmp_path, public_key=SIGNING_PUBLIC, audience="registry.example.com")
    minted = mint(SIGNING, sub="ci-team", aud="registry.example.com", **PUSH_ALL)
    api.headers = bearer(minted)
    api.push_image("team/app", "v1")
    staging = mint(SIGNING, sub="ci-team", aud="staging.example.com", **PUSH_ALL)
    assert_oci_error(api.request("GET", "/v2/team/app/tags/list", headers=bearer(staging)), 401)


def test_shared_key_pair_without_audience_needs_our_service_as_aud(tmp_path):
    api = flow_api(tmp_path, public_key=SIGNING_PUBLIC)
    for aud, status in (("berth", 404), ("staging", 401), (None, 401)):
        extra = {"aud": aud} if aud else {}
        token = mint(SIGNING, sub="ci", **PUSH_ALL, **extra)
        assert api.request("GET", "/v2/a/tags/list", auth=False, headers=bearer(token)).status_code == status


def test_external_issuers_keep_todays_rules(tmp_path):
    """A separate JWT_REGISTRY_TOKENS_PUBLIC_KEY (serverless-registry's tooling mints without
    aud): aud and iss are checked only when configured, with or without the token flow."""
    for tokens in (
        TokenSettings(public_key=EXTERNAL_PUBLIC),
        TokenSettings(public_key=EXTERNAL_PUBLIC, signing_key=SIGNING),
    ):
        api = build_api(tmp_path, tokens=tokens)
        for extra in ({}, {"aud": "anything"}, {"iss": "whoever"}):
            token = mint(EXTERNAL, sub="ci", **PUSH_ALL, **extra)
            assert api.request("GET", "/v2/a/tags/list", auth=False, headers=bearer(token)).status_code == 404
    api = build_api(
        tmp_path, tokens=TokenSettings(public_key=EXTERNAL_PUBLIC, signing_key=SIGNING, audience="reg")
    )
    assert (
        api.request("GET", "/v2/", auth=False, headers=bearer(mint(EXTERNAL, aud="reg"))).status_code == 200
    )
    assert api.request("GET", "/v2/", auth=False, headers=bearer(mint(EXTERNAL, aud="x"))).status_code == 401


def test_a_stranger_key_is_refused_whatever_its_claims(tmp_path):
    stranger, _ = keypair("EC")
    api = flow_api(tmp_path)
    token = mint(stranger, aud="berth", iss="berth", sub="ci", **PUSH_ALL)
    assert_oci_error(api.request("GET", "/v2/", auth=False, headers=bearer(token)), 401)
