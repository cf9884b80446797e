"""Blobs: stored once, content-addressed; a repository sees a blob through a link."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from errors import BlobUnknown
from storage import paths
from storage.digests import Digest
from storage.driver import ObjectNotFound, ObjectReader, StorageDriver
from storage.tombstones import BeingCollected, Section, Tombstones

log = logging.getLogger("berth.blobs")


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int


class BlobStore:
    def __init__(self, driver: StorageDriver, renew_after: float | None = None) -> None:
        self._driver = driver
        self.tombstones = Tombstones(driver)
        # A link older than this is renewed when a client asks for the blob: docker HEADs a
        # layer, skips its upload and PUTs the manifest later, and garbage collection spares
        # links younger than its grace period (renewing at half of it keeps them so).
        self._renew_after = renew_after

    def section(self) -> Section:
        """Start a critical section for a reference about to be created (storage/tombstones.py):
        before checking that what it will point at exists."""
        return self.tombstones.section()

    def is_linked(self, name: str, digest: Digest, as_manifest: bool = False) -> bool:
        """Whether `name` holds the blob, as a layer or as a manifest (manifests are blobs too:
        the blob routes serve them like distribution does), and its data is there: a link can
        outlive its data when a request gave up during a garbage collection. `as_manifest`
        looks for a manifest first, for callers that expect one."""
        kinds = (self._has_layer, self.has_manifest)
        if as_manifest:
            kinds = kinds[::-1]
        return any(has(name, digest) for has in kinds) and self.exists_anywhere(digest)

    def _has_layer(self, name: str, digest: Digest) -> bool:
        return self._driver.exists(paths.layer_link(name, digest))

    def has_manifest(self, name: str, digest: Digest) -> bool:
        """A manifest revision that readers may see (not one whose PUT is still checking)."""
        try:
            link = json.loads(self._driver.read_bytes(paths.manifest_link(name, digest)))
        except ObjectNotFound:
            return False
        return not link.get("pending")

    def stat(self, name: str, digest: Digest) -> BlobInfo:
        if not self._layer_in_use(name, digest) and not self.has_manifest(name, digest):
            raise BlobUnknown(detail={"digest": str(digest)})
        try:
            return BlobInfo(digest, self._driver.size(paths.blob_data(digest)))
        except ObjectNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None

    def _layer_in_use(self, name: str, digest: Digest) -> bool:
        """Whether `name` links the blob as a layer, renewing an old link first: a client that
        sees it may rely on it for a manifest it pushes later. A link a collection is deleting
        is not there for new clients (they upload the blob again)."""
        key = paths.layer_link(name, digest)
        try:
            info = self._driver.stat(key)
        except ObjectNotFound:
            return False
        if self._renew_after is None or time.time() - info.modified < self._renew_after:
            return True  # no collection state read: most lookups end here
        # Renewing is creating a reference: section, check, write, as every other one does.
        section = self.section()
        if not self._driver.exists(key):
            return False
        self._write_link(name, digest)
        # A HEAD does not wait for a collection's verdict: announced is gone, for new clients.
        return not section.overlapped() or self.tombstones.layer_kept(name, digest, wait=False)

    def open(self, name: str, digest: Digest, start: int, length: int) -> ObjectReader:
        try:
            return self._driver.open_range(paths.blob_data(digest), start, length)
        except ObjectNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None

    def redirect_url(self, digest: Digest) -> str | None:
        return self._driver.redirect_url(paths.blob_data(digest))

    def exists_anywhere(self, digest: Digest) -> bool:
        return self._driver.exists(paths.blob_data(digest))

    def link(self, name: str, digest: Digest, section: Section | None = None) -> None:
        """Link the blob into `name`. `section`, started before the caller checked that the
        data exists, confirms the link against a garbage collection that may have overlapped:
        BeingCollected if the link or the data goes (the link is left: see tombstones.py)."""
        self._write_link(name, digest)
        if section is not None and section.overlapped() and not self.tombstones.layer_kept(name, digest):
            log.info("%s@%s is being garbage collected: not linked", name, digest)
            raise BeingCollected(detail={"digest": str(digest)})

    def _write_link(self, name: str, digest: Digest) -> None:
        # The time makes every write a new version (the collector's second look tells them).
        self._driver.write_bytes(paths.layer_link(name, digest), f"{digest} {time.time():.6f}".encode())

    def mount(self, name: str, source: str, digest: Digest) -> bool:
        """Link a blob of `source` into `name` without copying; False if `source` lacks it."""
        return self._has_layer(source, digest) and self.mount_any(name, digest)

    def mount_any(self, name: str, digest: Digest) -> bool:
        """Link a blob stored for any repository into `name`; False if it is not stored, or
        being garbage collected (the client then uploads it)."""
        section = self.section()
        if not self.exists_anywhere(digest):
            return False
        try:
            self.link(name, digest, section)
        except BeingCollected:
            return False
        return True

    def unlink(self, name: str, digest: Digest) -> None:
        key = paths.layer_link(name, digest)
        if not self._driver.exists(key):
            raise BlobUnknown(detail={"digest": str(digest)})
        # The bytes stay until garbage collection: other repositories may link them.
        self._driver.delete(key)
