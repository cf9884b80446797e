"""Local-disk driver: one directory tree, atomic replace by rename, uploads appended in place."""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from storage.driver import (
    AppendWriter,
    InvalidKey,
    ObjectBusy,
    ObjectInfo,
    ObjectNotFound,
    StorageDriver,
    StorageError,
    StorageFull,
)

T = TypeVar("T")
TMP_PREFIX = ".tmp-"
READ_BLOCK = 1024 * 1024
_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def write_errors(what: str) -> Iterator[None]:
    """A write's OSError as a storage error: a full disk (or quota) is StorageFull, which the API
    answers with 507 and logs without a traceback; anything else is a plain StorageError."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError):
        raise  # the callers' own handling (a missing parent, a lock without its upload)
    except OSError as exc:
        if exc.errno in _FULL:
            raise StorageFull(f"no space left on the device while writing {what}") from None
        raise StorageError(f"cannot write {what}: {exc.strerror or exc}") from exc


@contextmanager
def read_errors(key: str) -> Iterator[None]:
    """A missing object is ObjectNotFound; any other OSError (EIO, EACCES, a disk gone) is a
    StorageError, which the API answers with 503 rather than a 500 and a traceback."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise ObjectNotFound(key) from None
    except OSError as exc:
        raise StorageError(f"cannot read {key}: {exc.strerror or exc}") from exc


PRUNE_RETRIES = 10


def in_directory(directory: Path, action) -> T:
    """Run `action` (which creates something in `directory`) after making the directory, and
    return what it returns. Another request may prune it, or a parent of it, as empty in
    between (deletes remove the directories they leave empty, and garbage collection deletes
    many): making it again and retrying is all it takes."""
    for attempt in range(PRUNE_RETRIES):
        try:
            directory.mkdir(parents=True, exist_ok=True)  # a parent it makes may go at once too
            return action()
        except FileNotFoundError:
            if attempt == PRUNE_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


class RangeFile:
    """A byte range of an open file. `fileno()` lets gunicorn use sendfile: it starts at the
    file's current offset and sends at most the response's Content-Length. Under gevent,
    `socket.sendfile` falls back to seek() and read(), which stay inside the range too."""

    def __init__(self, fh, start: int, length: int) -> None:
        self._fh = fh
        self._end = start + length
        fh.seek(start)

    def read(self, size: int = -1) -> bytes:
        remaining = self._end - self._fh.tell()
        if remaining <= 0:
            return b""
        if size is None or size < 0 or size > remaining:
            size = remaining
        return self._fh.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        return self._fh.fileno()

    def close(self) -> None:
        self._fh.close()


class FilesystemAppendWriter(AppendWriter):
    def __init__(self, driver: FilesystemDriver, key: str, resume: dict[str, Any] | None) -> None:
        self._driver = driver
        self._path = driver.path(key)
        self._key = key
        self._fresh = resume is None
        if resume is None:
            with write_errors(key):
                self._fh = in_directory(self._path.parent, lambda: open(self._path, "wb", buffering=0))
            self._size = 0
        else:
            size = resume.get("size")
            if not isinstance(size, int) or size < 0:
                raise StorageError("corrupt upload writer state")
            try:
                self._fh = open(self._path, "r+b", buffering=0)
            except FileNotFoundError:
                raise ObjectNotFound(key) from None
            # Drop whatever a request that died mid-way appended after the last saved state.
            with write_errors(key):
                self._fh.truncate(size)
            self._fh.seek(size)
            self._size = size
        self._saved_size = self._size

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | memoryview) -> None:
        # Unbuffered: the bytes go straight from the request's buffer to the file, and a failed
        # write leaves nothing in a Python buffer that a later close() would still write out.
        view = memoryview(data)
        with write_errors(self._key):
            while view:
                view = view[self._fh.write(view) :]
        self._size += len(data)

    def state(self) -> dict[str, Any]:
        return {"size": self._size}

    def read_back(self) -> Iterator[bytes]:
        with open(self._path, "rb") as fh:
            remaining = self._size
            while remaining > 0:
                chunk = fh.read(min(READ_BLOCK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    def commit(self, final_key: str) -> None:
        with write_errors(final_key):
            self._fh.truncate(self._size)
            self._fh.close()
            target = self._driver.path(final_key)
            in_directory(target.parent, lambda: os.replace(self._path, target))

    def abort(self) -> None:
        self._fh.close()
        self._path.unlink(missing_ok=True)

    def abandon(self) -> None:
        # Back to the saved state at once: the failed request's tail would otherwise hold its
        # disk space until the upload continues (and a full disk would stay full). A fresh file
        # has no saved state to keep.
        if self._fresh:
            self._fh.close()
            self._path.unlink(missing_ok=True)
            return
        with suppress(OSError):  # if this fails, the next writer resumed from the state truncates
            os.ftruncate(self._fh.fileno(), self._saved_size)
        self._fh.close()


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    # A write replaces the file (a new inode) or changes its time: either changes the version.
    return ObjectInfo(key, st.st_size, st.st_mtime, f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}")


class FilesystemDriver(StorageDriver):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidKey(key)
        return self.root.joinpath(*parts)

    def read_bytes(self, key: str) -> bytes:
        with read_errors(key):
            return self.path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        tmp = target.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}"

        def write() -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)

        try:
            with write_errors(key):
                in_directory(target.parent, write)
                os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def size(self, key: str) -> int:
        with read_errors(key):
            st = self.path(key).stat()
        if not stat.S_ISREG(st.st_mode):  # a prefix (directory) is not an object
            raise ObjectNotFound(key)
        return st.st_size

    def stat(self, key: str) -> ObjectInfo:
        with read_errors(key):
            st = self.path(key).stat()
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(key)
        return _info(key, st)

    def walk(self, prefix: str) -> Iterator[ObjectInfo]:
        top = self.path(prefix)

        # os.walk ignores errors by default: a failing directory must not look empty to the
        # garbage collector, which would then think what it holds is unreferenced.
        def fail(exc: OSError) -> None:
            if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                raise StorageError(f"cannot list {prefix}: {exc.strerror or exc}") from exc

        for directory, _dirs, files in os.walk(top, onerror=fail):
            base = Path(directory).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                key = f"{base}/{name}"
                try:
                    st = os.stat(os.path.join(directory, name))
                except FileNotFoundError:
                    continue  # deleted while listing
                except OSError as exc:
                    raise StorageError(f"cannot stat {key}: {exc.strerror or exc}") from exc
                yield _info(key, st)

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> RangeFile:
        with read_errors(key):
            fh = open(self.path(key), "rb")
        size = os.fstat(fh.fileno()).st_size
        start = min(start, size)
        available = size - start
        return RangeFile(fh, start, available if length is None else min(length, available))

    def list_children(self, prefix: str) -> list[str]:
        try:
            with read_errors(prefix):
                names = os.listdir(self.path(prefix))
        except ObjectNotFound:
            return []
        return [n for n in names if not n.startswith(TMP_PREFIX)]

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> None:
        path = self.path(prefix)
        shutil.rmtree(path, ignore_errors=True)
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        # Remove directories left empty so listings (tags, catalog) stay truthful.
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def append_writer(
        self, key: str, resume: dict[str, Any] | None = None, target: str | None = None
    ) -> FilesystemAppendWriter:
        # A rename is cheap here: always stage at `key`, whatever the target.
        return FilesystemAppendWriter(self, key, resume)

    @contextmanager
    def exclusive(self, key: str, wait: float = 0.0) -> Iterator[None]:
        path = self.path(key)
        try:
            with write_errors(key):
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            # Locks live beside what they protect: no parent, nothing to lock.
            raise ObjectNotFound(key) from None
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise ObjectBusy(key) from None
                # Poll: a blocking flock would stall every request of a gevent worker.
                time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
            yield
        finally:
            os.close(fd)

    def check(self) -> None:
        probe = self.root / f"{TMP_PREFIX}probe-{secrets.token_hex(4)}"
        try:
            with write_errors(f"the data directory {self.root}"):
                self.root.mkdir(parents=True, exist_ok=True)
                probe.write_bytes(b"ok")
        except FileNotFoundError as exc:
            raise StorageError(f"data directory {self.root} is not usable: {exc}") from exc
        finally:
            # Also when the write failed half way (a full disk creates the file, then fails).
            with suppress(FileNotFoundError, NotADirectoryError):
                probe.unlink()
