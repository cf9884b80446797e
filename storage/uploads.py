"""Blob uploads whose whole state lives in storage, so any process on any instance sharing the
storage can serve an upload's next request: the bytes (through the driver's AppendWriter), the
running digest (a resumable hash, see storage/hashing.py) and who owns the session."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from errors import BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, RangeInvalid, SizeInvalid
from storage import paths
from storage.blobs import BlobInfo, BlobStore
from storage.digests import Digest
from storage.driver import AppendWriter, ObjectBusy, ObjectNotFound, StorageDriver, StorageError
from storage.hashing import HashStateError, ResumableHash

_UPLOAD_ID_RE = re.compile(r"[a-f0-9-]{36}")
STATE_VERSION = 1


@dataclass
class UploadState:
    upload_id: str
    name: str
    owner: str
    started: float
    size: int
    hash: ResumableHash
    writer: dict[str, Any] | None  # the driver's resume state; None before the first byte

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": STATE_VERSION,
                "name": self.name,
                "owner": self.owner,
                "started": self.started,
                "size": self.size,
                "hash_algorithm": self.hash.algorithm,
                "hash_state": self.hash.export(),
                "writer": self.writer,
            }
        ).encode()

    @classmethod
    def from_json(cls, upload_id: str, raw: bytes) -> UploadState:
        try:
            doc = json.loads(raw)
            if doc.get("v") != STATE_VERSION:
                raise ValueError("unknown state version")
            return cls(
                upload_id=upload_id,
                name=str(doc["name"]),
                owner=str(doc["owner"]),
                started=float(doc["started"]),
                size=int(doc["size"]),
                hash=ResumableHash.restore(doc["hash_algorithm"], doc["hash_state"]),
                writer=doc["writer"],
            )
        except (ValueError, KeyError, TypeError, HashStateError) as exc:
            raise StorageError(f"corrupt upload state {upload_id}: {exc}") from exc


class UploadService:
    def __init__(self, driver: StorageDriver, blobs: BlobStore) -> None:
        self._driver = driver
        self._blobs = blobs

    # -- session lifecycle -------------------------------------------------------------------

    def start(self, name: str, owner: str, algorithm: str = "sha256") -> UploadState:
        state = UploadState(str(uuid.uuid4()), name, owner, time.time(), 0, ResumableHash(algorithm), None)
        self._save(state)
        return state

    def status(self, name: str, upload_id: str, owner: str) -> UploadState:
        return self._load(name, upload_id, owner)

    def cancel(self, name: str, upload_id: str, owner: str) -> None:
        with self._locked(name, upload_id, owner) as state:
            writer = self._open_writer(state)
            writer.abort()  # also aborts a multipart upload in progress
            self._driver.delete_prefix(paths.upload_dir(upload_id))

    def append(
        self,
        name: str,
        upload_id: str,
        owner: str,
        body: Iterable[bytes],
        content_range: tuple[int, int] | None,
        content_length: int | None,
    ) -> UploadState:
        """A PATCH: add a chunk. The state is saved only once the whole chunk is in, so a
        request that fails half way leaves the upload exactly where it was."""
        with self._locked(name, upload_id, owner) as state:
            writer = self._open_writer(state)
            with _abandon_on_failure(writer):
                self._write_chunk(state, writer, body, content_range, content_length)
                state.writer = writer.state()
                self._save(state)
            return state

    def finish(
        self,
        name: str,
        upload_id: str,
        owner: str,
        digest: Digest,
        body: Iterable[bytes],
        content_range: tuple[int, int] | None,
        content_length: int | None,
    ) -> BlobInfo:
        """The closing PUT: take an optional last chunk, verify the digest, publish the blob."""
        with self._locked(name, upload_id, owner) as state:
            target = None
            if state.writer is None:
                # Nothing received before this request: the digest is known before the first
                # byte, so hash with its algorithm and let the backend write in place.
                state.hash = ResumableHash(digest.algorithm)
                target = paths.blob_data(digest)
            writer = self._open_writer(state, target)
            # If the last chunk fails, the saved state is untouched and the upload continues
            # from it.
            with _abandon_on_failure(writer):
                self._write_chunk(state, writer, body, content_range, content_length)
            return self._publish(state, writer, digest)

    def upload_whole(
        self, name: str, owner: str, digest: Digest, body: Iterable[bytes], content_length: int | None
    ) -> BlobInfo:
        """A monolithic POST `?digest=`: the whole blob in one request, no session kept."""
        state = UploadState(
            str(uuid.uuid4()), name, owner, time.time(), 0, ResumableHash(digest.algorithm), None
        )
        writer = self._driver.append_writer(
            paths.upload_data(state.upload_id), target=paths.blob_data(digest)
        )
        try:
            self._write_chunk(state, writer, body, None, content_length)
        except BaseException:
            writer.abort()
            self._driver.delete_prefix(paths.upload_dir(state.upload_id))
            raise
        return self._publish(state, writer, digest)

    # -- internals ---------------------------------------------------------------------------

    def _publish(self, state: UploadState, writer: AppendWriter, digest: Digest) -> BlobInfo:
        try:
            actual = self._actual_digest(state, writer, digest.algorithm)
            if actual != digest:
                writer.abort()
                raise DigestInvalid(detail={"expected": str(digest), "actual": str(actual)})
            # A failure below leaves the upload to the finally's cleanup; `abort` also ends
            # a multipart upload that never completed.
            if self._blobs.exists_anywhere(digest):
                writer.abort()  # same bytes are already stored: keep one copy
            else:
                writer.commit(paths.blob_data(digest))
            self._blobs.link(state.name, digest)
            return BlobInfo(digest, state.size)
        finally:
            # Success or digest mismatch, the session is over (distribution does the same).
            self._driver.delete_prefix(paths.upload_dir(state.upload_id))

    def _actual_digest(self, state: UploadState, writer: AppendWriter, algorithm: str) -> Digest:
        if state.hash.algorithm == algorithm:
            return Digest(algorithm, state.hash.hexdigest())
        # The client finished with another algorithm than the one hashed on the way in:
        # the only case that reads the upload back.
        rehash = ResumableHash(algorithm)
        for chunk in writer.read_back():
            rehash.update(chunk)
        return Digest(algorithm, rehash.hexdigest())

    def _write_chunk(
        self,
        state: UploadState,
        writer: AppendWriter,
        body: Iterable[bytes],
        content_range: tuple[int, int] | None,
        content_length: int | None,
    ) -> None:
        if content_range is not None:
            start, end = content_range
            if start != state.size:
                raise RangeInvalid(
                    "chunk does not start where the upload ends",
                    headers=range_headers(state),
                    detail={"expected_start": state.size, "start": start},
                )
            if content_length is not None and end - start + 1 != content_length:
                raise SizeInvalid("Content-Range does not match Content-Length")
        received = 0
        for chunk in body:
            writer.write(chunk)
            state.hash.update(chunk)
            received += len(chunk)
        if content_range is not None and received != content_range[1] - content_range[0] + 1:
            raise SizeInvalid("body length does not match Content-Range")
        state.size += received

    def _open_writer(self, state: UploadState, target: str | None = None) -> AppendWriter:
        try:
            return self._driver.append_writer(
                paths.upload_data(state.upload_id), resume=state.writer, target=target
            )
        except ObjectNotFound:
            raise BlobUploadUnknown(detail={"upload": state.upload_id}) from None

    def _load(self, name: str, upload_id: str, owner: str) -> UploadState:
        if not _UPLOAD_ID_RE.fullmatch(upload_id):
            raise BlobUploadUnknown(detail={"upload": upload_id})
        try:
            raw = self._driver.read_bytes(paths.upload_state(upload_id))
        except ObjectNotFound:
            raise BlobUploadUnknown(detail={"upload": upload_id}) from None
        state = UploadState.from_json(upload_id, raw)
        # An upload belongs to its repository and to whoever opened it; to anyone else it
        # does not exist.
        if state.name != name or state.owner != owner:
            raise BlobUploadUnknown(detail={"upload": upload_id})
        return state

    def _save(self, state: UploadState) -> None:
        self._driver.write_bytes(paths.upload_state(state.upload_id), state.to_json())

    @contextmanager
    def _locked(self, name: str, upload_id: str, owner: str) -> Iterator[UploadState]:
        """The upload's state, read under its exclusive lock: only one request writes an
        upload at a time. Unknown uploads are refused before any lock is taken."""
        self._load(name, upload_id, owner)
        try:
            lock = self._driver.exclusive(paths.upload_lock(upload_id))
            lock.__enter__()
        except ObjectBusy:
            # A second request while one is writing is out of order by definition.
            raise BlobUploadInvalid("another request is writing this upload", status=416) from None
        except ObjectNotFound:
            raise BlobUploadUnknown(detail={"upload": upload_id}) from None
        try:
            yield self._load(name, upload_id, owner)  # read again: the holder before us may have moved it
        finally:
            lock.__exit__(None, None, None)


@contextmanager
def _abandon_on_failure(writer: AppendWriter) -> Iterator[None]:
    try:
        yield
    except BaseException:
        writer.abandon()
        raise


def range_headers(state: UploadState) -> dict[str, str]:
    return {"Range": upload_range(state.size)}


def upload_range(size: int) -> str:
    # No "bytes=" prefix: the Go client parses two integers. An empty upload reports 0-0.
    return f"0-{max(size - 1, 0)}"
