"""Upload sessions belong to one principal (issue #10 item 10): a Basic user, a token subject of
one issuer, one particular token without a subject, or the anonymous client. Names alone never
match across kinds: a JWT without `sub` sent with the Basic username "alice" is not alice."""

from __future__ import annotations

import pytest

from settings import TokenSettings
from tests.conftest import RO_PASS, RO_USER, RW_PASS, RW_USER, basic, build_api
from tests.jwt_keys import mint
from tests.test_auth_and_errors import assert_oci_error
from tests.test_token_flow import EXTERNAL, EXTERNAL_PUBLIC, SIGNING, get_token

PUSH_ALL = {"capabilities": ["pull", "push"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(tmp_path):
    return build_api(tmp_path, tokens=TokenSettings(public_key=EXTERNAL_PUBLIC, signing_key=SIGNING))


def start(api, headers) -> str:
    r = api.request("POST", "/v2/team/app/blobs/uploads/", auth=False, headers=headers)
    assert r.status_code == 202, r.text
    return r.headers["Location"]


def assert_unknown_to(api, location: str, headers) -> None:
    """Every upload route answers as if the session did not exist."""
    for method, body in (("GET", None), ("PATCH", b"x"), ("PUT", b"x"), ("DELETE", None)):
        path = location + ("?digest=sha256:" + "0" * 64 if method == "PUT" else "")
        r = api.request(method, path, auth=False, headers=headers, body=body)
        assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def assert_owned_by(api, location: str, headers) -> None:
    assert api.request("GET", location, auth=False, headers=headers).status_code == 204


def test_a_token_without_sub_is_not_the_basic_username(api):
    alice = basic(RW_USER, RW_PASS)
    location = start(api, alice)
    no_sub = mint(EXTERNAL, **PUSH_ALL)
    assert_unknown_to(api, location, basic(RW_USER, no_sub))
    assert_unknown_to(api, location, bearer(no_sub))
    # A token whose sub is alice's name, from any issuer, is not the Basic user alice either.
    for extra in ({}, {"iss": "berth"}):
        assert_unknown_to(api, location, bearer(mint(EXTERNAL, sub=RW_USER, **PUSH_ALL, **extra)))
    assert_owned_by(api, location, alice)


def test_a_token_without_sub_owns_its_own_uploads_only(api):
    token = mint(EXTERNAL, **PUSH_ALL)
    location = start(api, basic("robot", token))
    assert_owned_by(api, location, basic("another-label", token))  # the username is a label
    assert_owned_by(api, location, bearer(token))
    assert_unknown_to(api, location, bearer(mint(EXTERNAL, **PUSH_ALL)))  # another such token
    assert_unknown_to(api, location, basic("robot", mint(EXTERNAL, **PUSH_ALL)))


def test_the_same_sub_from_different_issuers_are_different_owners(api):
    a = mint(EXTERNAL, sub="ci", iss="https://a.example", **PUSH_ALL)
    location = start(api, bearer(a))
    assert_owned_by(api, location, bearer(mint(EXTERNAL, sub="ci", iss="https://a.example", **PUSH_ALL)))
    for other in ({"iss": "https://b.example"}, {}, {"iss": "https:"}):
        assert_unknown_to(api, location, bearer(mint(EXTERNAL, sub="ci", **PUSH_ALL, **other)))
    # Separators in the claims cannot make two principals collide.
    x = start(api, bearer(mint(EXTERNAL, iss="a:b", sub="c", **PUSH_ALL)))
    assert_unknown_to(api, x, bearer(mint(EXTERNAL, iss="a", sub="b:c", **PUSH_ALL)))
    # account_id (serverless-registry) is its own namespace, not a sub.
    by_account = start(api, bearer(mint(EXTERNAL, account_id="ci", iss="https://a.example", **PUSH_ALL)))
    assert_unknown_to(api, by_account, bearer(a))
    assert_owned_by(
        api, by_account, bearer(mint(EXTERNAL, account_id="ci", iss="https://a.example", **PUSH_ALL))
    )


def test_basic_users_are_distinct_from_each_other(api):
    location = start(api, basic(RW_USER, RW_PASS))
    r = api.request("GET", location, auth=False, headers=basic(RO_USER, RO_PASS))  # may only read
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_renewed_token_flow_tokens_continue_the_upload(api):
    """docker renews its token mid-push: every token the endpoint issues for alice is alice."""
    scope = "repository:team/app:pull,push"
    first = get_token(api, scope, headers=basic(RW_USER, RW_PASS)).json["token"]
    location = start(api, bearer(first))
    renewed = get_token(api, scope, headers=basic(RW_USER, RW_PASS)).json["token"]
    assert renewed != first
    r = api.request("PATCH", location, auth=False, headers=bearer(renewed), body=b"x")
    assert r.status_code == 202, r.text
    # The user with her password is the same principal as her tokens...
    assert_owned_by(api, location, basic(RW_USER, RW_PASS))
    # ...and a token exchanged from a token is still her.
    again = get_token(api, scope, headers=bearer(renewed)).json["token"]
    assert_owned_by(api, location, bearer(again))
    # A token issued to someone else is not.
    external = mint(EXTERNAL, sub=RW_USER, **PUSH_ALL)
    theirs = get_token(api, scope, headers=basic(RW_USER, external)).json["token"]
    assert_unknown_to(api, location, bearer(theirs))


def test_tokens_issued_for_a_subjectless_jwt_stay_bound_to_it(api):
    scope = "repository:team/app:pull,push"
    jwt_a, jwt_b = mint(EXTERNAL, **PUSH_ALL), mint(EXTERNAL, **PUSH_ALL)
    location = start(api, bearer(get_token(api, scope, headers=basic("ci", jwt_a)).json["token"]))
    assert_owned_by(api, location, bearer(get_token(api, scope, headers=basic("ci", jwt_a)).json["token"]))
    assert_owned_by(api, location, basic("ci", jwt_a))
    assert_unknown_to(api, location, bearer(get_token(api, scope, headers=basic("ci", jwt_b)).json["token"]))
