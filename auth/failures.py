"""Slowing repeated failed logins, per client address and per client address and username.

Only failures count: a wrong password, a bad or expired token, malformed credentials. Requests
without credentials (every client's first step, answered with a challenge) and correct logins
are never counted. Each key has a bucket (GCRA: one float per key): `burst` failures are
answered as usual, then one more each `60 / per_minute` seconds; beyond that the client gets 429
TOOMANYREQUESTS with Retry-After, and requests refused that way are not counted (the promise is
"at most burst + rate x time checked failures", not a lockout that grows while a client
retries). A client address gets three times the burst and rate across all usernames, so a
username spray is slowed too and a mistyped password of one user does not stall the others.

Keys are the client address (an IPv6 client by its /64, which one host usually holds whole) and
that plus a digest of the username; never the username alone, so nobody can lock a user out
for everyone. Bearer tokens have no username: only the client key counts them.

State is in memory, per worker process: with N workers a client gets up to N times the burst
before every worker has seen it. gevent never preempts plain Python code, so reading and updating
a bucket is atomic without locks. The table is bounded (MAX_KEYS): expired buckets are dropped,
and when it is full of live ones, those nearest to refilled (the least failing) go first."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Callable
from functools import lru_cache

MAX_KEYS = 10_000  # about 2 MB per worker when full
SWEEP_SECONDS = 60.0  # refilled buckets are dropped at most this long after
CLIENT_FACTOR = 3  # a client address's bucket, across usernames, against one username's


@lru_cache(maxsize=1024)
def _network(client: str) -> str:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailedLoginLimiter:
    def __init__(
        self,
        burst: int,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.enabled = burst > 0
        self._burst = burst
        self._interval = 60.0 / per_minute  # seconds per failure, once the burst is spent
        self._clock = clock
        self._max_keys = max_keys
        # key -> theoretical arrival time: when the bucket would be full again.
        self._buckets: dict[tuple[str, ...], float] = {}
        self._next_sweep = clock() + SWEEP_SECONDS

    @property
    def counting(self) -> bool:
        """Whether any failure is being remembered (else no client is slowed)."""
        return self.enabled and bool(self._buckets)

    def _keys(self, client: str, username: str | None) -> list[tuple[tuple[str, ...], int, float]]:
        """(key, burst, interval) of each bucket a failure of this client and username drains."""
        network = _network(client)
        keys = [(("client", network), self._burst * CLIENT_FACTOR, self._interval / CLIENT_FACTOR)]
        if username is not None:
            digest = hashlib.blake2b(username.encode("utf-8", "replace"), digest_size=12).hexdigest()
            keys.append((("user", network, digest), self._burst, self._interval))
        return keys

    def retry_after(self, client: str, username: str | None = None) -> int | None:
        """Seconds until this client (and username) may fail again, or None if it may now."""
        if not self.enabled or not self._buckets:
            return None
        now = self._clock()
        wait = 0.0
        for key, burst, interval in self._keys(client, username):
            tat = self._buckets.get(key)
            if tat is not None:
                # Allowed while the debt after one more failure stays within the burst.
                wait = max(wait, max(tat, now) + interval - now - burst * interval)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def record_failure(self, client: str, username: str | None = None) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        for key, _burst, interval in self._keys(client, username):
            tat = self._buckets.get(key)
            if tat is None and len(self._buckets) >= self._max_keys:
                self._make_room(now)
            self._buckets[key] = max(tat or now, now) + interval

    def _sweep(self, now: float) -> None:
        buckets = self._buckets
        for key in [k for k, tat in buckets.items() if tat <= now]:
            del buckets[key]  # refilled: the same as no entry
        self._next_sweep = now + SWEEP_SECONDS

    def _make_room(self, now: float) -> None:
        self._sweep(now)
        buckets = self._buckets
        if len(buckets) >= self._max_keys:
            # Still full of live buckets (many addresses failing at once): drop the quarter
            # nearest to refilled, keeping the clients that failed most.
            for key, _ in sorted(buckets.items(), key=lambda item: item[1])[: self._max_keys // 4 + 1]:
                del buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
