"""What every bench module shares: paths, BenchError, the progress log, size parsing and formatting.

The bench scripts are run as `python bench/<script>.py`, so bench/ is sys.path[0] and the
modules here import each other by their plain names (`from common import log`).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MIB = 1024 * 1024


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 64M, 1G, 1GiB, 1048576)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    size = int(float(m.group(1)) * mult)
    if size <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return size


def human_size(size: int) -> str:
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / 2**20:g} MiB"


def raise_exit_on_signal(signum, _frame):
    """Signal handler (SIGTERM, SIGHUP): exit through the normal cleanup in `finally`."""
    print(f"bench: {signal.Signals(signum).name}, cleaning up", file=sys.stderr)
    raise SystemExit(128 + signum)
