"""Progress of a long command: a tqdm bar on a terminal, a log line every few seconds
otherwise (cron, a pipe, a CI log), and nothing left behind when it ends or is interrupted."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from types import TracebackType

log = logging.getLogger("berth.cli")
LOG_EVERY = 10.0  # seconds between two progress lines when not on a terminal


class Progress:
    """Counts of several units (`units[0]` drives the bar, the others are shown beside it)."""

    def __init__(self, description: str, units: Sequence[str], stream=None) -> None:
        self._description = description
        self._units = list(units)
        self._counts = dict.fromkeys(units, 0)
        self._stream = stream or sys.stderr
        self._bar = None
        self._next_line = time.monotonic() + LOG_EVERY

    def __enter__(self) -> Progress:
        if self._stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                desc=self._description, unit=f" {self._units[0]}", file=self._stream, leave=False
            )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()

    def advance(self, unit: str, n: int = 1) -> None:
        self._counts[unit] = self._counts.get(unit, 0) + n
        if self._bar is not None:
            if unit == self._units[0]:
                self._bar.update(n)
            others = {u: self._counts[u] for u in self._units[1:]}
            self._bar.set_postfix(others, refresh=False)
        elif time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + LOG_EVERY
            log.info("%s: %s so far", self._description, self.summary())

    def summary(self) -> str:
        return ", ".join(f"{self._counts[u]} {u}" for u in self._units)
