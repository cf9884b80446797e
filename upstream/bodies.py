"""Reading upstream answers within bounds, in size and in total time.

urllib3's read timeout bounds each read, not a whole body: an upstream that sends one byte just
before every timeout keeps a request going forever, and one that never stops sending fills a
worker's memory if the body is read whole. So every body read here has a size limit, and a
`Deadline` that cuts the connection when the whole body took too long.
"""

from __future__ import annotations

import contextlib
import threading
import time

import urllib3
from urllib3.exceptions import HTTPError

SMALL_BODY_MAX = 64 * 1024  # /v2/ answers, token realm answers, error bodies


class BodyRefused(HTTPError):
    """An upstream answer broke a bound: larger than allowed, or slower than its deadline.
    An urllib3 HTTPError, so callers treat it like any other failed upstream request."""


class Deadline:
    """Shuts a response's connection down once `seconds` have passed (or the later end that
    `extend_to` set), which ends any read waiting on it, a trickling body's included, with an
    error. `stop()` must be called before the connection can be reused: a watchdog must never
    cut another request's connection.

    A timer rather than shorter socket timeouts: one read of N bytes is many recv() calls, each
    allowed the full read timeout. Under gevent the timer is a greenlet (threading is patched)."""

    def __init__(self, response: urllib3.BaseHTTPResponse, seconds: float) -> None:
        self.expired = False
        self._response = response
        self._start = time.monotonic()
        self._ends = self._start + seconds
        self._lock = threading.Lock()
        self._stopped = False
        self._arm(seconds)

    def _arm(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:  # so stop() returns only once no shutdown can follow
            if self._stopped:
                return
            left = self._ends - time.monotonic()
            if left > 0:
                self._arm(left)  # extended meanwhile
                return
            self.expired = True
            # Already closed, or released to the pool: then there is nothing left to cut.
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                self._response.shutdown()

    def extend_to(self, seconds: float) -> None:
        """Move the end to `seconds` after the start (never earlier than it is)."""
        self._ends = max(self._ends, self._start + seconds)

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self._ends

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._timer.cancel()


def declared_length(response: urllib3.BaseHTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def read_capped(response: urllib3.BaseHTTPResponse, limit: int, seconds: float) -> bytes:
    """The whole body, if it is at most `limit` bytes and arrives within `seconds`;
    BodyRefused otherwise (the connection is then closed, never reused)."""
    length = declared_length(response)
    if length is not None and length > limit:
        response.close()
        raise BodyRefused(f"answer of {length} bytes is larger than {limit}")
    deadline = Deadline(response, seconds)
    try:
        body = response.read(limit + 1, decode_content=True)
        if len(body) > limit:
            raise BodyRefused(f"answer is larger than {limit} bytes")
        if deadline.passed():
            raise BodyRefused(f"answer took longer than {seconds:.3g} s")
    except HTTPError as exc:
        response.close()
        if deadline.expired and not isinstance(exc, BodyRefused):
            raise BodyRefused(f"answer took longer than {seconds:.3g} s") from None
        raise
    finally:
        deadline.stop()
    return body


def discard(response: urllib3.BaseHTTPResponse, seconds: float) -> None:
    """Done with a response, whatever is left of its body. The connection goes back to the
    pool only once the rest is drained (a reused connection with unread bytes would garble the
    next response), and only a small rest that arrives in time is worth draining: otherwise the
    connection is closed."""
    remaining = getattr(response, "length_remaining", None)  # 0 for HEAD; None if chunked
    if remaining == 0:  # a HEAD, an empty body: reading marks it done, without waiting
        response.drain_conn()
        response.release_conn()
        return
    if remaining is not None and remaining <= SMALL_BODY_MAX:
        deadline = Deadline(response, seconds)
        try:
            response.drain_conn()  # swallows read errors, a cut included
        finally:
            deadline.stop()
        if not deadline.expired and response.length_remaining == 0:
            response.release_conn()
            return
    response.close()
