"""Running the processes the end-to-end tests drive: a command runner with timeouts, and a base
class for long-running daemons that binds 127.0.0.1, waits with timeouts and always stops
(SIGTERM, then SIGKILL of its own process group)."""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

# Every live process object, so a failing test can show their logs.
LIVE: list[_Process] = []


@dataclass(frozen=True)
class Creds:
    username: str
    password: str

    @property
    def colon(self) -> str:
        return f"{self.username}:{self.password}"

    @property
    def tuple(self) -> tuple[str, str]:
        return (self.username, self.password)

    @property
    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(self.colon.encode()).decode()


RW = Creds("e2e-writer", "w-s3cret-Pa55")
RO = Creds("e2e-reader", "r-s3cret-Pa55")


# --------------------------------------------------------------------------- helpers


def require_binary(name: str, *candidates: str) -> str:
    """Path of a client binary; fail in CI, skip elsewhere, when it is missing."""
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if found:
        return found
    msg = f"required binary {name!r} not found (looked in {list(candidates)} and PATH)"
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tempdir(prefix: str) -> Path:
    """A temp dir with a short path (unix socket paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def tail(path: Path, n: int = 60) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(lines[-n:])


class CommandError(AssertionError):
    def __init__(self, cmd, proc: subprocess.CompletedProcess):
        self.proc = proc
        super().__init__(
            f"command failed (rc={proc.returncode}): {shlex.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )


def run(
    cmd,
    *,
    timeout: float = 120,
    check: bool = True,
    input: str | None = None,
    env: dict | None = None,
    cwd=None,
) -> subprocess.CompletedProcess:
    """Run a command with a timeout; on failure raise with its output."""
    cmd = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"command timed out after {timeout}s: {shlex.join(cmd)}\n"
            f"--- stdout ---\n{(e.stdout or b'')[-4000:]!r}\n--- stderr ---\n{(e.stderr or b'')[-4000:]!r}"
        ) from None
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc)
    return proc


class _Process:
    """A long-running child process in its own process group, logging to a file."""

    name = "process"

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def _spawn(self, cmd, env=None, cwd=None) -> None:
        self._log = open(self.log_path, "ab")
        self._log.write(f"$ {shlex.join(map(str, cmd))}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        LIVE.append(self)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited early with code {self.proc.returncode}; log {self.log_path}:\n{tail(self.log_path)}"
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 15) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout)
            # Whatever is left in the group we created (workers, shims) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in LIVE:
            LIVE.remove(self)

    def logs(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- registries
