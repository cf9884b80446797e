"""Upstream Bearer tokens shared by the worker processes of one machine and OS user: a small
file per upstream account and scope in a private directory (REGISTRY_UPSTREAM_TOKEN_DIR), so a
cold instance of N workers asks a token realm once instead of N times, and a restart does not
ask again while the tokens last.

- Only a token and its expiry are written, never a password. The directory is 0700 and the
  files 0600, owned by this user: checked, not assumed (the default is under the shared /tmp),
  and a directory or file that is anything else is not used. Sharing among processes of one OS
  user crosses no boundary: any of them can read the others' environment, passwords included.
- Files are replaced atomically (a temporary file renamed over the old one): a reader sees a
  whole token or none.
- One negotiation at a time per file across processes: an flock on a lock file beside it,
  polled (a blocking flock would stall every request of a gevent worker), for a bounded time;
  after that a process asks the realm itself rather than wait longer.
- A directory that cannot be used (a read-only filesystem, another user's directory) is logged
  once and tokens stay in each process's memory: more token requests, nothing wrong.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("berth.upstream")

MAX_FILE_BYTES = 64 * 1024
_POLL = 0.05


class TokenFiles:
    def __init__(self, directory: Path, lock_wait: float) -> None:
        self.directory = directory
        self._lock_wait = lock_wait
        self._usable: bool | None = None  # decided on first use
        self._guard = threading.Lock()

    # -- the directory -----------------------------------------------------------------------

    def _ready(self) -> bool:
        if self._usable is None:
            with self._guard:
                if self._usable is None:
                    self._usable = self._prepare()
        return self._usable

    def _prepare(self) -> bool:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self.directory)
        except OSError as exc:
            log.warning(
                "upstream tokens stay in each worker's memory: %s is not usable (%s)", self.directory, exc
            )
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            log.warning(
                "upstream tokens stay in each worker's memory: %s must be a directory of this user "
                "with permissions 0700 (it is %s, owner %d)",
                self.directory, oct(stat.S_IMODE(st.st_mode)), st.st_uid,
            )  # fmt: skip
            return False
        return True

    def _path(self, key: str, suffix: str) -> Path:
        return self.directory / f"{key}.{suffix}"

    # -- tokens ------------------------------------------------------------------------------

    def read(self, key: str) -> tuple[str, float] | None:
        """(token, expiry as a Unix time) from the file for `key`, if there is a usable one."""
        if not self._ready():
            return None
        try:
            fd = os.open(self._path(key, "json"), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > MAX_FILE_BYTES:
                return None
            doc = json.loads(os.read(fd, MAX_FILE_BYTES))
            token, expires = doc["token"], float(doc["expires"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
        finally:
            os.close(fd)
        return (token, expires) if isinstance(token, str) and token else None

    def write(self, key: str, token: str, expires: float) -> None:
        if not self._ready():
            return
        data = json.dumps({"token": token, "expires": expires}).encode()
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")  # 0600
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self._path(key, "json"))
        except OSError as exc:
            log.warning("could not share an upstream token in %s: %s", self.directory, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def remove(self, key: str, token: str) -> None:
        """Forget `token` (the upstream refused it), unless another process already replaced it."""
        found = self.read(key)
        if found is not None and found[0] == token:
            with contextlib.suppress(OSError):
                os.unlink(self._path(key, "json"))

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Held while this process negotiates a token for `key`. Gives up waiting after
        `lock_wait` seconds (the holder may hang on a slow realm) and goes on without it."""
        fd = None
        if self._ready():
            try:
                fd = os.open(self._path(key, "lock"), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
            except OSError:
                fd = None
        try:
            if fd is not None:
                deadline = time.monotonic() + self._lock_wait
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                            break
                    time.sleep(_POLL)
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock
