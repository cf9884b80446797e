"""Pull-through: what this registry lacks is looked up in the upstream registries, in order,
and a verified copy is kept so the next pull is local.

- Manifests (GET or HEAD, by tag or digest) are fetched whole, checked against the digest asked
  for (or the upstream's Docker-Content-Digest for a tag) and stored with their exact bytes,
  media type and tag before the client is answered.
- Blobs stream to the client while they are written to a fresh staging object; the copy is
  committed under its digest only after the bytes hash to it. The last chunk is held back until
  then, so a client never receives a complete body whose digest is wrong. A client that hangs
  up half way aborts the copy. Concurrent pulls of one missing blob each stage their own copy;
  commits are atomic renames of identical, verified bytes, so the result is never corrupt.
- A blob HEAD answers from upstream without copying (the GET that follows copies), unless the
  bytes are already stored for another repository: then the upstream's answer is enough to link
  them here.

Pull-through only ever reads upstream; pushes are local (resources call it for GET/HEAD only).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError

from errors import BlobUnknown, DigestInvalid, ManifestInvalid, ManifestUnknown, RegistryError, Unavailable
from settings import Settings
from storage import paths
from storage.blobs import BlobInfo
from storage.digests import Digest, is_valid_tag, looks_like_digest
from storage.manifest_format import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from storage.manifests import ManifestInfo
from storage.registry import Registry
from upstream.client import UpstreamClient, UpstreamUnavailable, discard, new_pool
from upstream.tokens import TokenCache

log = logging.getLogger("berth.upstream")

CHUNK = 1024 * 1024  # memory per streamed blob: one chunk in flight and one held back
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


class UpstreamBlobCorrupt(Exception):
    """An upstream sent bytes that do not hash to the digest asked for."""


@dataclass(frozen=True)
class PulledBlob:
    size: int | None  # None when the upstream did not say (the body is then sent chunked)
    stream: Any  # a BlobRelay, or a local ObjectReader when the bytes were already stored


class PullThrough:
    def __init__(self, registry: Registry, clients: list[UpstreamClient], manifest_max_bytes: int) -> None:
        self._registry = registry
        self._clients = clients
        self._manifest_max_bytes = manifest_max_bytes

    @classmethod
    def from_settings(cls, registry: Registry, settings: Settings) -> PullThrough | None:
        upstream = settings.upstream
        if not upstream.registries:
            return None
        pool, tokens = new_pool(), TokenCache()
        timeout = urllib3.Timeout(connect=upstream.connect_timeout, read=upstream.read_timeout)
        clients = [UpstreamClient(r, pool, timeout, tokens) for r in upstream.registries]
        return cls(registry, clients, settings.manifest_max_bytes)

    # -- manifests ---------------------------------------------------------------------------

    def manifest(self, name: str, reference: str) -> tuple[ManifestInfo, bytes]:
        """Fetch, verify and store a manifest missing here; ManifestUnknown if no upstream has
        it, Unavailable if one that might have it could not answer."""
        if looks_like_digest(reference):
            wanted: Digest | None = Digest.parse(reference)
        elif is_valid_tag(reference):
            wanted = None
        else:
            raise ManifestUnknown(detail={"tag": reference})
        failed = False
        for client in self._clients:
            try:
                found = self._fetch_manifest(client, name, reference, wanted)
            except UpstreamUnavailable as exc:
                log.warning("upstream manifest %s:%s: %s", name, reference, exc)
                failed = True
                continue
            if found is None:
                continue
            body, content_type = found
            try:
                result = self._registry.manifests.put(
                    name, reference, body, content_type, [], check_references=False
                )
            except (ManifestInvalid, DigestInvalid) as exc:
                log.warning(
                    "upstream %s: manifest %s:%s not stored: %s", client.registry.url, name, reference, exc
                )
                failed = True
                continue
            log.info(
                "pulled manifest %s:%s (%s) from %s", name, reference, result.digest, client.registry.url
            )
            return self._registry.manifests.resolve(name, str(result.digest)), body
        raise _miss(ManifestUnknown(detail={"reference": reference}), failed)

    def _fetch_manifest(
        self, client: UpstreamClient, name: str, reference: str, wanted: Digest | None
    ) -> tuple[bytes, str | None] | None:
        response = client.request("GET", name, f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT})
        try:
            if not _found(client, response, f"manifest {name}:{reference}"):
                return None
            limit = self._manifest_max_bytes
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise UpstreamUnavailable(f"{client.registry.url}: manifest larger than {limit} bytes")
            body = response.read(limit + 1, decode_content=True)
            if len(body) > limit:
                raise UpstreamUnavailable(f"{client.registry.url}: manifest larger than {limit} bytes")
        except HTTPError as exc:
            raise UpstreamUnavailable(f"{client.registry.url}: {type(exc).__name__}: {exc}") from None
        finally:
            discard(response)
        claimed = wanted or _header_digest(response.headers.get("Docker-Content-Digest"))
        if claimed is not None and Digest.of(body, claimed.algorithm) != claimed:
            log.error(
                "upstream %s sent manifest %s:%s whose bytes do not match %s: refused",
                client.registry.url, name, reference, claimed,
            )  # fmt: skip
            raise UpstreamUnavailable(f"{client.registry.url}: manifest digest mismatch")
        return body, response.headers.get("Content-Type")

    # -- blobs -------------------------------------------------------------------------------

    def blob_info(self, name: str, digest: Digest) -> BlobInfo:
        """A blob HEAD missing here: the upstream's answer, without copying the bytes."""
        failed = False
        for client in self._clients:
            try:
                response = client.request("HEAD", name, f"blobs/{digest}")
            except UpstreamUnavailable as exc:
                log.warning("upstream blob %s@%s: %s", name, digest, exc)
                failed = True
                continue
            discard(response)  # a HEAD: no body
            try:
                if not _found(client, response, f"blob {name}@{digest}"):
                    continue
                size = _blob_headers(client, response, digest)
            except UpstreamUnavailable as exc:
                log.warning("upstream blob %s@%s: %s", name, digest, exc)
                failed = True
                continue
            if size is None:
                failed = True
                continue
            if self._registry.blobs.exists_anywhere(digest):
                self._registry.blobs.link(name, digest)  # upstream vouched: no copy needed
            return BlobInfo(digest, size)
        raise _miss(BlobUnknown(detail={"digest": str(digest)}), failed)

    def blob(self, name: str, digest: Digest) -> PulledBlob:
        """A blob GET missing here: stream it from the first upstream that has it."""
        blobs = self._registry.blobs
        if blobs.exists_anywhere(digest):
            info = self.blob_info(name, digest)  # links it when an upstream has it
            return PulledBlob(info.size, blobs.open(name, digest, 0, info.size))
        failed = False
        for client in self._clients:
            try:
                response = client.request("GET", name, f"blobs/{digest}")
            except UpstreamUnavailable as exc:
                log.warning("upstream blob %s@%s: %s", name, digest, exc)
                failed = True
                continue
            try:
                if not _found(client, response, f"blob {name}@{digest}"):
                    discard(response)
                    continue
                size = _blob_headers(client, response, digest)
            except UpstreamUnavailable as exc:
                log.warning("upstream blob %s@%s: %s", name, digest, exc)
                response.close()
                failed = True
                continue
            return PulledBlob(
                size, BlobRelay(self._registry, client.registry.url, response, name, digest, size)
            )
        raise _miss(BlobUnknown(detail={"digest": str(digest)}), failed)


class BlobRelay:
    """The response body of a blob pulled through: an iterable of chunks that writes each one
    to storage as it passes. The WSGI server calls close() when the response ends, also when
    the client went away, which discards an unfinished copy."""

    def __init__(
        self,
        registry: Registry,
        source: str,
        response: urllib3.BaseHTTPResponse,
        name: str,
        digest: Digest,
        size: int | None,
    ) -> None:
        self._registry = registry
        self._source = source
        self._response = response
        self._name = name
        self._digest = digest
        self._size = size
        self._chunks = self._relay()

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._chunks.close()  # runs the generator's cleanup if it started
        self._response.close()  # and drops the upstream connection if it never did

    def _relay(self) -> Iterator[bytes]:
        driver = self._registry.driver
        upload_id = str(uuid.uuid4())
        writer = driver.append_writer(paths.upload_data(upload_id))
        hasher = hashlib.new(self._digest.algorithm)
        finished = False
        try:
            held: bytes | None = None
            for chunk in self._response.stream(CHUNK, decode_content=False):
                hasher.update(chunk)
                writer.write(chunk)
                if held is not None:
                    yield held
                held = chunk
            self._response.release_conn()
            actual = Digest(self._digest.algorithm, hasher.hexdigest())
            if actual != self._digest or (self._size is not None and writer.size != self._size):
                log.error(
                    "upstream %s sent blob %s@%s whose %d bytes hash to %s: discarded",
                    self._source, self._name, self._digest, writer.size, actual,
                )  # fmt: skip
                raise UpstreamBlobCorrupt(f"{self._source}: blob {self._digest} failed verification")
            if self._registry.blobs.exists_anywhere(self._digest):
                writer.abort()  # a concurrent pull committed the same verified bytes first
            else:
                writer.commit(paths.blob_data(self._digest))
            finished = True
            self._registry.blobs.link(self._name, self._digest)
            log.info(
                "pulled blob %s@%s (%d bytes) from %s", self._name, self._digest, writer.size, self._source
            )
            if held is not None:
                yield held
        except HTTPError as exc:
            log.warning("upstream %s: blob %s@%s broke off: %s", self._source, self._name, self._digest, exc)
            raise
        finally:
            if not finished:
                writer.abort()
            driver.delete_prefix(paths.upload_dir(upload_id))


def _found(client: UpstreamClient, response: urllib3.BaseHTTPResponse, what: str) -> bool:
    """True on 200; False when the upstream does not have it (404) or will not show it to us
    (401/403: Docker Hub answers those for repositories that do not exist); raises otherwise."""
    if response.status == 200:
        return True
    if response.status in (401, 403):
        log.warning("upstream %s refused %s with %s", client.registry.url, what, response.status)
    if response.status in (401, 403, 404):
        return False
    raise UpstreamUnavailable(f"{client.registry.url}: {what} answered {response.status}")


def _blob_headers(client: UpstreamClient, response: urllib3.BaseHTTPResponse, digest: Digest) -> int | None:
    claimed = response.headers.get("Docker-Content-Digest")
    if claimed and claimed.strip() != str(digest):
        raise UpstreamUnavailable(f"{client.registry.url}: blob {digest} answered as {claimed}")
    length = response.headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def _header_digest(value: str | None) -> Digest | None:
    try:
        return Digest.parse(value.strip()) if value else None
    except DigestInvalid:
        return None


def _miss(not_found: RegistryError, failed: bool) -> RegistryError:
    # 404 when every upstream said it has no such thing; 503 when one could not say.
    if failed:
        return Unavailable("an upstream registry could not be reached or failed", detail=not_found.detail)
    return not_found
