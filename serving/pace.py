"""Deadlines for transfers that may last hours but must keep moving.

A multi-GiB layer on a slow link is a legitimate upload; a client sending one byte every few
seconds is not, and would hold a connection (and its buffer) for ever. Like Apache's
mod_reqtimeout MinRate, a transfer is cut when, over a whole period, fewer than
`min_rate * period` bytes moved: a client that stops, or trickles, is cut within one period,
while one that keeps moving faster than the minimum is never cut, however long it takes.

Only the time spent waiting for the client counts towards a period. Time the server spends
elsewhere (hashing, writing to storage, waiting for its turn in the event loop) is never held
against the client: while the server does not read, the client cannot send.
"""

from __future__ import annotations

from typing import NoReturn

from serving.errors import ClientTooSlow


class Pace:
    """The current period of a transfer: the waiting time left in it, and the bytes moved."""

    __slots__ = ("_left", "_moved", "_period", "_quota", "_what")

    def __init__(self, period: float, min_rate: int, what: str) -> None:
        self._period = period
        self._quota = max(1, int(period * min_rate))  # with no minimum rate, any byte will do
        self._left = period
        self._moved = 0
        self._what = what

    def remaining(self) -> float:
        """How long the next wait for the client may last."""
        return self._left

    def waited(self, seconds: float, moved: int = 0) -> None:
        """Count a wait for the client that lasted `seconds` and brought `moved` bytes; raise
        ClientTooSlow once a period's waiting is used up without its bytes."""
        self._left -= seconds
        self._moved += moved
        if self._moved >= self._quota:  # enough for this period: the next one starts now
            self._left = self._period
            self._moved = 0
        elif self._left <= 0:
            self.expired()

    def moved(self, n: int) -> None:
        self.waited(0.0, n)

    def expired(self) -> NoReturn:
        raise ClientTooSlow(
            f"{self._what}: fewer than {self._quota} bytes in {self._period:g} s (at {self._moved})"
        )
