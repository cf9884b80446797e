"""What a repository holds, summarised for people (the web UI): its tags with the manifests they
name and when they were pushed, and for each manifest its kind, size, platforms and creation
time. Read-only, over the same keys as the manifest store.

A page would otherwise read every tagged manifest and its config on every view, so summaries sit
in a small LRU keyed by manifest digest: content-addressed, never stale. Tag values sit in one
keyed by the tag object's version (it changes whenever the tag is written), so a second view of
a repository reads no tag either; only the listing that yields the versions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from errors import BlobUnknown, DigestInvalid, NameUnknown
from storage import paths
from storage.blobs import BlobStore
from storage.digests import Digest
from storage.driver import ObjectNotFound, StorageDriver
from storage.lru import LruCache
from storage.manifest_format import INDEX_TYPES, OCI_INDEX, OCI_MANIFEST

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
IMAGE_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
# The most of a JSON document (a manifest, an image config) read to show it; real configs are
# a few KiB, a long history a few hundred.
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_INDEX_DEPTH = 2  # an index of indexes is summarised; deeper nesting is not followed


@dataclass(frozen=True)
class TagEntry:
    tag: str
    digest: Digest | None  # None: the tag was deleted while listing, or holds no digest
    pushed: float  # when the tag was last written (store's clock, Unix seconds)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class ManifestSummary:
    digest: Digest
    media_type: str
    kind: str  # "image", "index" or "artifact"
    artifact_type: str | None  # an artifact's type (its artifactType, else its config's type)
    # Every blob a pull of it fetches, by digest: the manifest, its config and layers, and for
    # an index each child present here with its blobs. Sizes of repositories sum these once.
    parts: tuple[tuple[str, int], ...]
    platforms: tuple[Platform, ...]  # an image's own, an index's children (attestations left out)
    created: str | None  # the image config's `created`, an artifact's created annotation

    @property
    def size(self) -> int:
        return sum(size for _, size in self.parts)


@dataclass(frozen=True)
class RepositoryStats:
    tags: int
    size: int | None  # distinct blobs of every tagged manifest, each counted once; None: too many
    last_push: float | None


# A repository's total size needs a summary of every image its tags name; beyond this many
# distinct images it is not totalled (a page must not read tens of thousands of manifests on
# every view, which the 4,096-summary cache could not keep).
TOTAL_SIZE_IMAGES = 2000


def total_size(summaries: Iterable[ManifestSummary | None]) -> int:
    """Bytes of the distinct blobs the summaries name (shared layers counted once)."""
    seen: dict[str, int] = {}
    for summary in summaries:
        if summary is not None:
            seen.update(summary.parts)
    return sum(seen.values())


class Inventory:
    def __init__(
        self, driver: StorageDriver, blobs: BlobStore, summaries: int = 4096, tag_values: int = 32768
    ) -> None:
        self._driver = driver
        self._blobs = blobs
        self._summaries: LruCache[Digest, ManifestSummary] = LruCache(summaries)
        self._tag_values: LruCache[tuple[str, str], Digest] = LruCache(tag_values)

    # -- tags --------------------------------------------------------------------------------

    def tags(self, name: str) -> list[TagEntry]:
        """Every tag of `name` (unsorted) with its digest and push time: one listing, plus a
        read per tag whose object changed since it was last read."""
        entries = []
        for info in self._driver.walk(paths.tags_dir(name)):
            tag = info.key.rsplit("/", 1)[-1]
            cache_key = (info.key, info.version)
            digest = self._tag_values.get(cache_key)
            if digest is None:
                digest = self._read_tag(info.key)
                if digest is not None:
                    self._tag_values.put(cache_key, digest)
            entries.append(TagEntry(tag, digest, info.modified))
        if not entries and not self._driver.list_children(paths.repository(name)):
            raise NameUnknown(detail={"name": name})
        return entries

    def _read_tag(self, key: str) -> Digest | None:
        try:
            return Digest.parse(self._driver.read_bytes(key).decode().strip())
        except (ObjectNotFound, DigestInvalid, UnicodeDecodeError):
            return None

    def stats(self, name: str) -> RepositoryStats:
        tags = self.tags(name)
        return RepositoryStats(len(tags), self.total_of(tags), max((t.pushed for t in tags), default=None))

    def total_of(self, tags: Iterable[TagEntry]) -> int | None:
        """Bytes of the distinct blobs the tags' manifests name; None beyond TOTAL_SIZE_IMAGES
        distinct manifests."""
        digests = {t.digest for t in tags if t.digest is not None}
        if len(digests) > TOTAL_SIZE_IMAGES:
            return None
        return total_size(self.summary(d) for d in digests)

    # -- manifests ---------------------------------------------------------------------------

    def summary(self, digest: Digest, depth: int = 0) -> ManifestSummary | None:
        """What the stored manifest `digest` is; None if its bytes are not stored."""
        cached = self._summaries.get(digest)
        if cached is not None:
            return cached
        try:
            doc, size = self._load(digest)
        except BlobUnknown:
            return None
        return self._summary_of(digest, doc, size, depth)

    def document_and_summary(self, digest: Digest) -> tuple[Any, ManifestSummary]:
        """A stored manifest and its summary, read once. BlobUnknown as json_document."""
        doc, size = self._load(digest)
        return doc, self._summaries.get(digest) or self._summary_of(digest, doc, size, 0)

    def _summary_of(self, digest: Digest, doc: Any, size: int, depth: int) -> ManifestSummary:
        summary = self._summarise(digest, doc, size, depth)
        self._summaries.put(digest, summary)
        return summary

    def json_document(self, digest: Digest) -> Any:
        """A stored JSON document (manifest or config) by digest. Callers check that the
        repository holds it first. BlobUnknown when absent, too large, or not JSON."""
        return self._load(digest)[0]

    def _load(self, digest: Digest) -> tuple[Any, int]:
        key = paths.blob_data(digest)
        try:
            if self._driver.size(key) > MAX_JSON_BYTES:
                raise BlobUnknown("document too large to show", detail={"digest": str(digest)})
            data = self._driver.read_bytes(key)
            return json.loads(data), len(data)
        except ObjectNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BlobUnknown("not a JSON document", detail={"digest": str(digest)}) from None

    def holds_blob(self, name: str, digest: Digest) -> bool:
        """Whether `name` holds `digest` as a manifest or a blob (a config, a layer)."""
        return self._blobs.is_linked(name, digest)

    def _summarise(self, digest: Digest, doc: Any, size: int, depth: int) -> ManifestSummary:
        doc = doc if isinstance(doc, dict) else {}
        media_type = _text(doc.get("mediaType")) or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
        own = (str(digest), size)
        annotations = doc.get("annotations") if isinstance(doc.get("annotations"), dict) else {}
        artifact_type = _text(doc.get("artifactType"))
        if media_type in INDEX_TYPES or "manifests" in doc:
            return self._summarise_index(digest, doc, media_type, own, artifact_type, annotations, depth)
        config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
        config_type = _text(config.get("mediaType"))
        parts = [own] + [(d["digest"], d["size"]) for d in _descriptors([config, *_list(doc.get("layers"))])]
        created = _text(annotations.get("org.opencontainers.image.created"))
        platforms: tuple[Platform, ...] = ()
        if config_type in IMAGE_CONFIG_TYPES and not artifact_type:
            kind = "image"
            image_config = self._config(config)
            created = _text(image_config.get("created")) or created
            platform = platform_of(image_config)
            platforms = (platform,) if platform else ()
        else:
            kind, artifact_type = "artifact", artifact_type or config_type
        return ManifestSummary(
            digest, media_type, kind, artifact_type, tuple(dict(parts).items()), platforms, created
        )

    def _summarise_index(self, digest, doc, media_type, own, artifact_type, annotations, depth):
        parts: dict[str, int] = dict([own])
        platforms: list[Platform] = []
        created: list[str] = []
        for child in _descriptors(_list(doc.get("manifests"))):
            platform = platform_of(child.get("platform"))
            attestation = is_attestation(child)
            if platform and not attestation and platform.os != "unknown":
                platforms.append(platform)
            summary = None
            if depth < MAX_INDEX_DEPTH:
                summary = self.summary(Digest.parse(child["digest"]), depth + 1)
            if summary is None:
                continue
            parts.update(summary.parts)
            if summary.created and not attestation:
                created.append(summary.created)
        kind = "artifact" if artifact_type else "index"
        return ManifestSummary(
            digest,
            media_type,
            kind,
            artifact_type,
            tuple(parts.items()),
            tuple(platforms),
            max(created, default=None) or _text(annotations.get("org.opencontainers.image.created")),
        )

    def _config(self, descriptor: dict) -> dict:
        try:
            doc = self.json_document(Digest.parse(descriptor["digest"]))
        except (BlobUnknown, DigestInvalid, KeyError, TypeError):
            return {}
        return doc if isinstance(doc, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _descriptors(values: Iterable[Any]) -> list[dict]:
    """Descriptors with a valid digest and size (stored manifests were validated on push;
    this only keeps a summary from failing on anything odd)."""
    found = []
    for value in values:
        if not isinstance(value, dict):
            continue
        size = value.get("size")
        try:
            Digest.parse(value.get("digest"))
        except DigestInvalid:
            continue
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            found.append(value)
    return found


def platform_of(value: Any) -> Platform | None:
    """The platform an image config or an index entry's `platform` names, if any."""
    if not isinstance(value, dict):
        return None
    os_name, arch = _text(value.get("os")), _text(value.get("architecture"))
    if not os_name and not arch:
        return None
    return Platform(os_name or "", arch or "", _text(value.get("variant")) or "")


def is_attestation(descriptor: dict) -> bool:
    """An index entry that is BuildKit's attestation manifest (provenance, SBOM), not a platform."""
    annotations = descriptor.get("annotations")
    return (
        isinstance(annotations, dict)
        and annotations.get("vnd.docker.reference.type") == "attestation-manifest"
    )
