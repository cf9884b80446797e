"""Manifests, tags and referrers of a repository. Bytes are stored exactly as pushed, as blobs;
the repository holds a link per revision (with the media type to serve), a file per tag and an
entry per referrer. Writes go content first, links last, so nothing ever points at nothing.

A manifest pushed by a client also marks its repository as pushed here (`_pushed`): pull-through
never writes upstream content into such a repository (upstream/pullthrough.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from errors import DigestInvalid, ManifestBlobUnknown, ManifestUnknown, NameUnknown
from storage import paths
from storage.blobs import BlobStore
from storage.digests import Digest, is_valid_tag, looks_like_digest, validate_tag
from storage.driver import ObjectNotFound, StorageDriver
from storage.manifest_format import Descriptor, ParsedManifest, parse_manifest
from storage.tombstones import BeingCollected


@dataclass(frozen=True)
class ManifestInfo:
    digest: Digest
    media_type: str
    size: int


@dataclass(frozen=True)
class PutResult:
    digest: Digest
    subject: Digest | None
    tags: list[str]


class ManifestStore:
    def __init__(self, driver: StorageDriver, blobs: BlobStore, allow_sparse_index: bool = False) -> None:
        self._driver = driver
        self._blobs = blobs
        # REGISTRY_ALLOW_SPARSE_INDEX: an index may name children that are not here (one
        # platform of a multi-arch image mirrored); image manifests still need their blobs.
        self._allow_sparse_index = allow_sparse_index

    # -- reading -----------------------------------------------------------------------------

    def resolve(self, name: str, reference: str) -> ManifestInfo:
        digest = self._reference_digest(name, reference)
        link = self._link(name, digest)
        if link is None or link.get("pending"):
            # A pending revision's PUT has not answered yet (storage/tombstones.py).
            raise ManifestUnknown(detail={"reference": reference})
        return ManifestInfo(digest, link["mediaType"], int(link["size"]))

    def _link(self, name: str, digest: Digest) -> dict[str, Any] | None:
        try:
            return json.loads(self._driver.read_bytes(paths.manifest_link(name, digest)))
        except ObjectNotFound:
            return None

    def read(self, info: ManifestInfo) -> bytes:
        try:
            return self._driver.read_bytes(paths.blob_data(info.digest))
        except ObjectNotFound:
            raise ManifestUnknown(detail={"digest": str(info.digest)}) from None

    def _reference_digest(self, name: str, reference: str) -> Digest:
        if looks_like_digest(reference):
            return Digest.parse(reference)
        if not is_valid_tag(reference):
            # No manifest can be stored under an invalid tag, so reading one is a plain miss.
            raise ManifestUnknown(detail={"tag": reference})
        try:
            return Digest.parse(self._driver.read_bytes(paths.tag(name, reference)).decode())
        except ObjectNotFound:
            raise ManifestUnknown(detail={"tag": reference}) from None

    # -- writing -----------------------------------------------------------------------------

    def put(
        self,
        name: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        extra_tags: list[str],
        *,
        from_upstream: bool = False,
    ) -> PutResult:
        """Store a manifest. `from_upstream=True` is for a copy pulled through from an upstream
        registry: its blobs are fetched on demand later, so they need not be here yet, and it
        does not mark the repository as pushed."""
        if looks_like_digest(reference):
            digest = Digest.parse(reference)
            actual = Digest.of(body, digest.algorithm)
            if actual != digest:
                raise DigestInvalid(
                    "manifest digest does not match the reference",
                    detail={"reference": str(digest), "actual": str(actual)},
                )
            tags = [validate_tag(t) for t in extra_tags]
        else:
            digest = Digest.of(body)
            tags = [validate_tag(reference)] + [validate_tag(t) for t in extra_tags if t != reference]

        manifest = parse_manifest(body, content_type)
        # References are written first and confirmed after, against a garbage collection that
        # may run meanwhile (storage/tombstones.py); a new revision stays pending, invisible to
        # readers, until then, so nothing is built on a manifest this PUT may still refuse.
        section = self._blobs.section()
        if not from_upstream:
            self._check_references(name, manifest)
            # Before anything is written, so a pull-through that checks for the mark just before
            # writing sees it (upstream/pullthrough.py).
            self.mark_pushed(name)

        blob_key = paths.blob_data(digest)
        if not self._driver.exists(blob_key):
            self._driver.write_bytes(blob_key, body)
        existing = self._link(name, digest)
        new = existing is None or bool(existing.get("pending"))
        if new:
            self._write_link(name, digest, manifest, len(body), pending=True)
        previous = {tag: self._tag_value(name, tag) for tag in tags}
        for tag in tags:
            self._driver.write_bytes(paths.tag(name, tag), str(digest).encode())
        if section.overlapped():
            self._confirm(name, digest, manifest, previous, references=not from_upstream)
        if new:
            self._write_link(name, digest, manifest, len(body), pending=False)
        if manifest.subject is not None:
            self._driver.write_bytes(
                paths.referrer(name, manifest.subject.digest, digest),
                json.dumps(self._referrer_descriptor(manifest, digest, len(body))).encode(),
            )
        return PutResult(digest, manifest.subject.digest if manifest.subject else None, tags)

    def _write_link(
        self, name: str, digest: Digest, manifest: ParsedManifest, size: int, pending: bool
    ) -> None:
        link: dict[str, Any] = {"mediaType": manifest.media_type, "size": size, "linked": time.time()}
        if pending:
            link["pending"] = True
        self._driver.write_bytes(paths.manifest_link(name, digest), json.dumps(link).encode())

    def _tag_value(self, name: str, tag: str) -> bytes | None:
        try:
            return self._driver.read_bytes(paths.tag(name, tag))
        except ObjectNotFound:
            return None

    def _confirm(
        self,
        name: str,
        digest: Digest,
        manifest: ParsedManifest,
        previous: dict[str, bytes | None],
        references: bool,
    ) -> None:
        """A garbage collection ran during this PUT: check that it keeps everything the manifest
        needs (its references unless it comes from upstream, which fetches them on demand; its
        children unless indexes may be sparse). If not, the tags go back to what they were and
        the PUT is refused; the pending revision stays invisible (another PUT of the same bytes
        may still be relying on it) and a later collection removes it."""
        tombstones = self._blobs.tombstones
        gone: list[str] = []
        if references:
            gone += [
                str(d.digest) for d in _distinct(manifest.blobs) if not tombstones.layer_kept(name, d.digest)
            ]
            if not self._allow_sparse_index:
                gone += [
                    str(d.digest)
                    for d in _distinct(manifest.children)
                    if not tombstones.manifest_kept(name, d.digest)
                ]
        if not gone and tombstones.manifest_kept(name, digest):
            return
        for tag, value in previous.items():
            if value is None:
                self._driver.delete(paths.tag(name, tag))
            else:
                self._driver.write_bytes(paths.tag(name, tag), value)
        if gone:
            raise ManifestBlobUnknown(detail={"digests": gone})
        raise BeingCollected(detail={"digest": str(digest)})

    def _check_references(self, name: str, manifest: ParsedManifest) -> None:
        """Every blob and child the manifest names must be in this repository. Each distinct
        digest is looked up once (an index may repeat a child thousands of times), children as
        manifests first and blobs as layers first, so most cost one storage request."""
        missing = []
        for desc in _distinct(manifest.blobs):
            if not self._blobs.is_linked(name, desc.digest):
                missing.append(str(desc.digest))
        if not self._allow_sparse_index:
            for desc in _distinct(manifest.children):
                if not self._blobs.is_linked(name, desc.digest, as_manifest=True):
                    missing.append(str(desc.digest))
        if missing:
            raise ManifestBlobUnknown(detail={"digests": missing})

    def mark_pushed(self, name: str) -> None:
        self._driver.write_bytes(paths.pushed_marker(name), json.dumps({"pushed_at": time.time()}).encode())

    def is_pushed(self, name: str) -> bool:
        """Whether a client ever pushed a manifest to `name` (since the mark exists: repositories
        pushed before it are marked by their next push)."""
        return self._driver.exists(paths.pushed_marker(name))

    @staticmethod
    def _referrer_descriptor(manifest: ParsedManifest, digest: Digest, size: int) -> dict[str, Any]:
        desc: dict[str, Any] = {"mediaType": manifest.media_type, "digest": str(digest), "size": size}
        if manifest.artifact_type:
            desc["artifactType"] = manifest.artifact_type
        if manifest.annotations:
            desc["annotations"] = manifest.annotations
        return desc

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, name: str, reference: str) -> None:
        if not looks_like_digest(reference):
            if not is_valid_tag(reference):
                raise ManifestUnknown(detail={"tag": reference})
            key = paths.tag(name, reference)
            if not self._driver.exists(key):
                raise ManifestUnknown(detail={"tag": reference})
            self._driver.delete(key)
            return
        info = self.resolve(name, reference)
        try:
            manifest = parse_manifest(self.read(info), info.media_type)
        except ManifestUnknown:
            manifest = None
        # Tags first, the revision link last: a crash half way leaves a manifest without
        # tags, never a tag without a manifest.
        for tag in self._driver.list_children(paths.tags_dir(name)):
            try:
                if self._driver.read_bytes(paths.tag(name, tag)).decode() == str(info.digest):
                    self._driver.delete(paths.tag(name, tag))
            except ObjectNotFound:
                continue
        if manifest is not None and manifest.subject is not None:
            self._driver.delete(paths.referrer(name, manifest.subject.digest, info.digest))
        self._driver.delete(paths.manifest_link(name, info.digest))

    # -- listing -----------------------------------------------------------------------------

    def tags(self, name: str) -> list[str]:
        tags = self._driver.list_children(paths.tags_dir(name))
        if not tags and not self._driver.list_children(paths.repository(name)):
            raise NameUnknown(detail={"name": name})
        return sorted(tags)

    def referrers(self, name: str, subject: Digest, artifact_type: str | None) -> list[dict[str, Any]]:
        found = []
        for entry in sorted(self._driver.list_children(paths.referrers_dir(name, subject))):
            try:
                desc = json.loads(self._driver.read_bytes(f"{paths.referrers_dir(name, subject)}/{entry}"))
            except ObjectNotFound:
                continue  # deleted while listing
            if artifact_type is None or desc.get("artifactType") == artifact_type:
                found.append(desc)
        return found


def _distinct(descriptors: Iterable[Descriptor]) -> list[Descriptor]:
    """One descriptor per digest (an index may repeat a child thousands of times), leaving out
    non-distributable layers (with `urls`), which the registry need not hold."""
    return list({d.digest: d for d in descriptors if not d.external}.values())
