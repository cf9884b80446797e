"""serving/limits.py and serving/pace.py: the BERTH_* deadlines, and the minimum-rate rule that
cuts stalled or trickling transfers but never one that keeps moving."""

from __future__ import annotations

import pytest

from serving import pace
from serving.errors import ClientTooSlow
from serving.limits import LimitsError, ServerLimits


def test_defaults_and_overrides():
    assert ServerLimits.from_env({}) == ServerLimits(20, 75, 60, 60, 1024)
    env = {
        "BERTH_HEADER_TIMEOUT": "5",
        "BERTH_KEEPALIVE_TIMEOUT": "30",
        "BERTH_BODY_TIMEOUT": "120",
        "BERTH_SEND_TIMEOUT": "90",
        "BERTH_MIN_RATE": "0",
    }
    assert ServerLimits.from_env(env) == ServerLimits(5, 30, 120, 90, 0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BERTH_BODY_TIMEOUT", "abc", "BERTH_BODY_TIMEOUT must be a whole number of at least 1, not 'abc'"),
        ("BERTH_HEADER_TIMEOUT", "0", "BERTH_HEADER_TIMEOUT must be a whole number of at least 1, not '0'"),
        ("BERTH_SEND_TIMEOUT", "1.5", "BERTH_SEND_TIMEOUT must be a whole number of at least 1, not '1.5'"),
        (
            "BERTH_KEEPALIVE_TIMEOUT",
            "90000",
            "BERTH_KEEPALIVE_TIMEOUT must be at most 86400 seconds, not 90000",
        ),
        ("BERTH_MIN_RATE", "-1", "BERTH_MIN_RATE must be a whole number of at least 0, not '-1'"),
    ],
)
def test_malformed_values_are_refused_with_a_clear_message(name, value, message):
    with pytest.raises(LimitsError) as caught:
        ServerLimits.from_env({name: value})
    assert str(caught.value) == message


def test_a_transfer_moving_at_the_minimum_rate_is_never_cut():
    p = pace.Pace(period=10, min_rate=100, what="sending")
    for _ in range(10_000):  # 100 bytes per 0.99 s of waiting, for almost three hours
        assert 0 < p.remaining() <= 10
        p.waited(0.99, 100)


@pytest.mark.parametrize(("step", "trickle"), [(0.5, 1), (3.0, 0)], ids=["trickle", "stall"])
def test_a_trickle_or_a_stall_is_cut_within_a_period(step, trickle):
    p = pace.Pace(period=10, min_rate=100, what="receiving")
    waited = 0.0
    with pytest.raises(ClientTooSlow, match="receiving: fewer than 1000 bytes in 10 s"):
        while True:
            waited += step
            p.waited(step, trickle)  # 2 bytes/s, or nothing at all
    assert waited <= 10 + step


def test_a_burst_does_not_buy_time_beyond_the_next_period():
    """Having sent a lot early does not let a client stall later for longer than a period."""
    p = pace.Pace(period=10, min_rate=100, what="sending")
    p.moved(10**9)
    with pytest.raises(ClientTooSlow):
        p.waited(10.5)


def test_only_the_time_spent_waiting_for_the_client_counts():
    """However long the server spends between two reads (storage writes, its turn in the event
    loop), a client whose bytes are there when asked for is never cut."""
    p = pace.Pace(period=10, min_rate=100, what="receiving")
    for _ in range(1000):
        p.waited(0.001, 10)  # asked, and the bytes were already there; then busy elsewhere
