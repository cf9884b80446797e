"""The registry: blobs, uploads, manifests and the catalog over one storage driver."""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from storage import paths
from storage.blobs import BlobStore
from storage.driver import StorageDriver
from storage.inventory import Inventory
from storage.manifests import ManifestStore
from storage.uploads import UploadService


class Registry:
    def __init__(
        self, driver: StorageDriver, gc_grace: float | None = None, allow_sparse_index: bool = False
    ) -> None:
        """`gc_grace`: garbage collection's grace period, if it may run: old links are renewed
        when clients ask for them, at half of it (storage/blobs.py). `allow_sparse_index`:
        indexes may name children that are not here (REGISTRY_ALLOW_SPARSE_INDEX)."""
        self.driver = driver
        self.blobs = BlobStore(driver, renew_after=None if gc_grace is None else gc_grace / 2)
        self.uploads = UploadService(driver, self.blobs)
        self.manifests = ManifestStore(driver, self.blobs, allow_sparse_index)
        self.inventory = Inventory(driver, self.blobs)  # summaries for people (the web UI)

    def repositories(self, after: str | None = None, prefix: str = "") -> Iterator[str]:
        """Every repository holding at least one manifest, in sorted order, after `after`, and
        only names starting with `prefix` (subtrees that cannot hold one are never listed).

        Lazy, so a page of the catalog costs what it returns: the walk lists one directory
        (prefix) per name it passes and stops when the caller stops asking. Names come out
        sorted because pending names wait in a heap: a name is listed only when it is the
        smallest pending one, and everything listing it adds (`name/child`) sorts after it.
        Subtrees that hold only names up to `after` are never listed."""
        pending = [
            c
            for c in self._namespace_children(paths.REPOSITORIES)
            if _may_follow(c, after) and _may_hold(c, prefix)
        ]
        heapq.heapify(pending)
        while pending:
            name = heapq.heappop(pending)
            key = paths.repository(name)
            children = self.driver.list_children(key)
            # (An emptied _manifests directory may linger on local disk until it is pruned.)
            wanted = (after is None or name > after) and name.startswith(prefix)
            if wanted and "_manifests" in children and self.driver.list_children(paths.manifests_dir(name)):
                yield name
            for child in children:
                child_name = f"{name}/{child}"
                if (
                    not child.startswith("_")
                    and _may_follow(child_name, after)
                    and _may_hold(child_name, prefix)
                ):
                    heapq.heappush(pending, child_name)

    def _namespace_children(self, prefix: str) -> list[str]:
        return [c for c in self.driver.list_children(prefix) if not c.startswith("_")]


def _may_follow(name: str, after: str | None) -> bool:
    """Whether `name` or a repository under it (`name/...`) sorts after `after`."""
    if after is None:
        return True
    return name + "/" > after or after.startswith(name + "/")


def _may_hold(name: str, prefix: str) -> bool:
    """Whether `name` or a repository under it starts with `prefix`."""
    return name.startswith(prefix) or prefix.startswith(name + "/")
