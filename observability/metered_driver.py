"""Storage operation metrics: a wrapper around any backend that counts and times every
operation by its outcome, installed by create_app. The backends stay as they are (as in
distribution, one wrapper does this for every driver).

It is a proxy, registered as a StorageDriver but not inheriting from it: every attribute it
does not meter, a method the interface gains later or a backend's own, reaches the backend as
it is, never a base-class default that would bypass the backend's override. Readers returned
by open_range are not wrapped: the time to open (for S3 the GET up to its first bytes) is
measured, and downloads from local disk keep their file (sendfile)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from time import perf_counter
from typing import Any, TypeVar

from observability import metrics
from storage.driver import (
    AppendWriter,
    InvalidKey,
    ObjectBusy,
    ObjectInfo,
    ObjectNotFound,
    ObjectReader,
    PendingUpload,
    StorageDriver,
    StorageFull,
)

T = TypeVar("T")


class _Meter:
    def call(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        started = perf_counter()
        outcome = "error"
        try:
            result = fn(*args)
            outcome = "ok"
            return result
        except ObjectNotFound:
            outcome = "not_found"
            raise
        except ObjectBusy:
            outcome = "busy"
            raise
        except StorageFull:
            outcome = "full"
            raise
        except InvalidKey:
            outcome = "invalid_key"
            raise
        finally:
            metrics.STORAGE_OPERATIONS.observe((operation, outcome), perf_counter() - started)


class MeteredDriver:
    def __init__(self, inner: StorageDriver) -> None:
        self.inner = inner
        self._meter = _Meter()

    def __getattr__(self, name: str) -> Any:
        # Anything backend-specific (tests and tools reach for it) is the backend's.
        return getattr(self.inner, name)

    def read_bytes(self, key: str) -> bytes:
        return self._meter.call("read_bytes", self.inner.read_bytes, key)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._meter.call("write_bytes", self.inner.write_bytes, key, data)

    def size(self, key: str) -> int:
        return self._meter.call("size", self.inner.size, key)

    def exists(self, key: str) -> bool:
        return self._meter.call("exists", self.inner.exists, key)

    def stat(self, key: str) -> ObjectInfo:
        return self._meter.call("stat", self.inner.stat, key)

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> ObjectReader:
        return self._meter.call("open_range", self.inner.open_range, key, start, length)

    def list_children(self, prefix: str) -> list[str]:
        return self._meter.call("list_children", self.inner.list_children, prefix)

    def delete(self, key: str) -> None:
        self._meter.call("delete", self.inner.delete, key)

    def delete_prefix(self, prefix: str) -> None:
        self._meter.call("delete_prefix", self.inner.delete_prefix, prefix)

    def delete_many(self, keys: Iterable[str]) -> None:
        # Garbage collection's batches (DeleteObjects on S3): one operation per call. Listings
        # (walk, pending_uploads) are generators and reach the backend unmetered.
        self._meter.call("delete_many", self.inner.delete_many, keys)

    def abort_pending(self, upload: PendingUpload) -> None:
        self._meter.call("abort_pending", self.inner.abort_pending, upload)

    def append_writer(
        self, key: str, resume: dict[str, Any] | None = None, target: str | None = None
    ) -> AppendWriter:
        writer = self._meter.call("writer_open", self.inner.append_writer, key, resume, target)
        return MeteredWriter(writer, self._meter)

    @contextmanager
    def exclusive(self, key: str, wait: float = 0.0) -> Iterator[None]:
        # Timed until the lock is held (waiting for another holder included); "busy" when the
        # wait ran out.
        with ExitStack() as stack:
            lock: AbstractContextManager[None] = self.inner.exclusive(key, wait)
            self._meter.call("lock", stack.enter_context, lock)
            yield

    def redirect_url(self, key: str, expires_in: int = 1200) -> str | None:
        return self.inner.redirect_url(key, expires_in)  # signed locally: nothing to measure

    def check(self) -> None:
        self._meter.call("check", self.inner.check)


class MeteredWriter:
    """An upload's writer: each write (a part upload on S3, once a part is full), save,
    seal, commit, abort and abandon is an operation. A proxy too."""

    def __init__(self, inner: AppendWriter, meter: _Meter) -> None:
        self.inner = inner
        self._meter = meter

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def size(self) -> int:
        return self.inner.size

    def write(self, data: bytes | memoryview) -> None:
        self._meter.call("writer_write", self.inner.write, data)

    def state(self) -> dict[str, Any]:
        return self._meter.call("writer_state", self.inner.state)

    def read_back(self) -> Iterator[bytes]:
        return self.inner.read_back()

    def seal(self, final_key: str) -> dict[str, Any] | None:
        return self._meter.call("writer_seal", self.inner.seal, final_key)

    def commit(self, final_key: str) -> None:
        self._meter.call("writer_commit", self.inner.commit, final_key)

    def abort(self) -> None:
        self._meter.call("writer_abort", self.inner.abort)

    def abandon(self) -> None:
        self._meter.call("writer_abandon", self.inner.abandon)


# isinstance() and type checks see them as what they stand for.
StorageDriver.register(MeteredDriver)
AppendWriter.register(MeteredWriter)
