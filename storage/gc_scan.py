"""What garbage collection reads: the keys of repositories, blobs and uploads from listings (one
request per 1,000 keys on object stores, never one per blob), and what each manifest references
(one read per distinct manifest per run). Memory is a few hundred bytes per key: what a set of
digests costs, never anything proportional to blob sizes."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from errors import DigestInvalid, ManifestInvalid
from storage import paths
from storage.digests import Digest
from storage.driver import ObjectInfo, ObjectNotFound, StorageDriver, StorageError
from storage.lru import LruCache
from storage.manifest_format import parse_manifest
from storage.upload_state import UploadState

log = logging.getLogger("berth.gc")


@dataclass
class RepositoryKeys:
    """One repository's keys, from a listing."""

    name: str
    layers: dict[Digest, ObjectInfo] = field(default_factory=dict)
    manifests: dict[Digest, ObjectInfo] = field(default_factory=dict)
    tags: dict[str, ObjectInfo] = field(default_factory=dict)
    referrers: dict[tuple[Digest, Digest], ObjectInfo] = field(default_factory=dict)  # (subject, referrer)
    doom_list: ObjectInfo | None = None  # left by a collection that crashed


def _digest(alg: str, hexpart: str) -> Digest | None:
    try:
        return Digest.parse(f"{alg}:{hexpart}")
    except DigestInvalid:
        return None


def _add(repos: dict[str, RepositoryKeys], info: ObjectInfo) -> None:
    parts = info.key.split("/")
    at = next((i for i, p in enumerate(parts) if i > 0 and p.startswith("_")), None)
    if at is None or at < 2:
        return
    name, kind, rest = "/".join(parts[1:at]), parts[at], parts[at + 1 :]
    repo = repos.get(name) or repos.setdefault(name, RepositoryKeys(name))
    if kind in ("_layers", "_manifests") and len(rest) == 2:
        digest = _digest(*rest)
        if digest is not None:
            (repo.layers if kind == "_layers" else repo.manifests)[digest] = info
    elif kind == "_tags" and len(rest) == 1:
        repo.tags[rest[0]] = info
    elif kind == "_referrers" and len(rest) == 3:
        subject, (alg, _, hexpart) = _digest(rest[0], rest[1]), rest[2].partition(".")
        referrer = _digest(alg, hexpart)
        if subject is not None and referrer is not None:
            repo.referrers[(subject, referrer)] = info
    elif kind == "_gc" and not rest:
        repo.doom_list = info
    # Anything else (other features' records) is not garbage collection's business.


def scan_repositories(driver: StorageDriver, only: str | None = None) -> dict[str, RepositoryKeys]:
    """Every repository's keys, from one listing of `repositories/` (or of one repository's
    own prefixes: a walk of `repositories/<name>` would also list the repositories under it)."""
    repos: dict[str, RepositoryKeys] = {}
    if only is None:
        for info in driver.walk(paths.REPOSITORIES):
            _add(repos, info)
        return repos
    repos[only] = RepositoryKeys(only)
    for kind in ("_layers", "_manifests", "_tags", "_referrers"):
        for info in driver.walk(f"{paths.repository(only)}/{kind}"):
            _add(repos, info)
    with contextlib.suppress(ObjectNotFound):
        repos[only].doom_list = driver.stat(paths.doom_list(only))
    return repos


@dataclass
class BlobKeys:
    data: dict[Digest, ObjectInfo] = field(default_factory=dict)
    tombstones: list[str] = field(default_factory=list)  # left by a collection that crashed


def scan_blobs(driver: StorageDriver) -> BlobKeys:
    found = BlobKeys()
    for info in driver.walk("blobs"):
        parts = info.key.split("/")
        if len(parts) != 5:
            continue
        digest = _digest(parts[1], parts[3])
        if digest is None:
            continue
        if parts[4] == "data":
            found.data[digest] = info
        elif parts[4] == "doomed":
            found.tombstones.append(info.key)
    return found


def linked_digests(repos: Iterable[RepositoryKeys]) -> set[Digest]:
    """Every digest some repository links, as a layer or as a manifest (pending ones too)."""
    linked: set[Digest] = set()
    for repo in repos:
        linked.update(repo.layers)
        linked.update(repo.manifests)
    return linked


@dataclass
class UploadKeys:
    upload_id: str
    last_active: float  # the newest write to any of its objects (state, data, lock, carries)
    size: int  # bytes its objects hold


def scan_uploads(driver: StorageDriver) -> dict[str, UploadKeys]:
    uploads: dict[str, UploadKeys] = {}
    for info in driver.walk(paths.UPLOADS):
        parts = info.key.split("/")
        if len(parts) < 3:
            continue
        found = uploads.get(parts[1])
        if found is None:
            uploads[parts[1]] = UploadKeys(parts[1], info.modified, info.size)
        else:
            found.last_active = max(found.last_active, info.modified)
            found.size += info.size
    return uploads


def read_state(driver: StorageDriver, upload_id: str) -> UploadState | None:
    try:
        return UploadState.from_json(upload_id, driver.read_bytes(paths.upload_state(upload_id)))
    except ObjectNotFound:
        return None
    except StorageError as exc:
        log.warning("garbage collection: upload %s has an unreadable state: %s", upload_id, exc)
        return None


def publishing_digests(driver: StorageDriver, uploads: Iterable[str]) -> set[Digest]:
    """Digests that upload sessions are publishing: a crash between the commit and the link
    leaves a blob no repository links yet, which the client's retry links."""
    found = set()
    for upload_id in uploads:
        state = read_state(driver, upload_id)
        if state is not None and state.publishing is not None:
            found.add(state.publishing.digest)
    return found


@dataclass(frozen=True)
class References:
    """What a manifest revision points at."""

    pending: bool
    blobs: frozenset[Digest]
    children: frozenset[Digest]


UNREADABLE = References(False, frozenset(), frozenset())


Parsed = tuple[frozenset[Digest], frozenset[Digest]]  # blobs, children
# Parsed manifests a collector keeps between runs (about 1 KiB each). A manifest's bytes never
# change under its digest, so an entry is never stale: a scheduled collection on S3/R2 then reads
# each manifest's link (its `pending` flag can change) but not its bytes again.
CARRIED_MANIFESTS = 10_000


class ManifestReader:
    """Reads what manifests reference, once per digest per run (revisions are shared), and not
    at all for a digest `carried` from an earlier run."""

    def __init__(self, driver: StorageDriver, carried: LruCache[Digest, Parsed] | None = None) -> None:
        self._driver = driver
        self._parsed: dict[Digest, Parsed] = {}
        self._carried: LruCache[Digest, Parsed] = carried if carried is not None else LruCache(0)

    def references(self, name: str, digest: Digest) -> References | None:
        """None when the revision is gone (deleted meanwhile)."""
        try:
            link = json.loads(self._driver.read_bytes(paths.manifest_link(name, digest)))
        except ObjectNotFound:
            return None
        except ValueError:
            link = {}
        pending = bool(link.get("pending")) if isinstance(link, dict) else False
        parsed = self._parsed.get(digest) or self._carried.get(digest)
        if parsed is None:
            try:
                manifest = parse_manifest(
                    self._driver.read_bytes(paths.blob_data(digest)), link.get("mediaType")
                )
            except (ObjectNotFound, ManifestInvalid, AttributeError) as exc:
                # Its data is gone or unreadable: it references nothing that could be kept for it.
                log.warning("garbage collection: manifest %s@%s cannot be read: %s", name, digest, exc)
                return UNREADABLE
            parsed = (
                frozenset(d.digest for d in manifest.blobs if not d.external),
                frozenset(d.digest for d in manifest.children),
            )
            self._carried.put(digest, parsed)
        self._parsed[digest] = parsed
        return References(pending, *parsed)
