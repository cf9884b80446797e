"""Pull-through: what this registry lacks is looked up in the upstream registries its name is
routed to (routing.py), and a verified copy is kept so the next pull is local.

- Manifests (GET or HEAD, by tag or digest) are fetched whole (within REGISTRY_MANIFEST_MAX_BYTES
  and a deadline), checked against the digest asked for (or the upstream's Docker-Content-Digest
  for a tag) and stored with their exact bytes, media type and tag before the client is answered.
  A tag pulled through is checked upstream again once REGISTRY_UPSTREAM_TAG_TTL has passed
  (freshness.py).
- A blob GET that misses streams the upstream's bytes to the client (relay.py); only bytes that
  hash to the digest are committed, or, when that digest is already stored for another
  repository, link the stored copy here.
- A blob HEAD that misses answers with the upstream's size and digest, and links nothing: an
  upstream's claim never opens bytes this registry holds for another repository.
- Local repositories stay local: a repository a client pushed a manifest to (storage marks it)
  is never filled from upstream, nor are its tags checked there. Names under no configured
  prefix go upstream only when some entry has no prefix.
- At most REGISTRY_UPSTREAM_MAX_CONCURRENCY upstream requests run at once per worker process
  (pacing.py), and an upstream that answered 429 is left alone until its Retry-After.

Pull-through only ever reads upstream; pushes are local (resources call it for GET/HEAD only).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import urllib3

from errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    RegistryError,
    TooManyRequests,
    Unavailable,
)
from settings import Settings
from storage.blobs import BlobInfo
from storage.digests import Digest, is_valid_tag, looks_like_digest
from storage.manifests import ManifestInfo
from storage.registry import Registry
from upstream.bodies import declared_length
from upstream.client import UpstreamClient, UpstreamThrottled, UpstreamUnavailable
from upstream.config import UpstreamSettings
from upstream.fetch import ManifestFetcher, found
from upstream.freshness import TagRefresher
from upstream.origins import new_pools
from upstream.pacing import Slots, SlotsFull
from upstream.relay import BlobRelay, UpstreamBlobCorrupt
from upstream.routing import Route, Routes
from upstream.token_files import TokenFiles
from upstream.tokens import TokenCache

log = logging.getLogger("berth.upstream")

__all__ = ["PullThrough", "PulledBlob", "UpstreamBlobCorrupt"]


@dataclass(frozen=True)
class PulledBlob:
    size: int | None  # None when the upstream did not say (the body is then sent chunked)
    stream: BlobRelay


class _Misses:
    """What the upstreams asked said, for the answer when none had the thing."""

    def __init__(self) -> None:
        self.failed = False  # one could not answer
        self.retry_after = 0.0  # one answered 429 (or did recently)

    def note(self, what: str, exc: Exception) -> None:
        if isinstance(exc, UpstreamThrottled):
            self.retry_after = max(self.retry_after, exc.retry_after)
            log.info("upstream %s: %s", what, exc)
        else:
            self.failed = True
            log.warning("upstream %s: %s", what, exc)

    def error(self, not_found: RegistryError) -> RegistryError:
        # 404 when every upstream said it has no such thing; 503 when one could not say; 429
        # when the only ones that did not say asked us to wait.
        if self.failed:
            return Unavailable("an upstream registry could not be reached or failed", detail=not_found.detail)
        if self.retry_after:
            return TooManyRequests(
                "an upstream registry asked to wait (429)",
                detail=not_found.detail,
                headers={"Retry-After": str(math.ceil(self.retry_after))},
            )
        return not_found


class PullThrough:
    def __init__(
        self,
        registry: Registry,
        clients: list[UpstreamClient],
        settings: UpstreamSettings,
        manifest_max_bytes: int,
    ) -> None:
        self._registry = registry
        self._routes = Routes(clients)
        self._settings = settings
        self._slots = Slots(settings.max_concurrency, settings.connect_timeout)
        self._fetcher = ManifestFetcher(settings, manifest_max_bytes)
        self._refresher = TagRefresher(registry, self._fetcher, self._slots, settings.tag_ttl)

    @classmethod
    def from_settings(cls, registry: Registry, settings: Settings) -> PullThrough | None:
        upstream = settings.upstream
        if not upstream.registries:
            return None
        files = None
        if upstream.token_dir is not None:
            files = TokenFiles(upstream.token_dir, upstream.connect_timeout + upstream.read_timeout)
        pools, tokens = new_pools(), TokenCache(files=files)
        clients = [UpstreamClient(r, pools, upstream, tokens) for r in upstream.registries]
        return cls(registry, clients, upstream, settings.manifest_max_bytes)

    def _routes_for(self, name: str) -> list[Route]:
        """The upstreams that may fill `name`. A prefixed namespace belongs to its upstreams
        (pushes there, such as an index copied alone, do not change that); a name under no
        prefix is filled only while no client has pushed a manifest to it (no dependency
        confusion: a pull never mixes upstream content into a repository pushed here)."""
        routes = self._routes.for_name(name)
        if routes and not routes[0].prefixed and self._registry.manifests.is_pushed(name):
            return []
        return routes

    # -- manifests ---------------------------------------------------------------------------

    def resolve(self, name: str, reference: str) -> tuple[ManifestInfo, bytes | None]:
        """The manifest `reference` names: stored (a tag due for its upstream check is checked
        first), or pulled through. Returns its body too when it had to be fetched."""
        routes = self._routes.for_name(name)
        due = None
        if routes and is_valid_tag(reference):
            due = self._refresher.due(name, reference)
        try:
            info = self._registry.manifests.resolve(name, reference)
        except ManifestUnknown:
            routes = self._routes_for(name)
            if not routes:
                raise
            return self._pull_manifest(name, reference, routes)
        if due is not None:
            info = self._refresher.refresh(name, reference, info, routes, due)
        return info, None

    def _pull_manifest(self, name: str, reference: str, routes: list[Route]) -> tuple[ManifestInfo, bytes]:
        """Fetch, verify and store a manifest missing here; ManifestUnknown if no upstream has
        it, Unavailable if one that might have it could not answer."""
        if looks_like_digest(reference):
            wanted: Digest | None = Digest.parse(reference)
        elif is_valid_tag(reference):
            wanted = None
        else:
            raise ManifestUnknown(detail={"tag": reference})
        misses = _Misses()
        for route in routes:
            try:
                with self._slots.held():
                    fetched = self._fetcher.manifest(route, reference, wanted)
            except (UpstreamUnavailable, SlotsFull) as exc:
                misses.note(f"manifest {name}:{reference} at {route.source}", exc)
                continue
            if fetched is None:
                continue
            body, content_type = fetched
            if not route.prefixed and self._registry.manifests.is_pushed(name):
                raise ManifestUnknown(detail={"reference": reference})  # pushed here meanwhile
            try:
                result = self._registry.manifests.put(
                    name, reference, body, content_type, [], from_upstream=True
                )
            except (ManifestInvalid, DigestInvalid) as exc:
                misses.note(f"manifest {name}:{reference} at {route.source} not stored", exc)
                continue
            if wanted is None:
                self._refresher.pulled(name, reference, result.digest)
            log.info("pulled manifest %s:%s (%s) from %s", name, reference, result.digest, route.source)
            return self._registry.manifests.resolve(name, str(result.digest)), body
        raise misses.error(ManifestUnknown(detail={"reference": reference}))

    # -- blobs -------------------------------------------------------------------------------

    def blob_info(self, name: str, digest: Digest) -> BlobInfo:
        """A blob HEAD missing here: the upstream's answer (size and digest), copying nothing
        and linking nothing; the GET that follows copies."""
        misses = _Misses()
        for route in self._routes_for(name):
            what = f"blob {name}@{digest} at {route.source}"
            try:
                with self._slots.held():
                    response = route.client.request("HEAD", route.name, f"blobs/{digest}")
                    route.client.discard(response)  # a HEAD: no body
                if not found(route.client, response, what):
                    continue
                size = self._blob_size(route.client, response, digest)
            except (UpstreamUnavailable, SlotsFull) as exc:
                misses.note(what, exc)
                continue
            if size is None:
                misses.note(what, UpstreamUnavailable("HEAD answered without a size"))
                continue
            return BlobInfo(digest, size)
        raise misses.error(BlobUnknown(detail={"digest": str(digest)}))

    def blob(self, name: str, digest: Digest) -> PulledBlob:
        """A blob GET missing here: stream it from the first upstream that has it, even when
        the bytes are stored for another repository (only verified bytes link them here). The
        relay holds its upstream request slot until it ends."""
        misses = _Misses()
        for route in self._routes_for(name):
            what = f"blob {name}@{digest} at {route.source}"
            try:
                release = self._slots.take()
            except SlotsFull as exc:
                misses.note(what, exc)
                continue
            try:
                response = route.client.request("GET", route.name, f"blobs/{digest}")
            except UpstreamUnavailable as exc:
                release()
                misses.note(what, exc)
                continue
            try:
                if not found(route.client, response, what):
                    route.client.discard(response)
                    release()
                    continue
                size = self._blob_size(route.client, response, digest)
            except UpstreamUnavailable as exc:
                response.close()
                release()
                misses.note(what, exc)
                continue
            relay = BlobRelay(
                self._registry, route.source, response, name, digest, size, self._settings, on_close=release
            )
            return PulledBlob(size, relay)
        raise misses.error(BlobUnknown(detail={"digest": str(digest)}))

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
