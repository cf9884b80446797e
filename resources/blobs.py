"""`/v2/<name>/blobs/<digest>`: read (whole or by Range) and delete blobs."""

from __future__ import annotations

import falcon

from errors import BlobUnknown, Unsupported
from resources.http import byte_range
from storage.blobs import BlobInfo
from storage.digests import Digest, validate_name
from storage.registry import Registry
from upstream.pullthrough import PullThrough


class ReaderChunks:
    """An object reader as a WSGI iterable of 1 MiB pieces; the server closes it."""

    def __init__(self, reader, chunk_size: int = 1024 * 1024) -> None:
        self._reader = reader
        self._chunk_size = chunk_size

    def __iter__(self):
        return iter(lambda: self._reader.read(self._chunk_size), b"")

    def close(self) -> None:
        self._reader.close()


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
            resp.stream = pulled.stream
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
        # A local file (fileno()) goes through wsgi.file_wrapper, so gunicorn can sendfile it;
        # anything else is iterated in large pieces (the wrapper would read 8 KiB at a time).
        resp.stream = reader if hasattr(reader, "fileno") else ReaderChunks(reader)
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
            return self._registry.blobs.stat(name, digest)
        except BlobUnknown:
            if self._pull_through is None:
                raise
            return self._pull_through.blob_info(name, digest) if upstream_head else None

    @staticmethod
    def _headers(resp: falcon.Response, digest: Digest) -> None:
        resp.content_type = "application/octet-stream"
        resp.set_header("Docker-Content-Digest", str(digest))
        resp.set_header("Accept-Ranges", "bytes")
        resp.set_header("ETag", f'"{digest}"')
        # Content-addressed: the bytes under a digest never change.
        resp.set_header("Cache-Control", "max-age=31536000")
