"""Blobs: stored once, content-addressed; a repository sees a blob through a link."""

from __future__ import annotations

from dataclasses import dataclass

from errors import BlobUnknown
from storage import paths
from storage.digests import Digest
from storage.driver import ObjectNotFound, ObjectReader, StorageDriver


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int


class BlobStore:
    def __init__(self, driver: StorageDriver) -> None:
        self._driver = driver

    def is_linked(self, name: str, digest: Digest, as_manifest: bool = False) -> bool:
        """Whether `name` holds the blob, as a layer or as a manifest (manifests are blobs too:
        the blob routes serve them like distribution does). `as_manifest` looks for a manifest
        first, for callers that expect one."""
        links = (paths.layer_link(name, digest), paths.manifest_link(name, digest))
        if as_manifest:
            links = links[::-1]
        return any(self._driver.exists(link) for link in links)

    def stat(self, name: str, digest: Digest) -> BlobInfo:
        if not self.is_linked(name, digest):
            raise BlobUnknown(detail={"digest": str(digest)})
        try:
            return BlobInfo(digest, self._driver.size(paths.blob_data(digest)))
        except ObjectNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None

    def open(self, name: str, digest: Digest, start: int, length: int) -> ObjectReader:
        try:
            return self._driver.open_range(paths.blob_data(digest), start, length)
        except ObjectNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None

    def redirect_url(self, digest: Digest) -> str | None:
        return self._driver.redirect_url(paths.blob_data(digest))

    def exists_anywhere(self, digest: Digest) -> bool:
        return self._driver.exists(paths.blob_data(digest))

    def link(self, name: str, digest: Digest) -> None:
        self._driver.write_bytes(paths.layer_link(name, digest), str(digest).encode())

    def mount(self, name: str, source: str, digest: Digest) -> bool:
        """Link a blob of `source` into `name` without copying; False if `source` lacks it."""
        return self._driver.exists(paths.layer_link(source, digest)) and self.mount_any(name, digest)

    def mount_any(self, name: str, digest: Digest) -> bool:
        """Link a blob stored for any repository into `name`; False if it is not stored."""
        if not self.exists_anywhere(digest):
            return False
        self.link(name, digest)
        return True

    def unlink(self, name: str, digest: Digest) -> None:
        key = paths.layer_link(name, digest)
        if not self._driver.exists(key):
            raise BlobUnknown(detail={"digest": str(digest)})
        # The bytes stay until garbage collection: other repositories may link them.
        self._driver.delete(key)
