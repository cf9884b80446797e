"""What each page shows, gathered through the registry's services (storage/registry.py,
storage/manifests.py, storage/inventory.py) and limited to what the caller may see. No storage
access of its own, no HTTP: the resources (ui/pages.py) hand the results to the templates."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from auth.identity import PULL, Identity
from errors import BlobUnknown, DigestInvalid, ManifestUnknown, NameUnknown
from storage.digests import Digest
from storage.inventory import IMAGE_CONFIG_TYPES, ManifestSummary, TagEntry, is_attestation, platform_of
from storage.manifest_format import INDEX_TYPES
from storage.registry import Registry
from ui.present import (
    HistoryStep,
    ImageConfig,
    When,
    artifact_name,
    history,
    image_config,
    kind_label,
    natural_key,
    when,
)

REPOSITORIES_PER_PAGE = 50
# A screen of the repository list looks at this many names at most, so a filter that matches
# little never walks the whole store: the page then offers to continue from where it stopped.
MAX_SCANNED_NAMES = 2000
TAGS_PER_PAGE = 1000
MAX_FILTER = 255


# -- the repository list ----------------------------------------------------------------------


def visible_repositories(registry: Registry, identity: Identity, after: str | None) -> Iterator[str]:
    """The repositories `identity` may pull, sorted, after `after`. A token limited to some
    repositories (`team/*`) walks only the subtrees its grants name."""
    if PULL not in identity.actions:
        return iter(())
    if identity.grants is None:
        return registry.repositories(after)
    prefixes: list[str] = []
    for pattern in sorted({g.pattern.rstrip("*") for g in identity.grants if PULL in g.actions}):
        if not any(pattern.startswith(p) for p in prefixes):
            prefixes.append(pattern)
    walks = [registry.repositories(after, prefix=p) for p in prefixes]
    names = (name for name, _ in itertools.groupby(heapq.merge(*walks)))
    return (name for name in names if identity.may(name, PULL))


@dataclass
class RepositoryRow:
    name: str
    tags: int
    size: int
    last_push: When | None


@dataclass
class RepositoryListing:
    rows: list[RepositoryRow]
    next_after: str | None  # where the next screen starts; None on the last one
    scan_stopped: bool  # the screen stopped at MAX_SCANNED_NAMES before filling up


def repository_listing(
    registry: Registry, identity: Identity, query: str, after: str | None
) -> RepositoryListing:
    needle = query.lower()
    names: list[str] = []
    last_scanned = None
    more = False
    for scanned, name in enumerate(visible_repositories(registry, identity, after)):
        if len(names) == REPOSITORIES_PER_PAGE or scanned == MAX_SCANNED_NAMES:
            more = True
            break
        last_scanned = name
        if needle in name:
            names.append(name)
    rows = []
    for name in names:
        try:
            stats = registry.inventory.stats(name)
        except NameUnknown:
            continue  # deleted since it was listed
        rows.append(RepositoryRow(name, stats.tags, stats.size, when(stats.last_push)))
    scan_stopped = more and len(names) < REPOSITORIES_PER_PAGE
    return RepositoryListing(rows, last_scanned if more else None, scan_stopped)


# -- one repository ---------------------------------------------------------------------------


@dataclass
class TagRow:
    tag: str
    digest: Digest | None
    summary: ManifestSummary | None
    pushed: When | None
    kind: str
    platforms: list[str]
    created: When | None


@dataclass
class RepositoryView:
    name: str
    rows: list[TagRow]
    tag_count: int
    matching: int  # tags the filter keeps
    size: int | None  # None: too many images to total (inventory.TOTAL_SIZE_IMAGES)
    last_push: When | None
    page: int
    pages: int


def repository_view(
    registry: Registry, name: str, query: str, newest_first: bool, page: int
) -> RepositoryView:
    entries = registry.inventory.tags(name)
    needle = query.lower()
    chosen = [e for e in entries if needle in e.tag.lower()]
    if newest_first:
        chosen.sort(key=lambda e: (-e.pushed, natural_key(e.tag)))
    else:
        chosen.sort(key=lambda e: natural_key(e.tag))
    pages = max(1, -(-len(chosen) // TAGS_PER_PAGE))
    page = min(max(page, 1), pages)
    shown = chosen[(page - 1) * TAGS_PER_PAGE : page * TAGS_PER_PAGE]
    inventory = registry.inventory
    summaries = {e.digest: inventory.summary(e.digest) for e in shown if e.digest is not None}
    return RepositoryView(
        name,
        [_tag_row(entry, summaries.get(entry.digest)) for entry in shown],
        len(entries),
        len(chosen),
        inventory.total_of(entries),
        when(max((e.pushed for e in entries), default=None)),
        page,
        pages,
    )


def _tag_row(entry: TagEntry, summary: ManifestSummary | None) -> TagRow:
    return TagRow(
        entry.tag,
        entry.digest,
        summary,
        when(entry.pushed),
        kind_label(summary.kind, summary.artifact_type) if summary else "missing",
        [str(p) for p in summary.platforms] if summary and summary.kind == "index" else [],
        when(summary.created) if summary else None,
    )


def tags_pointing_at(registry: Registry, name: str, digest: Digest) -> list[str]:
    return sorted((e.tag for e in registry.inventory.tags(name) if e.digest == digest), key=natural_key)


# -- one image --------------------------------------------------------------------------------


@dataclass
class Child:
    """One manifest of an index."""

    digest: str
    platform: str
    size: int | None
    stored: bool
    attestation: bool


@dataclass
class ReferrerGroup:
    artifact_type: str
    label: str
    items: list[dict]


@dataclass
class ManifestView:
    digest: Digest
    media_type: str
    size: int
    kind: str
    label: str
    artifact_type: str | None
    annotations: dict[str, str]
    subject: str | None
    # An image or artifact: its config and layers.
    config_descriptor: dict | None = None
    config: ImageConfig | None = None
    history: list[HistoryStep] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    # An index: its manifests.
    children: list[Child] = field(default_factory=list)
    referrers: list[ReferrerGroup] = field(default_factory=list)
    total_size: int | None = None
    created: When | None = None


def manifest_view(registry: Registry, name: str, digest: Digest, media_type: str) -> ManifestView:
    """Everything the image page shows of a manifest `name` holds."""
    inventory = registry.inventory
    doc, summary = inventory.document_and_summary(digest)
    doc = doc if isinstance(doc, dict) else {}
    annotations = _string_map(doc.get("annotations"))
    subject = doc.get("subject") if isinstance(doc.get("subject"), dict) else None
    view = ManifestView(
        digest=digest,
        media_type=media_type,
        size=next((size for d, size in summary.parts if d == str(digest)), 0),
        kind=summary.kind,
        label=kind_label(summary.kind, summary.artifact_type),
        artifact_type=summary.artifact_type,
        annotations=annotations,
        subject=str(subject.get("digest")) if subject else None,
        total_size=summary.size,
        created=when(summary.created),
    )
    if media_type in INDEX_TYPES or "manifests" in doc:
        view.children = [_child(inventory, d) for d in _dicts(doc.get("manifests"))]
    else:
        config = doc.get("config") if isinstance(doc.get("config"), dict) else None
        view.config_descriptor = config
        view.layers = _dicts(doc.get("layers"))
        if config and config.get("mediaType") in IMAGE_CONFIG_TYPES:
            config_doc = _config_document(registry, name, config)
            if config_doc is not None:
                view.config = image_config(config_doc)
                view.history = history(config_doc, view.layers)
    view.referrers = referrer_groups(registry, name, digest)
    return view


def _config_document(registry: Registry, name: str, descriptor: dict) -> Any:
    try:
        digest = Digest.parse(descriptor.get("digest"))
        if not registry.inventory.holds_blob(name, digest):
            return None
        return registry.inventory.json_document(digest)
    except (BlobUnknown, DigestInvalid):  # not stored, or an odd descriptor: shown without it
        return None


def _child(inventory, descriptor: dict) -> Child:
    platform = platform_of(descriptor.get("platform"))
    try:
        summary = inventory.summary(Digest.parse(descriptor.get("digest")))
    except DigestInvalid:  # cannot be stored: shown as missing
        summary = None
    return Child(
        str(descriptor.get("digest")),
        str(platform) if platform else "unknown",
        summary.size if summary else None,
        summary is not None,
        is_attestation(descriptor),
    )


def referrer_groups(registry: Registry, name: str, digest: Digest) -> list[ReferrerGroup]:
    groups: dict[str, list[dict]] = {}
    for desc in registry.manifests.referrers(name, digest, None):
        groups.setdefault(str(desc.get("artifactType") or "(no artifact type)"), []).append(desc)
    return [ReferrerGroup(t, artifact_name(t), items) for t, items in sorted(groups.items())]


def resolve(registry: Registry, name: str, reference: str):
    """The manifest `reference` names in `name` (ManifestUnknown, NameUnknown if none)."""
    try:
        return registry.manifests.resolve(name, reference)
    except ManifestUnknown:
        registry.manifests.tags(name)  # NameUnknown for a repository that does not exist
        raise


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in sorted(value.items())}
