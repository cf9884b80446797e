"""Repeated failed logins are slowed (issue #10 item 13): per client address and per client and
username, 429 TOOMANYREQUESTS with Retry-After past a burst, correct logins and requests
without credentials never counted, the client seen through trusted proxies only."""

from __future__ import annotations

import logging
import time

import pytest

from auth.failures import FailedLoginLimiter
from settings import FailedLoginSettings, Settings, SettingsError, TokenSettings
from tests.conftest import RO_PASS, RO_USER, RW_PASS, RW_USER, basic, build_api
from tests.jwt_keys import keypair, mint
from tests.test_auth_and_errors import assert_oci_error

PRIVATE, PUBLIC = keypair("EC")
WRONG = basic(RW_USER, "wrong-password-123")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ the limiter


def test_burst_then_one_failure_per_interval():
    clock = Clock()
    limiter = FailedLoginLimiter(burst=10, per_minute=6, clock=clock)  # one per 10 s
    for _ in range(10):
        assert limiter.retry_after("198.51.100.7", "alice") is None
        limiter.record_failure("198.51.100.7", "alice")
    assert limiter.retry_after("198.51.100.7", "alice") == 10
    clock.now += 4
    assert limiter.retry_after("198.51.100.7", "alice") == 6
    clock.now += 6
    assert limiter.retry_after("198.51.100.7", "alice") is None  # one more...
    limiter.record_failure("198.51.100.7", "alice")
    assert limiter.retry_after("198.51.100.7", "alice") == 10  # ...then wait again
    clock.now += 100  # the whole burst back
    for _ in range(10):
        assert limiter.retry_after("198.51.100.7", "alice") is None
        limiter.record_failure("198.51.100.7", "alice")


def test_keys_are_client_and_client_with_username():
    limiter = FailedLoginLimiter(burst=10, per_minute=6, clock=Clock())
    for _ in range(10):
        limiter.record_failure("198.51.100.7", "alice")
    assert limiter.retry_after("198.51.100.7", "alice")
    # The user is not locked out for everyone; the client may still fail for other users...
    assert limiter.retry_after("198.51.100.8", "alice") is None
    assert limiter.retry_after("198.51.100.7", "bob") is None
    assert limiter.retry_after("198.51.100.7", None) is None
    # ...up to three bursts across usernames (a username spray).
    for i in range(20):
        limiter.record_failure("198.51.100.7", f"user{i}")
    assert limiter.retry_after("198.51.100.7", "carol") == 4  # 10 s / 3, rounded up
    assert limiter.retry_after("198.51.100.7", None) == 4
    assert limiter.retry_after("198.51.100.8", "carol") is None


def test_ipv6_clients_count_by_their_64():
    limiter = FailedLoginLimiter(burst=2, per_minute=1, clock=Clock())
    limiter.record_failure("2001:db8:1:2::1", "alice")
    limiter.record_failure("2001:db8:1:2:ffff::9", "alice")
    assert limiter.retry_after("2001:db8:1:2:abcd::1", "alice")
    assert limiter.retry_after("2001:db8:1:3::1", "alice") is None


def test_off_when_burst_is_zero():
    limiter = FailedLoginLimiter(burst=0, per_minute=1, clock=Clock())
    for _ in range(1000):
        limiter.record_failure("198.51.100.7", "alice")
    assert limiter.retry_after("198.51.100.7", "alice") is None and len(limiter) == 0


def test_memory_is_bounded_and_the_worst_offenders_stay():
    clock = Clock()
    limiter = FailedLoginLimiter(burst=5, per_minute=1, clock=clock, max_keys=1000)
    for _ in range(5):
        limiter.record_failure("198.51.100.7", "alice")
    for i in range(50_000):  # many addresses failing once each
        limiter.record_failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "x")
        assert len(limiter) <= 1000
    assert limiter.retry_after("198.51.100.7", "alice")
    clock.now += 3600  # everything refilled: dropped within a minute
    limiter.record_failure("203.0.113.1", "y")
    assert len(limiter) == 2


# ------------------------------------------------------------------------------ over HTTP


def limited_api(tmp_path, burst=10, per_minute=6, **overrides):
    return build_api(tmp_path, failed_logins=FailedLoginSettings(burst, per_minute), **overrides)


def test_wrong_passwords_get_429_after_a_burst(tmp_path):
    api = limited_api(tmp_path)
    for _ in range(10):
        assert_oci_error(api.request("GET", "/v2/", auth=False, headers=WRONG), 401, "UNAUTHORIZED")
    for path in ("/v2/", "/v2/team/app/tags/list", "/v2/team/app/blobs/uploads/"):
        r = api.request("GET" if "uploads" not in path else "POST", path, auth=False, headers=WRONG)
        assert_oci_error(r, 429, "TOOMANYREQUESTS")
        assert 1 <= int(r.headers["Retry-After"]) <= 10
    # While slowed, this client's password for this user is not even checked: a right one
    # getting through would tell a guesser so.
    assert_oci_error(api.request("GET", "/v2/", auth=False, headers=basic(RW_USER, RW_PASS)), 429)
    # Everyone else is unaffected: the same user elsewhere, another user here.
    assert (
        api.client.simulate_get(
            "/v2/", headers=basic(RW_USER, RW_PASS), remote_addr="198.51.100.20"
        ).status_code
        == 200
    )
    assert api.request("GET", "/v2/", auth=False, headers=basic(RO_USER, RO_PASS)).status_code == 200


def test_the_bucket_refills(tmp_path):
    api = limited_api(tmp_path, burst=3, per_minute=600)  # one more every 0.1 s
    for _ in range(3):
        assert_oci_error(api.request("GET", "/v2/", auth=False, headers=WRONG), 401)
    assert_oci_error(api.request("GET", "/v2/", auth=False, headers=WRONG), 429)
    time.sleep(0.25)
    assert api.request("GET", "/v2/", auth=False, headers=basic(RW_USER, RW_PASS)).status_code == 200
    assert_oci_error(api.request("GET", "/v2/", auth=False, headers=WRONG), 401)


def test_only_failures_count(tmp_path):
    api = limited_api(tmp_path, burst=5, anonymous_pull=False)
    for _ in range(200):  # challenges (no credentials) and correct logins: never counted
        assert api.request("GET", "/v2/", auth=False).status_code == 401
        assert api.request("GET", "/v2/team/app/tags/list").status_code == 404
    for _ in range(5):  # correct logins between failures neither count nor reset the count
        assert api.request("GET", "/v2/").status_code == 200
        assert_oci_error(api.request("GET", "/v2/", auth=False, headers=WRONG), 401)
    assert_oci_error(api.request("GET", "/v2/", auth=False, headers=WRONG), 429)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + mint(keypair("EC")[0], capabilities=["pull"]),  # another key
        "Bearer " + mint(PRIVATE, exp=int(time.time()) - 3600),  # expired
        "Basic !!!",  # malformed
        basic("v0", mint(keypair("EC")[0], capabilities=["pull"]))["Authorization"],  # as password
    ],
    ids=["bad-bearer", "expired-bearer", "malformed", "bad-token-as-password"],
)
def test_bad_tokens_and_malformed_credentials_count(tmp_path, authorization):
    api = limited_api(tmp_path, burst=3, tokens=TokenSettings(public_key=PUBLIC))
    for _ in range(9):  # a Bearer token has no username: only the client's bucket (3 bursts)
        r = api.request("GET", "/v2/", auth=False, headers={"Authorization": authorization})
        if r.status_code == 429:
            break
        assert_oci_error(r, 401)
    assert_oci_error(api.request("GET", "/v2/", auth=False, headers={"Authorization": authorization}), 429)
    # Tokens cannot be guessed: a valid one still passes from the slowed client.
    good = mint(PRIVATE, capabilities=["pull"])
    assert (
        api.request("GET", "/v2/", auth=False, headers={"Authorization": f"Bearer {good}"}).status_code == 200
    )
    assert api.request("GET", "/v2/", auth=False, headers=basic("v0", good)).status_code == 200


def test_the_token_endpoint_is_limited_too(tmp_path):
    signing, _ = keypair("EC")
    api = limited_api(tmp_path, burst=3, tokens=TokenSettings(signing_key=signing))
    for _ in range(3):
        assert_oci_error(api.request("GET", "/v2/token?service=berth", auth=False, headers=WRONG), 401)
    assert_oci_error(api.request("GET", "/v2/token?service=berth", auth=False, headers=WRONG), 429)
    assert api.request("GET", "/v2/token?service=berth", auth=False).status_code == 401  # a challenge


def test_off_by_setting(tmp_path):
    api = limited_api(tmp_path, burst=0)
    for _ in range(50):
        assert_oci_error(api.request("GET", "/v2/", auth=False, headers=WRONG), 401)


def test_forwarded_for_only_from_trusted_proxies(tmp_path):
    api = limited_api(tmp_path, burst=3)

    def attempt(peer: str, forwarded: str | None = None):
        headers = dict(WRONG, **({"X-Forwarded-For": forwarded} if forwarded else {}))
        return api.client.simulate_get("/v2/", headers=headers, remote_addr=peer).status_code

    # A client talking directly cannot escape by inventing X-Forwarded-For.
    assert [attempt("203.0.113.9", f"192.0.2.{i}") for i in range(5)] == [401, 401, 401, 429, 429]
    # Behind the proxy (127.0.0.1 is trusted by default) each client has its own bucket...
    assert [attempt("127.0.0.1", "192.0.2.1") for _ in range(4)] == [401, 401, 401, 429]
    assert attempt("127.0.0.1", "192.0.2.2") == 401
    # ...and what a client wrote before the proxy's own hop is not believed.
    assert attempt("127.0.0.1", "192.0.2.2, 192.0.2.1") == 429
    assert attempt("127.0.0.1", "192.0.2.1, 192.0.2.3") == 401


def test_slowing_is_logged_without_secrets(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    api = limited_api(tmp_path, burst=2)
    for _ in range(4):
        api.client.simulate_get("/v2/", headers=WRONG, remote_addr="198.51.100.7")
    assert "failed logins from 198.51.100.7: slowed down" in caplog.text
    assert "wrong-password-123" not in caplog.text and RW_USER not in caplog.text


# ------------------------------------------------------------------------------ settings


def test_settings():
    assert Settings.from_env({}).failed_logins == FailedLoginSettings(10, 6)
    s = Settings.from_env({"REGISTRY_AUTH_FAILURE_BURST": "0", "REGISTRY_AUTH_FAILURE_RATE": "60"})
    assert s.failed_logins == FailedLoginSettings(0, 60)


@pytest.mark.parametrize(
    "env,message",
    [
        ({"REGISTRY_AUTH_FAILURE_BURST": "-1"}, "at least 0"),
        ({"REGISTRY_AUTH_FAILURE_BURST": "ten"}, "whole number"),
        ({"REGISTRY_AUTH_FAILURE_BURST": "100000"}, "at most"),
        ({"REGISTRY_AUTH_FAILURE_RATE": "0"}, "at least 1"),
        ({"REGISTRY_AUTH_FAILURE_RATE": "0.5"}, "whole number"),
        ({"REGISTRY_AUTH_FAILURE_RATE": "1000000"}, "at most"),
        ({"FORWARDED_ALLOW_IPS": "nginx.internal"}, "FORWARDED_ALLOW_IPS"),
        ({"FORWARDED_ALLOW_IPS": "192.168.1.1/24"}, "FORWARDED_ALLOW_IPS"),
    ],
)
def test_bad_settings_stop_the_start(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
