"""Keeping upstream traffic within bounds.

- `Slots`: at most REGISTRY_UPSTREAM_MAX_CONCURRENCY upstream requests at once in a worker
  process (a blob relay holds its slot until the relay ends). A request waits for a slot up to
  REGISTRY_UPSTREAM_CONNECT_TIMEOUT seconds, then counts as an upstream that could not answer.
  Per process, because gevent workers share no memory: an instance allows workers x N.
- `retry_after_seconds`: how long an upstream that answered 429 asked us to wait (client.py
  sends it nothing meanwhile).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime

DEFAULT_RETRY_AFTER = 30.0  # a 429 without a usable Retry-After
MAX_RETRY_AFTER = 3600.0  # an upstream cannot silence itself for longer than an hour


class SlotsFull(Exception):
    """No upstream request slot came free in time."""


class Slots:
    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self._wait = wait
        self._semaphore = threading.BoundedSemaphore(limit)  # gevent's, under gunicorn

    def take(self) -> Callable[[], None]:
        """Wait for a slot; returns the function that gives it back (calling it twice is
        harmless). SlotsFull if none came free within the wait."""
        if not self._semaphore.acquire(timeout=self._wait):
            raise SlotsFull(
                f"{self.limit} upstream requests already under way in this process "
                f"(REGISTRY_UPSTREAM_MAX_CONCURRENCY) for {self._wait:g} s"
            )
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._semaphore.release()

        return release

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        release = self.take()
        try:
            yield
        finally:
            release()


def retry_after_seconds(value: str | None) -> float:
    """Retry-After as seconds from now (delta-seconds or an HTTP date), within 1 s to an hour."""
    seconds = DEFAULT_RETRY_AFTER
    text = (value or "").strip()
    if text.isdigit():
        seconds = float(text[:8])
    elif text:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            seconds = DEFAULT_RETRY_AFTER
    return min(max(seconds, 1.0), MAX_RETRY_AFTER)
