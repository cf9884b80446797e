"""The storage driver interface: the few primitives every backend (local disk, S3/R2) provides.

Registry semantics (storage/registry.py and friends) are written once on top of this and never
touch a backend directly. Keys are '/'-separated relative paths laid out by storage/paths.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol


class StorageError(Exception):
    """Base of driver errors; the registry layer turns them into OCI errors."""


class ObjectNotFound(StorageError):
    pass


class ObjectBusy(StorageError):
    """Another request holds the object's exclusive lock."""


class InvalidKey(StorageError):
    pass


class StorageFull(StorageError):
    """The backend has no space left (ENOSPC, a quota): nothing more can be written, while
    everything stored can still be read."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a stat says about one object."""

    key: str
    size: int
    modified: float  # seconds since the epoch, by the store's clock
    version: str  # changes whenever the object is written again (an ETag, or mtime and inode)


@dataclass(frozen=True)
class PendingUpload:
    """An object store's multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    started: float  # seconds since the epoch, by the store's clock


class ObjectReader(Protocol):
    """A readable byte range of a stored object. Local files also expose `fileno()` so the
    WSGI server can send them with sendfile."""

    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None: ...


class AppendWriter(ABC):
    """Appends an upload's bytes across requests, possibly in different processes.

    `state()` is a JSON-able description of what is durably written; a later request resumes
    with `driver.append_writer(key, resume=state)`. Bytes written after the last saved state are
    discarded on resume, so a request that dies half way leaves the upload where it was.
    """

    @property
    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Append `data`. It may be a view of the request's receive buffer, overwritten once
        this returns: a writer that keeps bytes for later must copy them."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Make everything written so far durable and describe it."""

    @abstractmethod
    def read_back(self) -> Iterator[bytes]:
        """The bytes written so far (used only when a client asks for an unexpected digest
        algorithm, so the running hash cannot answer)."""

    def seal(self, final_key: str) -> dict[str, Any] | None:
        """No more bytes will come, and the writer is about to be committed to `final_key`:
        make every byte durable where a writer resumed from the returned state can commit it,
        and return that state. A commit cut short (a crash, a storage error) is then finished
        by committing a writer resumed from it, in any process. None means the commit is a
        single atomic step that needs no saved state: it is simply done again from the bytes."""
        return self.state()

    @abstractmethod
    def commit(self, final_key: str) -> None:
        """Atomically make the written bytes the object at `final_key`. A writer resumed from
        `seal()`'s state finishes whatever part of the commit a previous attempt did not."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written (cancelled or failed upload)."""

    @abstractmethod
    def abandon(self) -> None:
        """A request failed half way: drop what this writer added since it was opened, and
        leave what the upload's saved state refers to untouched."""


class StorageDriver(ABC):
    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """A small object's content; ObjectNotFound if absent."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomically create or replace a small object: readers see the old or the new bytes."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size; ObjectNotFound if absent."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """The object's size, modification time and version; ObjectNotFound if absent."""

    @abstractmethod
    def walk(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under `prefix`, at any depth, in no particular order, with what a stat
        says of it. Object stores list 1,000 objects a request: no request per object."""

    @abstractmethod
    def open_range(self, key: str, start: int = 0, length: int | None = None) -> ObjectReader:
        """Stream `length` bytes (to the end if None) from `start`; ObjectNotFound if absent."""

    @abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Names directly under `prefix` (objects and sub-prefixes), unsorted; [] if none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; absent is fine."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under `prefix`; absent is fine."""

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove many objects (absent ones are fine); object stores batch the requests."""
        for key in keys:
            self.delete(key)

    def pending_uploads(self) -> Iterator[PendingUpload]:
        """The store's multipart uploads in progress under this driver's prefix (none on
        backends without them). Garbage collection aborts the ones nothing owns."""
        return iter(())

    def abort_pending(self, upload: PendingUpload) -> None:  # noqa: B027 - none to abort by default
        """Abort one of `pending_uploads()`; already gone is fine."""

    def pending_upload_ids(self, writer_state: dict[str, Any]) -> set[str]:
        """The multipart uploads an append writer's saved state owns (none by default)."""
        return set()

    @abstractmethod
    def append_writer(
        self, key: str, resume: dict[str, Any] | None = None, target: str | None = None
    ) -> AppendWriter:
        """A writer for upload bytes staged at `key`, fresh or resumed from a saved state.
        `target` is the key a fresh writer will most likely be committed to (known when the
        digest comes with the first byte): backends that cannot rename cheaply write there
        directly, invisibly until commit."""

    @abstractmethod
    def exclusive(self, key: str, wait: float = 0.0) -> AbstractContextManager[None]:
        """Hold an exclusive lock named `key` across processes and instances sharing this
        storage. If another holder has it, wait up to `wait` seconds for it to go, then raise
        ObjectBusy. A holder that dies loses the lock: at once on local disk, after a lease of
        a few seconds on object stores (see their drivers). A backend may refuse
        (ObjectNotFound) a lock whose parent prefix holds nothing."""

    def redirect_url(self, key: str, expires_in: int = 1200) -> str | None:
        """A URL a client can fetch the object from directly, bypassing the registry; None
        when the backend has none (local disk) or redirects are off."""
        return None

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError if the backend is not usable (startup and readiness)."""

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True
