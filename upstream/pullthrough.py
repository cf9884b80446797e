"""Pull-through: what this registry lacks is looked up in the upstream registries, in order,
and a verified copy is kept so the next pull is local.

- Manifests (GET or HEAD, by tag or digest) are fetched whole (within REGISTRY_MANIFEST_MAX_BYTES
  and a deadline), checked against the digest asked for (or the upstream's Docker-Content-Digest
  for a tag) and stored with their exact bytes, media type and tag before the client is answered.
- A blob GET that misses streams the upstream's bytes to the client (relay.py); only bytes that
  hash to the digest are committed, or, when that digest is already stored for another
  repository, link the stored copy here.
- A blob HEAD that misses answers with the upstream's size and digest, and links nothing: an
  upstream's claim never opens bytes this registry holds for another repository.

Pull-through only ever reads upstream; pushes are local (resources call it for GET/HEAD only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import HTTPError

from errors import BlobUnknown, DigestInvalid, ManifestInvalid, ManifestUnknown, RegistryError, Unavailable
from settings import Settings
from storage.blobs import BlobInfo
from storage.digests import Digest, is_valid_tag, looks_like_digest
from storage.manifest_format import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from storage.manifests import ManifestInfo
from storage.registry import Registry
from upstream.bodies import declared_length, read_capped
from upstream.client import UpstreamClient, UpstreamUnavailable
from upstream.config import UpstreamSettings
from upstream.origins import new_pools
from upstream.relay import BlobRelay, UpstreamBlobCorrupt
from upstream.tokens import TokenCache

log = logging.getLogger("berth.upstream")

MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


__all__ = ["PullThrough", "PulledBlob", "UpstreamBlobCorrupt"]


@dataclass(frozen=True)
class PulledBlob:
    size: int | None  # None when the upstream did not say (the body is then sent chunked)
    stream: BlobRelay


class PullThrough:
    def __init__(
        self,
        registry: Registry,
        clients: list[UpstreamClient],
        settings: UpstreamSettings,
        manifest_max_bytes: int,
    ) -> None:
        self._registry = registry
        self._clients = clients
        self._settings = settings
        self._manifest_max_bytes = manifest_max_bytes

    @classmethod
    def from_settings(cls, registry: Registry, settings: Settings) -> PullThrough | None:
        upstream = settings.upstream
        if not upstream.registries:
            return None
        pools, tokens = new_pools(), TokenCache()
        clients = [UpstreamClient(r, pools, upstream, tokens) for r in upstream.registries]
        return cls(registry, clients, upstream, settings.manifest_max_bytes)

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
                client.discard(response)
                return None
            limit = min(declared_length(response) or self._manifest_max_bytes, self._manifest_max_bytes)
            body = read_capped(response, self._manifest_max_bytes, self._settings.body_seconds(limit))
        except HTTPError as exc:
            response.close()
            raise UpstreamUnavailable(
                f"{client.registry.url}: manifest {type(exc).__name__}: {exc}"
            ) from None
        except UpstreamUnavailable:
            response.close()
            raise
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
        """A blob HEAD missing here: the upstream's answer (size and digest), copying nothing
        and linking nothing; the GET that follows copies."""
        failed = False
        for client in self._clients:
            try:
                response = client.request("HEAD", name, f"blobs/{digest}")
            except UpstreamUnavailable as exc:
                log.warning("upstream blob %s@%s: %s", name, digest, exc)
                failed = True
                continue
            client.discard(response)  # a HEAD: no body
            try:
                if not _found(client, response, f"blob {name}@{digest}"):
                    continue
                size = self._blob_size(client, response, digest)
            except UpstreamUnavailable as exc:
                log.warning("upstream blob %s@%s: %s", name, digest, exc)
                failed = True
                continue
            if size is None:
                log.warning("upstream blob %s@%s: HEAD answered without a size", name, digest)
                failed = True
                continue
            return BlobInfo(digest, size)
        raise _miss(BlobUnknown(detail={"digest": str(digest)}), failed)

    def blob(self, name: str, digest: Digest) -> PulledBlob:
        """A blob GET missing here: stream it from the first upstream that has it, even when
        the bytes are stored for another repository (only verified bytes link them here)."""
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
                    client.discard(response)
                    continue
                size = self._blob_size(client, response, digest)
            except UpstreamUnavailable as exc:
                log.warning("upstream blob %s@%s: %s", name, digest, exc)
                response.close()
                failed = True
                continue
            limit = size if size is not None else self._settings.max_blob_bytes
            relay = BlobRelay(
                self._registry,
                client.registry.url,
                response,
                name,
                digest,
                size,
                limit,
                self._settings,
            )
            return PulledBlob(size, relay)
        raise _miss(BlobUnknown(detail={"digest": str(digest)}), failed)

    def _blob_size(
        self, client: UpstreamClient, response: urllib3.BaseHTTPResponse, digest: Digest
    ) -> int | None:
        """The size the upstream announces (None if it does not), checked against what it
        may be: its Docker-Content-Digest must be the one asked for, and the size within
        REGISTRY_UPSTREAM_MAX_BLOB_BYTES."""
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed.strip() != str(digest):
            raise UpstreamUnavailable(f"{client.registry.url}: blob {digest} answered as {claimed}")
        size = declared_length(response)
        if size is not None and size > self._settings.max_blob_bytes:
            raise UpstreamUnavailable(
                f"{client.registry.url}: blob {digest} is {size} bytes, more than "
                f"REGISTRY_UPSTREAM_MAX_BLOB_BYTES ({self._settings.max_blob_bytes})"
            )
        return size


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
