"""Garbage collection: storage that shrinks, online, on any number of instances sharing one
storage, while pushes, pulls, mounts and deletes go on.

What is collected:
- unreferenced (the default): blob data no repository links; layer links no manifest of their
  repository references; referrer entries whose referrer manifest is gone; manifest revisions a
  PUT left pending (it crashed, or gave up during a collection);
- untagged (on request): also manifests no tag reaches, following indexes to their children and
  keeping the referrers of every manifest that stays;
- upload sessions idle for longer than the upload TTL, with their data and multipart uploads, and
  multipart uploads that no session owns (storage/gc_uploads.py).

Nothing younger than the grace period is collected (measured by the store's own clock). The
grace period makes races rare; what makes them safe is the protocol in storage/tombstones.py:
announce, look again, decide, delete, withdraw. One collection runs at a time (the `gc/lock`
lease); a second one finds it busy.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import asdict, dataclass, field

from errors import DigestInvalid, Unavailable
from settings import GC_MODES
from storage import paths
from storage.digests import Digest
from storage.driver import ObjectBusy, ObjectInfo, ObjectNotFound, StorageDriver
from storage.gc_scan import (
    CARRIED_MANIFESTS,
    ManifestReader,
    References,
    RepositoryKeys,
    linked_digests,
    publishing_digests,
    scan_blobs,
    scan_repositories,
    scan_uploads,
)
from storage.lru import LruCache
from storage.tombstones import DoomList, Tombstones

log = logging.getLogger("berth.gc")

MODES = GC_MODES


class CollectionRunning(Unavailable):
    message = "another garbage collection is running"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "60"})


@dataclass
class GcReport:
    """What a run removed (or, dry, would remove)."""

    mode: str
    dry_run: bool
    repository: str | None = None
    repositories: int = 0  # looked at
    layer_links: int = 0
    manifests: int = 0
    referrers: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    multipart_uploads: int = 0
    spared: int = 0  # announced, then kept: a request referenced them meanwhile
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class Progress:
    """Where a long run says how far it got (the command line draws a bar). Does nothing."""

    def phase(self, name: str, total: int | None = None) -> None: ...

    def advance(self, items: int = 1, nbytes: int = 0) -> None: ...


@dataclass
class _Plan:
    links: set[Digest] = field(default_factory=set)
    manifests: set[Digest] = field(default_factory=set)
    referrer_entries: set[str] = field(default_factory=set)  # keys, deleted without announcing


class GarbageCollector:
    def __init__(
        self,
        driver: StorageDriver,
        grace: float,
        upload_ttl: float,
        progress: Progress | None = None,
    ) -> None:
        self._driver = driver
        self._grace = grace
        self._upload_ttl = upload_ttl
        self._progress = progress or Progress()
        self._tombstones = Tombstones(driver)
        self._parsed_manifests: LruCache = LruCache(CARRIED_MANIFESTS)  # kept between runs

    # -- running -----------------------------------------------------------------------------

    def collect(
        self,
        mode: str = "unreferenced",
        repository: str | None = None,
        dry_run: bool = False,
        uploads: bool = True,
        wait: float = 0.0,
    ) -> GcReport:
        """One collection of everything (or of one repository: its links and manifests, and
        only blob data no other repository links). CollectionRunning if another one holds the
        lease for longer than `wait` seconds."""
        if mode not in MODES:
            raise ValueError(f"unknown garbage collection mode {mode!r}")
        started = time.monotonic()
        report = GcReport(mode, dry_run, repository)
        if dry_run:
            # A dry run writes nothing (no lease, no state): it reports what the first look finds.
            self._run(report, f"dry-{uuid.uuid4().hex[:8]}", time.time(), uploads)
        else:
            with self._lease(wait):
                now = self._store_now()
                run = uuid.uuid4().hex
                state = self._tombstones.begin_run(run)
                try:
                    self._run(report, run, now, uploads)
                finally:
                    self._tombstones.end_run(state)
        report.seconds = round(time.monotonic() - started, 3)
        log.info("garbage collection %s: %s", "(dry run)" if dry_run else "done", report.as_dict())
        return report

    def purge_uploads(self, dry_run: bool = False, wait: float = 0.0) -> GcReport:
        """Only the upload part of a collection (storage/gc_uploads.py)."""
        from storage.gc_uploads import purge_uploads

        started = time.monotonic()
        report = GcReport("uploads", dry_run)
        if dry_run:
            purge_uploads(self._driver, time.time() - self._upload_ttl, report, self._progress)
        else:
            with self._lease(wait):
                purge_uploads(self._driver, self._store_now() - self._upload_ttl, report, self._progress)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def _run(self, report: GcReport, run: str, now: float, uploads: bool) -> None:
        cutoff = now - self._grace
        self._progress.phase("repositories")
        repos = scan_repositories(self._driver, report.repository)
        # One listing of blobs/ for the leftovers and the blobs' first look: only a collection
        # deletes data, one at a time, and data written after it started is too young to go.
        blob_keys = scan_blobs(self._driver)
        if not report.dry_run:
            self._clear_leftovers(repos.values(), blob_keys.tombstones)
        reader = ManifestReader(self._driver, self._parsed_manifests)
        released: set[Digest] = set()  # digests whose links this run deleted
        self._progress.phase("repositories", len(repos))
        for repo in repos.values():
            report.repositories += 1
            released |= self._collect_repository(repo, reader, report, run, cutoff)
            self._progress.advance()
        self._collect_blobs(report, run, cutoff, repos, released, blob_keys.data)
        if uploads and report.repository is None:
            from storage.gc_uploads import purge_uploads

            purge_uploads(self._driver, now - self._upload_ttl, report, self._progress)

    def _lease(self, wait: float):
        # The lock's parent must exist on local disk (locks live beside what they protect).
        self._driver.write_bytes(paths.GC_CLOCK, b"")
        lock = self._driver.exclusive(paths.GC_LOCK, wait=wait)

        class _Held:
            def __enter__(self_inner):
                try:
                    lock.__enter__()
                except ObjectBusy:
                    raise CollectionRunning() from None

            def __exit__(self_inner, *exc):
                return lock.__exit__(*exc)

        return _Held()

    def _store_now(self) -> float:
        """The store's clock, not this machine's: ages are compared with times the store wrote."""
        self._driver.write_bytes(paths.GC_CLOCK, str(time.time()).encode())
        return self._driver.stat(paths.GC_CLOCK).modified

    def _clear_leftovers(self, repos: Iterable[RepositoryKeys], tombstones: list[str]) -> None:
        """Announcements a crashed collection left: requests meeting them wait and give up."""
        stale = [paths.doom_list(r.name) for r in repos if r.doom_list is not None]
        stale += tombstones
        stale += [i.key for i in self._driver.walk("gc/verdicts")]
        if stale:
            log.warning("garbage collection: clearing %d announcements a crashed run left", len(stale))
            self._driver.delete_many(stale)

    # -- repositories ------------------------------------------------------------------------

    def _collect_repository(
        self, repo: RepositoryKeys, reader: ManifestReader, report: GcReport, run: str, cutoff: float
    ) -> set[Digest]:
        """Returns the digests whose links it deleted (their data may now be unreferenced)."""
        plan = self._plan(repo, reader, report.mode, cutoff)
        if report.dry_run:
            report.layer_links += len(plan.links)
            report.manifests += len(plan.manifests)
            report.referrers += len(plan.referrer_entries)
            # As if deleted, so the blob data phase sees what they alone linked.
            for digest in plan.links:
                repo.layers.pop(digest, None)
            for digest in plan.manifests:
                repo.manifests.pop(digest, None)
            return plan.links | plan.manifests
        if not plan.links and not plan.manifests:
            if plan.referrer_entries:
                self._driver.delete_many(plan.referrer_entries)  # entries of nothing: no one refers
            report.referrers += len(plan.referrer_entries)
            return set()
        doomed = DoomList(run, frozenset(map(str, plan.links)), frozenset(map(str, plan.manifests)))
        self._tombstones.announce(repo.name, doomed)
        try:
            # The second look: whatever a request referenced since the first is kept.
            again = scan_repositories(self._driver, repo.name)[repo.name]
            second = self._plan(again, reader, report.mode, cutoff, first=repo)
            links = plan.links & second.links
            manifests = plan.manifests & second.manifests
            report.spared += len(plan.links - links) + len(plan.manifests - manifests)
            decided = DoomList(
                run,
                doomed.links,
                doomed.manifests,
                True,
                frozenset(map(str, links)),
                frozenset(map(str, manifests)),
            )
            self._tombstones.announce(repo.name, decided)
            entries = second.referrer_entries | {
                info.key for (_, referrer), info in again.referrers.items() if referrer in manifests
            }
            # Referrer entries first, then the revisions, then the layers they referenced.
            self._driver.delete_many(entries)
            self._driver.delete_many(paths.manifest_link(repo.name, d) for d in manifests)
            self._driver.delete_many(paths.layer_link(repo.name, d) for d in links)
        finally:
            self._tombstones.withdraw(repo.name)
        report.layer_links += len(links)
        report.manifests += len(manifests)
        report.referrers += len(entries)
        if links or manifests:
            log.info(
                "garbage collection: %s lost %d links and %d manifests", repo.name, len(links), len(manifests)
            )
        return links | manifests

    def _plan(
        self,
        repo: RepositoryKeys,
        reader: ManifestReader,
        mode: str,
        cutoff: float,
        first: RepositoryKeys | None = None,
    ) -> _Plan:
        """What may go. On the second look (`first` given), anything written again since the
        first look counts as young: a request just relied on it."""

        def young(info: ObjectInfo, earlier: ObjectInfo | None) -> bool:
            if info.modified >= cutoff:
                return True
            return first is not None and (earlier is None or earlier.version != info.version)

        refs: dict[Digest, References] = {}
        for digest in repo.manifests:
            found = reader.references(repo.name, digest)
            if found is not None:
                refs[digest] = found
        before_manifests = first.manifests if first else {}
        old = {d for d in refs if not young(repo.manifests[d], before_manifests.get(d))}
        if mode == "untagged":
            kept = self._reachable(repo, refs, roots=set(refs) - old)
        else:
            kept = {d for d in refs if not (refs[d].pending and d in old)}
        referenced: set[Digest] = set()
        for digest in kept:
            referenced |= refs[digest].blobs
        before_layers = first.layers if first else {}
        doomed_links = {
            d
            for d, info in repo.layers.items()
            if d not in referenced and not young(info, before_layers.get(d))
        }
        # Old referrer entries of revisions that are gone (a delete cut short): nothing refers.
        dead_entries = {
            info.key
            for (_, referrer), info in repo.referrers.items()
            if referrer not in refs and info.modified < cutoff
        }
        return _Plan(doomed_links, set(refs) - kept, dead_entries)

    def _reachable(
        self, repo: RepositoryKeys, refs: dict[Digest, References], roots: set[Digest]
    ) -> set[Digest]:
        """Untagged mode: what tags (and young revisions) reach, through index children and the
        referrers of every revision that stays."""
        for tag in repo.tags:
            # A tag deleted meanwhile, or unreadable, reaches nothing.
            with suppress(ObjectNotFound, DigestInvalid, UnicodeDecodeError):
                roots.add(Digest.parse(self._driver.read_bytes(paths.tag(repo.name, tag)).decode().strip()))
        referrers_of: dict[Digest, set[Digest]] = {}
        for subject, referrer in repo.referrers:
            referrers_of.setdefault(subject, set()).add(referrer)
        kept: set[Digest] = set()
        pending = [d for d in roots if d in refs]
        while pending:
            digest = pending.pop()
            if digest in kept:
                continue
            kept.add(digest)
            for nxt in (*refs[digest].children, *referrers_of.get(digest, ())):
                if nxt in refs and nxt not in kept:
                    pending.append(nxt)
        return kept

    # -- blob data ---------------------------------------------------------------------------

    def _collect_blobs(
        self,
        report: GcReport,
        run: str,
        cutoff: float,
        repos: dict[str, RepositoryKeys],
        released: set[Digest],
        blobs: dict[Digest, ObjectInfo],
    ) -> None:
        self._progress.phase("blobs")
        if report.repository is not None:
            # One repository's collection takes only data its deleted links pointed at.
            blobs = {d: i for d, i in blobs.items() if d in released}
            if not blobs:
                return
            # Every repository's links count (this one's, dry, as the run would leave them).
            fresh = scan_repositories(self._driver)
            repos = {**fresh, report.repository: repos[report.repository]} if report.dry_run else fresh
        elif not report.dry_run:
            repos = scan_repositories(self._driver)  # after the repositories' deletions
        linked = linked_digests(repos.values())
        candidates = {d: i for d, i in blobs.items() if d not in linked and i.modified < cutoff}
        if candidates:  # sessions publishing one of them keep it (each session's state is a read)
            publishing = publishing_digests(self._driver, scan_uploads(self._driver))
            candidates = {d: i for d, i in candidates.items() if d not in publishing}
        if report.dry_run or not candidates:
            if report.dry_run:
                report.blobs += len(candidates)
                report.blob_bytes += sum(i.size for i in candidates.values())
            return
        self._progress.phase("announcing", len(candidates))
        self._tombstones.announce_blobs(run, candidates)
        try:
            # The second look: links, publishing sessions, and the data itself written again.
            linked = linked_digests(scan_repositories(self._driver).values())
            linked |= publishing_digests(self._driver, scan_uploads(self._driver))
            now_there = scan_blobs(self._driver).data
            final = {
                d: i
                for d, i in candidates.items()
                if d not in linked and d in now_there and now_there[d].version == i.version
            }
            report.spared += len(candidates) - len(final)
            self._tombstones.decide_blobs(run, final)
            self._progress.phase("deleting", len(final))
            self._driver.delete_many(paths.blob_data(d) for d in final)
            report.blobs += len(final)
            report.blob_bytes += sum(i.size for i in final.values())
            self._progress.advance(len(final), sum(i.size for i in final.values()))
        finally:
            self._tombstones.withdraw_blobs(run, candidates)
