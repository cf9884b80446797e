"""How garbage collection and the requests that create references agree on what may be deleted:
online, on any number of instances sharing one storage, with no other service, and with no delay
that a slow client could outlast. The README's "Garbage collection" section tells the same story
with the races it closes.

The collector announces what it is about to delete before deleting it: a tombstone beside blob
data (`blobs/<alg>/<hh>/<hex>/doomed`), a doom list per repository for links and manifests
(`repositories/<name>/_gc`). Then it looks at every reference again, writes its verdict (what it
deletes after that second look), deletes, and withdraws the announcements. While it runs,
`gc/state` says so, with a counter that grows by one per run.

A request that creates a reference (an upload or mount linking a blob, a manifest with its tags, a
HEAD renewing an old link) reads `gc/state` before it starts checking and again after it wrote the
reference. Same counter and no collection running either time: no collection overlapped it, and
it is done. Otherwise it reads the announcements for what it relies on, and where one concerns it,
waits for the verdict: kept, or deleted (then it gives up: 503 to retry, or MANIFEST_BLOB_UNKNOWN,
or 404 for a HEAD). Storage is linearizable (local disk, S3 and R2 are strongly consistent), so for
every reference and every announcement one side sees the other: either the collector's second
look finds the reference and keeps what it points at, or the request finds the announcement.

Requests never delete what they wrote when they give up (another request may rely on the same
key): a manifest stays pending, invisible to readers, until its checks pass, and a link left to
data that was deleted is harmless, because everything that relies on a link also checks the data.

Only one collection runs at a time (a lease in storage, storage/gc.py). One that crashed leaves
announcements without verdicts; requests meeting them wait up to VERDICT_WAIT and answer 503, and
the next collection clears them before anything else."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from errors import Unavailable
from storage import paths
from storage.digests import Digest
from storage.driver import ObjectNotFound, StorageDriver, StorageError

VERDICT_WAIT = 30.0  # how long a request waits for a collection's verdict before a 503
POLL = 0.25


class BeingCollected(Unavailable):
    """A request met a collection deleting what it relies on: try again shortly."""

    message = "garbage collection is removing content this request needs; retry"

    def __init__(self, detail: object = None) -> None:
        super().__init__(detail=detail, headers={"Retry-After": "5"})


@dataclass(frozen=True)
class GcState:
    counter: int = 0
    active: bool = False
    run: str = ""

    def to_json(self) -> bytes:
        return json.dumps({"counter": self.counter, "active": self.active, "run": self.run}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> GcState:
        try:
            doc = json.loads(raw)
            return cls(int(doc["counter"]), bool(doc["active"]), str(doc["run"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"corrupt garbage collection state: {exc}") from exc


@dataclass(frozen=True)
class DoomList:
    """What a collection is about to delete in one repository, and, once decided, what it does
    delete after its second look (`decided`: False until then)."""

    run: str
    links: frozenset[str] = field(default_factory=frozenset)  # layer link digests
    manifests: frozenset[str] = field(default_factory=frozenset)  # manifest digests
    decided: bool = False
    deleted_links: frozenset[str] = field(default_factory=frozenset)
    deleted_manifests: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> bytes:
        doc: dict = {"run": self.run, "links": sorted(self.links), "manifests": sorted(self.manifests)}
        if self.decided:
            doc["deleted"] = {
                "links": sorted(self.deleted_links),
                "manifests": sorted(self.deleted_manifests),
            }
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DoomList:
        try:
            doc = json.loads(raw)
            deleted = doc.get("deleted")
            return cls(
                str(doc["run"]),
                frozenset(map(str, doc["links"])),
                frozenset(map(str, doc["manifests"])),
                deleted is not None,
                frozenset(map(str, (deleted or {}).get("links", []))),
                frozenset(map(str, (deleted or {}).get("manifests", []))),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"corrupt garbage collection list: {exc}") from exc


class Tombstones:
    """Both sides of the protocol, over the storage driver."""

    def __init__(self, driver: StorageDriver, clock=time.monotonic, sleep=time.sleep) -> None:
        self._driver = driver
        self._clock = clock
        self._sleep = sleep

    def state(self) -> GcState:
        try:
            return GcState.from_json(self._driver.read_bytes(paths.GC_STATE))
        except ObjectNotFound:
            return GcState()

    def section(self) -> Section:
        """Start a request's critical section (before its checks)."""
        return Section(self, self.state())

    # -- the requests' side ------------------------------------------------------------------

    def blob_doomed(self, digest: Digest) -> bool:
        return self._driver.exists(paths.blob_tombstone(digest))

    def layer_kept(self, name: str, digest: Digest, wait: bool = True) -> bool:
        """After writing a reference to `name`'s layer `digest`: whether the link and the data
        stay (waiting for a verdict where a collection announced either; without `wait`, an
        announcement alone is enough to say no)."""
        return (
            self._survives_doom_list(name, str(digest), manifest=False, wait=wait)
            and self._data_survives(digest, wait=wait)
            and self._driver.exists(paths.layer_link(name, digest))
        )

    def manifest_kept(self, name: str, digest: Digest) -> bool:
        return (
            self._survives_doom_list(name, str(digest), manifest=True)
            and self._data_survives(digest)
            and self._driver.exists(paths.manifest_link(name, digest))
        )

    def _survives_doom_list(self, name: str, digest: str, manifest: bool, wait: bool = True) -> bool:
        deadline = self._clock() + VERDICT_WAIT
        while True:
            doomed = self._doom_list(name)
            if doomed is None:
                return True  # none, or withdrawn: the caller checks the key still exists
            if digest not in (doomed.manifests if manifest else doomed.links):
                return True
            if doomed.decided:
                return digest not in (doomed.deleted_manifests if manifest else doomed.deleted_links)
            if not wait:
                return False
            if self._clock() > deadline:
                raise BeingCollected(detail={"digest": digest})
            self._sleep(POLL)

    def _data_survives(self, digest: Digest, wait: bool = True) -> bool:
        deadline = self._clock() + VERDICT_WAIT
        while True:
            try:
                raw = self._driver.read_bytes(paths.blob_tombstone(digest))
            except ObjectNotFound:
                return self._driver.exists(paths.blob_data(digest))
            run = _run_of(raw)
            verdict = self._blob_verdict(run)
            if verdict is not None:
                return str(digest) not in verdict and self._driver.exists(paths.blob_data(digest))
            if not wait:
                return False
            if self._clock() > deadline:
                raise BeingCollected(detail={"digest": str(digest)})
            self._sleep(POLL)

    def _doom_list(self, name: str) -> DoomList | None:
        try:
            return DoomList.from_json(self._driver.read_bytes(paths.doom_list(name)))
        except ObjectNotFound:
            return None

    def _blob_verdict(self, run: str) -> frozenset[str] | None:
        try:
            doc = json.loads(self._driver.read_bytes(paths.gc_verdict(run)))
            return frozenset(map(str, doc["deleted"]))
        except ObjectNotFound:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"corrupt garbage collection verdict: {exc}") from exc

    # -- the collector's side ----------------------------------------------------------------

    def begin_run(self, run: str) -> GcState:
        state = GcState(self.state().counter + 1, True, run)
        self._driver.write_bytes(paths.GC_STATE, state.to_json())
        return state

    def end_run(self, state: GcState) -> None:
        self._driver.write_bytes(paths.GC_STATE, GcState(state.counter, False, state.run).to_json())

    def announce(self, name: str, doomed: DoomList) -> None:
        self._driver.write_bytes(paths.doom_list(name), doomed.to_json())

    def withdraw(self, name: str) -> None:
        self._driver.delete(paths.doom_list(name))

    def announce_blobs(self, run: str, digests: Iterable[Digest]) -> None:
        body = json.dumps({"run": run}).encode()
        for digest in digests:
            self._driver.write_bytes(paths.blob_tombstone(digest), body)

    def decide_blobs(self, run: str, deleted: Iterable[Digest]) -> None:
        body = json.dumps({"deleted": sorted(str(d) for d in deleted)}).encode()
        self._driver.write_bytes(paths.gc_verdict(run), body)

    def withdraw_blobs(self, run: str, digests: Iterable[Digest]) -> None:
        self._driver.delete_many(paths.blob_tombstone(d) for d in digests)
        self._driver.delete(paths.gc_verdict(run))


class Section:
    """A request's critical section: `overlapped()` after writing its reference says whether a
    collection may have run meanwhile (then the slow checks of Tombstones apply)."""

    def __init__(self, tombstones: Tombstones, first: GcState) -> None:
        self.tombstones = tombstones
        self._first = first

    @property
    def collecting(self) -> bool:
        """A collection was running when the section started."""
        return self._first.active

    def overlapped(self) -> bool:
        last = self.tombstones.state()
        return self._first.active or last.active or last.counter != self._first.counter


def _run_of(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["run"])
    except (ValueError, KeyError, TypeError):
        return ""
