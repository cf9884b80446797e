"""The registry: blobs, uploads, manifests and the catalog over one storage driver."""

from __future__ import annotations

from storage import paths
from storage.blobs import BlobStore
from storage.driver import StorageDriver
from storage.manifests import ManifestStore
from storage.uploads import UploadService


class Registry:
    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self.blobs = BlobStore(driver)
        self.uploads = UploadService(driver, self.blobs)
        self.manifests = ManifestStore(driver, self.blobs)

    def repositories(self) -> list[str]:
        """Every repository holding at least one manifest, sorted."""
        found: list[str] = []
        pending = [""]
        while pending:
            name = pending.pop()
            prefix = paths.repository(name) if name else paths.REPOSITORIES
            for child in self.driver.list_children(prefix):
                if child == "_manifests" and name:
                    if self.driver.list_children(f"{prefix}/_manifests"):
                        found.append(name)
                elif not child.startswith("_"):
                    pending.append(f"{name}/{child}" if name else child)
        return sorted(found)
