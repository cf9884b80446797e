"""Blob uploads whose whole state lives in storage, so any process on any instance sharing the
storage can serve an upload's next request: the bytes (through the driver's AppendWriter), the
running digest (a resumable hash, see storage/hashing.py) and who owns the session.

Finishing is resumable. Once the closing PUT has every byte and the digest checks, the writer is
sealed and the session saved as publishing (storage/upload_state.py) before anything becomes
visible; then the blob is committed, linked, and the session ends. Every step can be done again:
a retried PUT of a publishing session (after a crash, a kill or a storage error at any step)
finishes what is left, whether or not it resends its last chunk. Only a digest mismatch or a
cancel ends a session without publishing it."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

from errors import BlobUnknown, BlobUploadUnknown, DigestInvalid, RangeInvalid, SizeInvalid, Unavailable
from storage import paths
from storage.blobs import BlobInfo, BlobStore
from storage.digests import Digest
from storage.driver import AppendWriter, ObjectBusy, ObjectNotFound, StorageDriver, StorageError
from storage.hashing import ResumableHash
from storage.tombstones import BeingCollected, Section
from storage.upload_state import Publishing, UploadState, copy_hash

__all__ = ["LOCK_WAIT", "UploadService", "UploadState", "range_headers", "upload_range"]

log = logging.getLogger("berth.uploads")

_UPLOAD_ID_RE = re.compile(r"[a-f0-9-]{36}")
# How long a request waits for another one writing the same upload before answering 503. Longer
# than an S3 lease (storage/s3_lease.py), so a client's retry after a crash never sees the dead
# request's lock.
LOCK_WAIT = 15.0


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
            try:
                writer = self._open_writer(state)
            except BlobUploadUnknown:
                writer = None  # its bytes already went to their final key
            if writer is not None:
                writer.abort()  # also aborts multipart uploads in progress
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
            if state.publishing is not None:
                raise RangeInvalid(
                    "the upload has all its bytes: only its closing PUT may be sent again",
                    headers=range_headers(state),
                )
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
        with ExitStack() as stack:
            try:
                state = stack.enter_context(self._locked(name, upload_id, owner))
            except BlobUploadUnknown as unknown:
                return self._finished_before(name, digest, body, unknown)
            if state.publishing is not None:
                self._check_retry(state, digest, body, content_range, content_length)
                return self._publish(state, digest, None, state.publishing.verified)
            target = None
            if state.writer is None:
                # Nothing received before this request: the digest is known before the first
                # byte, so hash with its algorithm and let the backend write in place.
                state.hash = ResumableHash(digest.algorithm)
                target = paths.blob_data(digest)
            writer = self._open_writer(state, target)
            before = (state.size, copy_hash(state.hash))
            # Until the publishing state is saved, a failure leaves the saved state untouched
            # and the upload continues from it.
            with _abandon_on_failure(writer):
                self._write_chunk(state, writer, body, content_range, content_length)
            verified = state.hash.algorithm == digest.algorithm
            if verified:
                # A mismatch aborts the writer and ends the session: nothing left to abandon.
                self._verify(state, writer, digest, Digest(digest.algorithm, state.hash.hexdigest()))
            # From here on this request may create a link: garbage collection must see it, or it
            # must see the collection (storage/tombstones.py).
            section = self._blobs.section()
            with _abandon_on_failure(writer):
                stored = verified and self._blobs.exists_anywhere(digest)
                if stored:
                    # Saved first, so a crash while dropping our copy leaves a session whose
                    # retry links the stored one (the writer may be half gone by then).
                    state.publishing = Publishing(digest, verified, *before, sealed=False)
                    self._save(state)
                else:
                    sealed = writer.seal(paths.blob_data(digest))
                    if sealed is not None:
                        state.writer = sealed
                        state.publishing = Publishing(digest, verified, *before)
                        self._save(state)
            if stored:
                return self._keep_stored_copy(state, digest, writer, section)
            return self._publish(state, digest, writer, verified, section)

    def upload_whole(
        self, name: str, owner: str, digest: Digest, body: Iterable[bytes], content_length: int | None
    ) -> BlobInfo:
        """A monolithic POST `?digest=`: the whole blob in one request, no session kept. Any
        failure discards everything; the client sends the blob again."""
        state = UploadState(
            str(uuid.uuid4()), name, owner, time.time(), 0, ResumableHash(digest.algorithm), None
        )
        final = paths.blob_data(digest)
        writer = self._driver.append_writer(paths.upload_data(state.upload_id), target=final)
        try:
            self._write_chunk(state, writer, body, None, content_length)
            actual = Digest(digest.algorithm, state.hash.hexdigest())
            if actual != digest:
                raise DigestInvalid(detail={"expected": str(digest), "actual": str(actual)})
            section = self._blobs.section()
            if self._blobs.exists_anywhere(digest):
                writer.abort()  # same bytes are already stored: keep one copy
            else:
                self._refuse_if_doomed(digest, section)
                writer.commit(final)
            self._blobs.link(name, digest, section)
        except BaseException:
            _quietly(writer.abort, "abort a failed monolithic upload")
            raise
        finally:
            _quietly(lambda: self._driver.delete_prefix(paths.upload_dir(state.upload_id)), "clean up")
        return BlobInfo(digest, state.size)

    # -- finishing ---------------------------------------------------------------------------

    def _publish(
        self,
        state: UploadState,
        digest: Digest,
        writer: AppendWriter | None,
        verified: bool,
        section: Section | None = None,
    ) -> BlobInfo:
        """Commit, link and end a session whose bytes are all in (sealed). `writer` is None for
        a retried PUT: whatever an earlier attempt did is found in storage and not redone."""
        section = section or self._blobs.section()
        if writer is None:
            if verified and self._blobs.exists_anywhere(digest):
                return self._keep_stored_copy(state, digest, self._open_writer_if_any(state), section)
            if state.publishing is not None and not state.publishing.sealed:
                # The stored copy it was to share is gone, and our bytes were never sealed.
                stale = self._open_writer_if_any(state)
                if stale is not None:
                    stale.abort()
                self._end(state)
                raise BlobUploadUnknown(detail={"upload": state.upload_id})
            writer = self._open_writer(state)
        if not verified:
            # The client finished with another algorithm than the one hashed on the way in:
            # the only case that reads the upload back.
            rehash = ResumableHash(digest.algorithm)
            for chunk in writer.read_back():
                rehash.update(chunk)
            self._verify(state, writer, digest, Digest(digest.algorithm, rehash.hexdigest()))
            if state.publishing is not None:
                # Saved, so a retry after the commit below finds the blob instead of reading
                # back a staging object the commit consumed.
                state.publishing.verified = True
                self._save(state)
            if self._blobs.exists_anywhere(digest):
                return self._keep_stored_copy(state, digest, writer, section)
        # Data a collection is deleting is not replaced under it (the deletion would take our
        # copy): the session is kept, sealed, and the client's retry publishes it afterwards.
        self._refuse_if_doomed(digest, section)
        writer.commit(paths.blob_data(digest))
        self._blobs.link(state.name, digest, section)
        self._end(state)
        return BlobInfo(digest, state.size)

    def _refuse_if_doomed(self, digest: Digest, section: Section) -> None:
        if section.collecting and self._blobs.tombstones.blob_doomed(digest):
            raise BeingCollected(detail={"digest": str(digest)})

    def _keep_stored_copy(
        self, state: UploadState, digest: Digest, writer: AppendWriter | None, section: Section
    ) -> BlobInfo:
        """The same bytes are already stored: link them and drop ours. Linking first, so a crash
        in between leaves a session whose retry does the same. If a collection is deleting the
        stored copy, ours is kept for the client's retry to publish instead."""
        try:
            self._blobs.link(state.name, digest, section)
        except BeingCollected:
            if writer is not None and state.publishing is not None and not state.publishing.sealed:
                self._keep_for_retry(state, digest, writer)
            raise
        if writer is not None:
            writer.abort()
        self._end(state)
        return BlobInfo(digest, state.size)

    def _keep_for_retry(self, state: UploadState, digest: Digest, writer: AppendWriter) -> None:
        """Seal the bytes this request still holds, so the retry of a closing PUT refused during a
        collection publishes them (the stored copy it meant to share may be gone by then)."""
        pub = state.publishing
        assert pub is not None
        with _abandon_on_failure(writer):
            sealed = writer.seal(paths.blob_data(digest))
        if sealed is not None:
            state.writer, pub.sealed = sealed, True
        else:
            # Nothing durable to finish from: the session takes bytes again from before the last
            # chunk, which the retry sends again.
            writer.abandon()
            state.size, state.hash, state.publishing = pub.size_before, pub.hash_before, None
        self._save(state)

    def _verify(self, state: UploadState, writer: AppendWriter, digest: Digest, actual: Digest) -> None:
        if actual != digest:
            # The session is over (distribution does the same): nothing becomes visible.
            writer.abort()
            self._end(state)
            raise DigestInvalid(detail={"expected": str(digest), "actual": str(actual)})

    def _check_retry(
        self,
        state: UploadState,
        digest: Digest,
        body: Iterable[bytes],
        content_range: tuple[int, int] | None,
        content_length: int | None,
    ) -> None:
        """A closing PUT of a session an earlier PUT sealed: it may resend the last chunk (its
        bytes must then hash to the same state; they are not written again) or send nothing.
        A retry that does not match is refused and the sealed session kept for a good one."""
        pub = state.publishing
        assert pub is not None
        if digest != pub.digest:
            raise DigestInvalid(
                "the upload was closed with another digest",
                detail={"expected": str(pub.digest), "digest": str(digest)},
            )
        if content_range is not None and content_range[0] != pub.size_before:
            raise RangeInvalid(
                "chunk does not start where the closing chunk started",
                headers=range_headers(state),
                detail={"expected_start": pub.size_before, "start": content_range[0]},
            )
        rehash, received = copy_hash(pub.hash_before), 0
        for chunk in body:
            rehash.update(chunk)
            received += len(chunk)
        if content_range is not None and received != content_range[1] - content_range[0] + 1:
            raise SizeInvalid("body length does not match Content-Range")
        if received and (
            pub.size_before + received != state.size or rehash.hexdigest() != state.hash.hexdigest()
        ):
            raise DigestInvalid("the resent chunk differs from the one received before")

    def _finished_before(
        self, name: str, digest: Digest, body: Iterable[bytes], unknown: BlobUploadUnknown
    ) -> BlobInfo:
        """A closing PUT of an unknown session. If its blob is linked in the repository, this is
        most likely a retry of a PUT that succeeded but whose answer was lost: say so (201).
        Nothing is revealed: whoever may push here can learn as much with a manifest PUT."""
        try:
            info = self._blobs.stat(name, digest)
        except BlobUnknown:
            raise unknown from None
        for _chunk in body:
            pass  # the resent bytes are not needed
        return info

    def _end(self, state: UploadState) -> None:
        """The session is over. Once the blob is published, failing to delete the session is
        no error for the client: a retry finds the blob, and the purge finds the leftovers."""
        _quietly(lambda: self._driver.delete_prefix(paths.upload_dir(state.upload_id)), "end the session")

    # -- internals ---------------------------------------------------------------------------

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

    def _open_writer_if_any(self, state: UploadState) -> AppendWriter | None:
        try:
            return self._open_writer(state)
        except BlobUploadUnknown:
            return None  # e.g. renamed into place already: nothing left to abort

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
        upload at a time. Unknown uploads are refused before any lock is taken. A request
        finding the upload busy waits for it (a client's retry may overtake the server's end
        of the request it gave up on, and a crashed holder's lock takes a while to lapse)."""
        self._load(name, upload_id, owner)
        try:
            lock = self._driver.exclusive(paths.upload_lock(upload_id), wait=LOCK_WAIT)
            lock.__enter__()
        except ObjectBusy:
            raise Unavailable(
                "another request is writing this upload",
                headers={"Retry-After": "5"},
                detail={"upload": upload_id},
            ) from None
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


def _quietly(action, what: str) -> None:
    try:
        action()
    except StorageError as exc:
        log.warning("could not %s: %s", what, exc)


def range_headers(state: UploadState) -> dict[str, str]:
    return {"Range": upload_range(state.size)}


def upload_range(size: int) -> str:
    # No "bytes=" prefix: the Go client parses two integers. An empty upload reports 0-0.
    return f"0-{max(size - 1, 0)}"
