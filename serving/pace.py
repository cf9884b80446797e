"""Deadlines for transfers that may last hours but must keep moving.

A multi-GiB layer on a slow link is a legitimate upload; a client sending one byte every few
seconds is not, and would hold a connection (and its buffer) for ever. Like Apache's
mod_reqtimeout MinRate, a transfer is cut when, over a whole period, fewer than
`min_rate * period` bytes moved: a client that stops, or trickles, is cut within one period,
while one that keeps moving faster than the minimum is never cut, however long it takes.
"""

from __future__ import annotations

from time import monotonic

from serving.errors import ClientTooSlow


class Pace:
    """The current period of a transfer: its end, and how many bytes moved in it so far."""

    __slots__ = ("_ends", "_moved", "_period", "_quota", "_what")

    def __init__(self, period: float, min_rate: int, what: str) -> None:
        self._period = period
        self._quota = max(1, int(period * min_rate))  # with no minimum rate, any byte will do
        self._ends = monotonic() + period
        self._moved = 0
        self._what = what

    def remaining(self) -> float:
        """Seconds left in the current period: how long the next wait may last."""
        left = self._ends - monotonic()
        if left <= 0:
            self.expired()
        return left

    def moved(self, n: int) -> None:
        self._moved += n
        if self._moved >= self._quota:  # enough for this period: the next one starts now
            self._ends = monotonic() + self._period
            self._moved = 0

    def expired(self):
        raise ClientTooSlow(
            f"{self._what}: fewer than {self._quota} bytes in {self._period:g} s (at {self._moved})"
        )
