"""A blob pulled through: streamed to the client while it is hashed (and, unless the bytes are
already stored, written to a fresh staging object), within a size limit and a deadline.

- The last chunk is held back until the bytes hash to the digest asked for, so a client never
  receives a complete body whose digest is wrong.
- Only a verified copy is committed, and only verified bytes link the digest into the
  repository: when the same digest is already stored for another repository, the upstream must
  still send those bytes (the relay hashes them without storing a second copy) before the
  stored copy is linked here. An upstream's word (a HEAD, a header) never opens a blob.
- The size limit is the upstream's Content-Length (the body must be exactly that long), or
  REGISTRY_UPSTREAM_MAX_BLOB_BYTES without one. The transfer must keep up an average of
  REGISTRY_UPSTREAM_MIN_RATE after READ_TIMEOUT seconds of grace, counting the chunk being read
  (so a steady transfer at that rate always passes): received + CHUNK bytes within READ_TIMEOUT
  + (received + CHUNK) / MIN_RATE seconds of the headers, and the whole body within READ_TIMEOUT
  + limit / MIN_RATE. Per-read timeouts alone let a body trickle forever; a deadline from the
  size alone would give a body of unknown size (limited by MAX_BLOB_BYTES) hours.
- Whatever goes wrong (bad digest, too long, too slow, upstream broke off), the copy is
  discarded, the reason logged once, and the client's connection cut (RelayAborted).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator

import urllib3
from urllib3.exceptions import HTTPError

from storage import paths
from storage.digests import Digest
from storage.driver import AppendWriter
from storage.registry import Registry
from upstream.bodies import Deadline
from upstream.config import UpstreamSettings

log = logging.getLogger("berth.upstream")

CHUNK = 1024 * 1024  # memory per streamed blob: one chunk in flight and one held back


class RelayAborted(ConnectionResetError):
    """A blob relay stopped half way; the client's connection must be cut so it never takes a
    short body for a whole one. A ConnectionResetError (ECONNRESET) because that is what it is
    for the client, and what gunicorn handles as a connection that ended: it closes the socket
    without another traceback (the relay has logged the reason already)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ECONNRESET, message)


class UpstreamBlobCorrupt(RelayAborted):
    """An upstream sent bytes that do not hash to the digest asked for."""


class BlobRelay:
    """The response body of a blob pulled through: an iterable of chunks. The WSGI server calls
    close() when the response ends, also when the client went away, which discards an
    unfinished copy."""

    def __init__(
        self,
        registry: Registry,
        source: str,
        response: urllib3.BaseHTTPResponse,
        name: str,
        digest: Digest,
        size: int | None,
        settings: UpstreamSettings,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._registry = registry
        self._source = source
        self._response = response
        self._name = name
        self._digest = digest
        self._size = size  # the upstream's Content-Length, if it sent one
        self._limit = size if size is not None else settings.max_blob_bytes
        self._settings = settings
        self._on_close = on_close  # gives back the upstream request slot (pacing.py)
        self._chunks = self._relay()

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        try:
            self._chunks.close()  # runs the generator's cleanup if it started
            self._response.close()  # and drops the upstream connection if it never did
        finally:
            if self._on_close is not None:
                self._on_close()

    def _relay(self) -> Iterator[bytes]:
        driver = self._registry.driver
        upload_id = str(uuid.uuid4())
        # Already stored for another repository: hash what the upstream sends, keep nothing.
        stored = self._registry.blobs.exists_anywhere(self._digest)
        writer: AppendWriter | None = None if stored else driver.append_writer(paths.upload_data(upload_id))
        hasher = hashlib.new(self._digest.algorithm)
        deadline = Deadline(self._response, self._allowed(0))
        received = 0
        finished = False
        try:
            held: bytes | None = None
            try:
                for chunk in self._response.stream(CHUNK, decode_content=False):
                    received += len(chunk)
                    if received > self._limit:
                        self._abort(f"sent more than {self._limit} bytes", received)
                    if deadline.passed():
                        self._abort(self._too_slow(deadline), received)
                    deadline.extend_to(self._allowed(received))
                    hasher.update(chunk)
                    if writer is not None:
                        writer.write(chunk)
                    if held is not None:
                        yield held
                    held = chunk
            except HTTPError as exc:
                self._abort(self._too_slow(deadline) if deadline.expired else f"broke off: {exc}", received)
            deadline.stop()  # before the connection may be reused
            self._response.release_conn()
            self._verify(hasher, received)
            if writer is not None and not self._registry.blobs.exists_anywhere(self._digest):
                writer.commit(paths.blob_data(self._digest))
            elif writer is not None:
                writer.abort()  # a concurrent pull committed the same verified bytes first
            finished = True
            self._link(received)
            if held is not None:
                yield held
        finally:
            deadline.stop()
            if not finished:
                self._response.close()
                if writer is not None:
                    writer.abort()
            if writer is not None:
                driver.delete_prefix(paths.upload_dir(upload_id))

    def _allowed(self, received: int) -> float:
        """Seconds the transfer may have taken once `received` bytes are in, the chunk being
        read included."""
        return self._settings.body_seconds(min(self._limit, received + CHUNK))

    def _too_slow(self, deadline: Deadline) -> str:
        return f"was slower than {self._settings.min_rate} bytes/s ({deadline.elapsed():.1f} s)"

    def _verify(self, hasher, received: int) -> None:
        actual = Digest(self._digest.algorithm, hasher.hexdigest())
        if self._size is not None and received != self._size:
            self._abort(f"sent {received} bytes, not its Content-Length {self._size}", received)
        if actual != self._digest:
            log.error(
                "upstream %s sent blob %s@%s whose %d bytes hash to %s: discarded",
                self._source, self._name, self._digest, received, actual,
            )  # fmt: skip
            raise UpstreamBlobCorrupt(f"{self._source}: blob {self._digest} failed verification")

    def _link(self, received: int) -> None:
        if not self._registry.blobs.mount_any(self._name, self._digest):
            # Stored when the relay began and gone since (deleted under it), or being garbage
            # collected: the client still gets its verified bytes, but nothing is linked.
            log.warning(
                "pulled blob %s@%s vanished or is being garbage collected: not kept", self._name, self._digest
            )
            return
        log.info("pulled blob %s@%s (%d bytes) from %s", self._name, self._digest, received, self._source)

    def _abort(self, reason: str, received: int) -> None:
        log.warning(
            "upstream %s: blob %s@%s %s after %d bytes: discarded, client connection cut",
            self._source, self._name, self._digest, reason, received,
        )  # fmt: skip
        raise RelayAborted(f"{self._source}: blob {self._digest} {reason}")
