"""How much storage the registry uses, per repository and in total: a walk over the driver
interface, shared by the `du` command and the usage gauges (observability/usage_gauges.py).

A repository sees every blob it links: its layers and configs (`_layers`) and its manifests
(`_manifests`, manifests are blobs too). Blobs are stored once whatever the number of
repositories linking them, so:

- a repository's `bytes` are the sizes of the blobs it links (what a copy of it would hold);
- its `exclusive_bytes` are those of blobs no other repository links (what deleting it and
  collecting garbage would free);
- `linked_bytes` count each blob linked by any repository once, `shared_bytes` those linked by
  two or more;
- `stored_bytes` count every blob in storage, `unlinked_bytes` those no repository links
  (garbage, or blobs of uploads finished a moment ago that a manifest will soon name).

The walk streams listings and keeps one small record per distinct blob digest (its size, how
many repositories link it, and which one when only one does): memory grows with the number of
blobs, never with their sizes. For the whole store, blob sizes come from one walk of `blobs/`
(on S3 a paginated listing, 1,000 objects a request, never a HEAD per blob); for one repository,
one `size` call per blob it links.
`progress` is called as the walk goes (a progress bar; the background refresher yields to
other requests there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from errors import DigestInvalid
from storage import paths
from storage.digests import ALGORITHMS, Digest
from storage.driver import ObjectNotFound, StorageDriver
from storage.registry import Registry

Progress = Callable[[str, int], None]  # (what: "repository" | "blobs", how many more)
PROGRESS_EVERY = 256  # blobs sized between two progress calls


@dataclass
class RepositoryUsage:
    name: str
    bytes: int = 0  # blobs it links, each once
    blobs: int = 0
    exclusive_bytes: int | None = None  # blobs only it links; None when only it was walked


@dataclass
class UsageReport:
    repositories: list[RepositoryUsage] = field(default_factory=list)  # largest first
    linked_bytes: int = 0  # every blob linked by some repository, once
    linked_blobs: int = 0
    shared_bytes: int | None = None  # blobs linked by two repositories or more
    stored_bytes: int | None = None  # every blob stored (None: not walked, with --repository)
    stored_blobs: int | None = None
    unlinked_bytes: int | None = None  # stored, linked by no repository
    missing_blobs: int = 0  # links to blobs that are not stored (should be 0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Blob:
    __slots__ = ("owner", "refs", "size")

    def __init__(self, size: int, owner: int) -> None:
        self.size = size
        self.refs = 0
        self.owner = owner  # index of the first repository linking it


class StorageUsage:
    def __init__(self, registry: Registry, progress: Progress | None = None) -> None:
        self._registry = registry
        self._driver: StorageDriver = registry.driver
        self._progress = progress or (lambda what, n: None)
        self._stored: dict[str, int] | None = None  # digest -> size, from the walk of blobs/

    def measure(self, repository: str | None = None) -> UsageReport:
        """Every repository and the whole store; or only `repository` (no store-wide figures,
        no exclusive bytes: those need every repository walked)."""
        names = [repository] if repository is not None else self._repositories()
        self._stored = self._stored_sizes() if repository is None else None
        blobs: dict[str, _Blob] = {}
        report = UsageReport()
        missing: set[str] = set()
        for index, name in enumerate(names):
            usage = RepositoryUsage(name)
            for digest in self._linked(name):
                blob = blobs.get(digest)
                if blob is None:
                    size = self._size(digest)
                    if size is None:
                        missing.add(digest)
                        continue
                    blob = blobs[digest] = _Blob(size, index)
                    if len(blobs) % PROGRESS_EVERY == 0:
                        self._progress("blobs", PROGRESS_EVERY)
                blob.refs += 1
                usage.bytes += blob.size
                usage.blobs += 1
            report.repositories.append(usage)
            self._progress("repository", 1)
        report.missing_blobs = len(missing)
        report.linked_blobs = len(blobs)
        report.linked_bytes = sum(b.size for b in blobs.values())
        if repository is None:
            exclusive = [0] * len(report.repositories)
            shared = 0
            for blob in blobs.values():
                if blob.refs == 1:
                    exclusive[blob.owner] += blob.size
                else:
                    shared += blob.size
            for usage, value in zip(report.repositories, exclusive, strict=True):
                usage.exclusive_bytes = value
            report.shared_bytes = shared
            self._measure_store(report, blobs)
        report.repositories.sort(key=lambda u: (-u.bytes, u.name))
        return report

    def _repositories(self):
        """Every repository holding links, with or without a manifest (the catalog lists only
        those with one; a push in progress has layers first)."""
        pending = [c for c in self._driver.list_children(paths.REPOSITORIES) if not c.startswith("_")]
        while pending:
            name = pending.pop()
            children = self._driver.list_children(paths.repository(name))
            if "_layers" in children or "_manifests" in children:
                yield name
            pending.extend(f"{name}/{c}" for c in children if not c.startswith("_"))

    def _linked(self, name: str):
        """Digests of the blobs `name` links, each once (a manifest is also its own layer link
        when it was pushed as a blob, rare but possible)."""
        seen: set[str] = set()
        for kind in ("_layers", "_manifests"):
            base = f"{paths.repository(name)}/{kind}"
            for algorithm in self._driver.list_children(base):
                if algorithm not in ALGORITHMS:
                    continue
                for hex_ in self._driver.list_children(f"{base}/{algorithm}"):
                    digest = f"{algorithm}:{hex_}"
                    if digest not in seen:
                        seen.add(digest)
                        yield digest

    def _stored_sizes(self) -> dict[str, int]:
        """Every stored blob's size, from the listing: blobs/<alg>/<2 hex>/<hex>/data."""
        sizes: dict[str, int] = {}
        for info in self._driver.walk("blobs"):
            parts = info.key.split("/")
            if len(parts) == 5 and parts[4] == "data" and parts[1] in ALGORITHMS:
                sizes[f"{parts[1]}:{parts[3]}"] = info.size
                if len(sizes) % PROGRESS_EVERY == 0:
                    self._progress("blobs", 0)
        return sizes

    def _size(self, digest: str) -> int | None:
        if self._stored is not None and digest in self._stored:
            return self._stored[digest]
        try:  # one repository's; or stored after the walk (or missing: None)
            return self._driver.size(paths.blob_data(Digest.parse(digest)))
        except (ObjectNotFound, DigestInvalid):  # gone, or a stray name in a links directory
            return None

    def _measure_store(self, report: UsageReport, linked: dict[str, _Blob]) -> None:
        """Every blob stored, linked or not (the walk made before the repositories'); a blob
        stored after it, and linked meanwhile, is counted among the linked only."""
        stored = self._stored or {}
        report.stored_bytes = sum(stored.values())
        report.stored_blobs = len(stored)
        report.unlinked_bytes = sum(size for digest, size in stored.items() if digest not in linked)


def human_size(size: object) -> str:
    """1536 -> '1.5 KiB'; '-' for what is not a size (None, unknown). For people: the
    command line and the web pages."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
