"""`/v2/<name>/blobs/<digest>`: read (whole or by Range) and delete blobs."""

from __future__ import annotations

from collections.abc import Iterator

import falcon

from errors import BlobUnknown, Unsupported
from observability import metrics
from resources.http import byte_range
from serving.errors import IncompleteResponse
from storage.blobs import BlobInfo
from storage.digests import Digest, validate_name
from storage.driver import StorageError
from storage.registry import Registry
from upstream.pullthrough import PullThrough


class ReaderChunks:
    """A storage reader as a WSGI response body of exactly `length` bytes, in 1 MiB pieces; the
    server closes it.

    The responder reads the first piece (`read_first`), so a storage failure before any byte
    goes out is an OCI error (503 with Retry-After, resources/errors.py) rather than the
    server's own error page. Once the headers are out, a reader that fails or ends early can
    only cut the response short: IncompleteResponse makes the server close the connection at
    once, with one warning line, instead of leaving the client waiting for bytes that will
    never come."""

    def __init__(self, reader, length: int, chunk_size: int = 1024 * 1024) -> None:
        self._reader = reader
        self._length = length
        self._chunk_size = chunk_size
        self._first = b""

    def read_first(self) -> None:
        try:
            self._first = self._read(0)
        except IncompleteResponse as exc:  # nothing sent yet: still a storage error to answer
            self._reader.close()
            raise StorageError(str(exc)) from None
        except BaseException:
            self._reader.close()
            raise

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        if self._first:
            first, self._first = self._first, b""
            sent = len(first)
            yield first
        while sent < self._length:
            try:
                chunk = self._read(sent)
            except (StorageError, OSError) as exc:
                raise IncompleteResponse(
                    f"storage failed after {sent} of {self._length} bytes: {exc!r}"
                ) from None
            sent += len(chunk)
            yield chunk

    def _read(self, sent: int) -> bytes:
        chunk = self._reader.read(min(self._chunk_size, self._length - sent))
        if not chunk and sent < self._length:
            raise IncompleteResponse(f"storage returned {sent} of {self._length} bytes")
        return chunk

    def close(self) -> None:
        self._reader.close()


def response_body(reader, length: int):
    """How a stored blob reaches the server. A local file (fileno()) goes through
    wsgi.file_wrapper, so the worker sends it in large blocks straight from the file (and
    closes the connection if the file turns out shorter); anything else is iterated in large
    pieces (the wrapper would read 8 KiB at a time), its first piece read here."""
    if hasattr(reader, "fileno"):
        return reader
    chunks = ReaderChunks(reader, length)
    if length:
        chunks.read_first()
    return chunks


class Blob:
    scope = "repository"

    def __init__(
        self, registry: Registry, delete_enabled: bool, pull_through: PullThrough | None = None
    ) -> None:
        self._registry = registry
        self._delete_enabled = delete_enabled
        self._pull_through = pull_through

    def on_head(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        info = self._stat(validate_name(name), Digest.parse(digest), upstream_head=True)
        self._headers(resp, info.digest)
        resp.content_length = info.size

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        wanted = Digest.parse(digest)
        info = self._stat(validate_name(name), wanted, upstream_head=False)
        if info is None:
            # Missing here: streamed from upstream while it is copied. A Range is ignored (the
            # whole blob is sent with 200, as HTTP allows) so the copy is always complete.
            pulled = self._pull_through.blob(name, wanted)
            self._headers(resp, wanted)
            resp.stream = pulled.stream  # relayed from upstream while it is copied
            if pulled.size is not None:
                resp.content_length = pulled.size
            return
        self._headers(resp, info.digest)
        url = self._registry.blobs.redirect_url(info.digest)
        if url is not None:
            # The bytes come straight from object storage; Range goes along with the client.
            resp.status = falcon.HTTP_307
            resp.location = url
            resp.content_length = 0
            return
        start, length = 0, info.size
        wanted = byte_range(req.get_header("Range"), info.size)
        if wanted is not None:
            start, length = wanted
            resp.status = falcon.HTTP_206
            resp.set_header("Content-Range", f"bytes {start}-{start + length - 1}/{info.size}")
        reader = self._registry.blobs.open(name, info.digest, start, length)
        resp.stream = response_body(reader, length)
        resp.content_length = length

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        if not self._delete_enabled:
            raise Unsupported("deletes are disabled on this registry")
        self._registry.blobs.unlink(validate_name(name), Digest.parse(digest))
        resp.status = falcon.HTTP_202
        resp.content_length = 0

    def _stat(self, name: str, digest: Digest, upstream_head: bool) -> BlobInfo | None:
        """The local blob; on a miss with upstreams configured, the upstream's answer (HEAD) or
        None (GET: the caller pulls it through)."""
        try:
            info = self._registry.blobs.stat(name, digest)
        except BlobUnknown:
            if self._pull_through is None:
                raise
            return self._pull_through.blob_info(name, digest) if upstream_head else None
        if self._pull_through is not None:
            metrics.pullthrough("blob", "hit")
        return info

    @staticmethod
    def _headers(resp: falcon.Response, digest: Digest) -> None:
        resp.content_type = "application/octet-stream"
        resp.set_header("Docker-Content-Digest", str(digest))
        resp.set_header("Accept-Ranges", "bytes")
        resp.set_header("ETag", f'"{digest}"')
        # Content-addressed: the bytes under a digest never change.
        resp.set_header("Cache-Control", "max-age=31536000")
