"""Progress of a long command: a tqdm bar on a terminal, a log line every few seconds
otherwise (cron, a pipe, a CI log), and nothing left behind when it ends or is interrupted."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from types import TracebackType

from storage.usage import human_size

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


class GcProgress:
    """storage.gc.Progress for the collector and the verifier: one bar per phase (items, and
    bytes when a phase moves any) with rate and ETA when the phase's total is known; otherwise
    a log line per phase and every LOG_EVERY seconds."""

    def __init__(self, description: str, stream=None) -> None:
        self._description = description
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._bar = None
        self._phase = ""
        self._items = 0
        self._bytes = 0
        self._next_line = time.monotonic() + LOG_EVERY

    def __enter__(self) -> GcProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def phase(self, name: str, total: int | None = None) -> None:
        self._close()
        self._phase, self._items, self._bytes = name, 0, 0
        if self._tty:
            from tqdm import tqdm

            self._bar = tqdm(
                desc=f"{self._description}: {name}",
                total=total,
                unit=" items",
                file=self._stream,
                leave=False,
            )
        else:
            log.info("%s: %s%s", self._description, name, f" ({total} items)" if total is not None else "")

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        self._items += items
        self._bytes += nbytes
        if self._bar is not None:
            self._bar.update(items)
            if self._bytes:
                self._bar.set_postfix_str(human_size(self._bytes), refresh=False)
        elif not self._tty and time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + LOG_EVERY
            log.info(
                "%s: %s: %d items, %s so far",
                self._description,
                self._phase,
                self._items,
                human_size(self._bytes),
            )

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
