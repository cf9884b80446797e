"""The server's limits on clients: how long each wait on a client may last, read from BERTH_*
environment variables.

gunicorn.conf.py reads them once in the master, so a malformed value stops the start with one
clear message; each worker reads the same (inherited, already validated) environment again.
Standard library only: the gunicorn master imports this before gevent patches anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class LimitsError(ValueError):
    """A BERTH_* setting is malformed; the message names it and says what is allowed."""


@dataclass(frozen=True)
class ServerLimits:
    # A new connection must send a complete request head this soon after it was accepted; on a
    # keep-alive connection, a request head must be complete this soon after its first byte.
    header_timeout: int = 20
    # How long a keep-alive connection may wait, idle, for its next request.
    keepalive_timeout: int = 75
    # Request bodies: for every this many seconds spent waiting for the client, at least
    # `min_rate` bytes/s must arrive (serving/pace.py).
    body_timeout: int = 60
    # Responses: the same for the client taking the bytes.
    send_timeout: int = 60
    # The least average rate over a body or send period; 0 only bounds silence.
    min_rate: int = 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerLimits:
        return cls(
            header_timeout=_seconds(env, "BERTH_HEADER_TIMEOUT", cls.header_timeout),
            keepalive_timeout=_seconds(env, "BERTH_KEEPALIVE_TIMEOUT", cls.keepalive_timeout),
            body_timeout=_seconds(env, "BERTH_BODY_TIMEOUT", cls.body_timeout),
            send_timeout=_seconds(env, "BERTH_SEND_TIMEOUT", cls.send_timeout),
            min_rate=positive_int(env, "BERTH_MIN_RATE", cls.min_rate, minimum=0),
        )


def _seconds(env: Mapping[str, str], name: str, default: int) -> int:
    value = positive_int(env, name, default)
    if value > 86400:
        raise LimitsError(f"{name} must be at most 86400 seconds, not {value}")
    return value


def positive_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    """An integer setting of at least `minimum` (also for gunicorn.conf.py's own knobs)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 9 or int(raw) < minimum:
        raise LimitsError(f"{name} must be a whole number of at least {minimum}, not {raw!r}")
    return int(raw)
