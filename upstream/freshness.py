"""Tags pulled through stay fresh: once a tag's copy is older than REGISTRY_UPSTREAM_TAG_TTL, a
request for it asks the upstream (a HEAD, which registries such as Docker Hub do not count
against pull limits) whether the tag still names the same digest.

- Moved: the new manifest is fetched by its digest, verified and stored, and the tag points at
  it; the request is answered with it.
- Same digest: nothing but the check's time is written.
- Upstream unreachable, failing or answering 429: the stored copy is served (stale-if-error)
  and the log says so. A 429 also keeps the next check of the tag back until its Retry-After.
- Gone upstream (404): the stored copy is served and the log says so, once per TTL: a tag
  deleted upstream must not break deployments that run it.
Manifests and blobs by digest never change, so they are never checked. Only tags pulled through
are: they have a record; a tag pushed here has none, and a pulled tag pushed over (it names
another digest than its record says), or in a repository pushed to under no prefix, loses its
record and is never checked again.

One check per stale tag, however many requests want it:
- in a worker process, the first request checks and the others wait for its answer (up to
  CHECK_WAIT, then they serve the stored copy);
- across processes and instances, that first request takes the tag's lock in storage
  (`driver.exclusive`: an flock on local disk, a lease on S3) and reads the tag's record again
  once it holds it: a check that ended after the request arrived answers it too.
When a check ends, its time is recorded in storage (`_upstream/tags/<tag>/checked`,
storage/paths.py), so every instance sharing the storage agrees on when the tag is next due.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from errors import DigestInvalid, ManifestInvalid, ManifestUnknown
from storage import paths
from storage.digests import Digest
from storage.driver import ObjectBusy, ObjectNotFound, StorageDriver, StorageError
from storage.manifests import ManifestInfo
from storage.registry import Registry
from upstream.client import UpstreamThrottled, UpstreamUnavailable
from upstream.fetch import ManifestFetcher
from upstream.pacing import Slots, SlotsFull
from upstream.routing import Route

log = logging.getLogger("berth.upstream")

# How long a request waits for another request's check of the same tag (in this process, or
# for the storage lock) before it serves the stored copy.
CHECK_WAIT = 10.0


@dataclass(frozen=True)
class TagCheck:
    """What storage remembers of a pulled-through tag's last upstream check."""

    checked: float  # Unix time the last check's answer came (or the tag was pulled)
    digest: str  # what the tag named after it: if the tag names another now, it was pushed here
    not_before: float = 0.0  # Unix time before which no check may be made (a 429's Retry-After)

    def due(self, ttl: float, now: float) -> bool:
        return now >= max(self.checked + ttl, self.not_before)


class TagRecords:
    """The `_upstream/tags/<tag>/` records of a repository (storage/paths.py)."""

    def __init__(self, driver: StorageDriver) -> None:
        self._driver = driver

    def read(self, name: str, tag: str) -> TagCheck | None:
        try:
            doc = json.loads(self._driver.read_bytes(paths.upstream_tag_check(name, tag)))
            return TagCheck(float(doc["checked"]), str(doc["digest"]), float(doc.get("not_before", 0.0)))
        except ObjectNotFound:
            return None
        except (ValueError, TypeError, KeyError, AttributeError):
            return TagCheck(0.0, "")  # unreadable: due now, and rewritten by the check

    def write(self, name: str, tag: str, check: TagCheck) -> None:
        doc = {"checked": check.checked, "digest": check.digest, "not_before": check.not_before}
        self._driver.write_bytes(paths.upstream_tag_check(name, tag), json.dumps(doc).encode())

    def drop(self, name: str, tag: str) -> None:
        self._driver.delete(paths.upstream_tag_check(name, tag))

    def lock(self, name: str, tag: str, wait: float) -> AbstractContextManager[None]:
        return self._driver.exclusive(paths.upstream_tag_lock(name, tag), wait=wait)


class Flights:
    """In-process single flight: the first caller for a key leads, later ones wait for it."""

    def __init__(self) -> None:
        self._running: dict[object, threading.Event] = {}
        self._guard = threading.Lock()

    def join(self, key: object) -> threading.Event | None:
        """None: the caller leads and must call done(key). Otherwise the leader's event."""
        with self._guard:
            running = self._running.get(key)
            if running is None:
                self._running[key] = threading.Event()
            return running

    def done(self, key: object) -> None:
        with self._guard:
            self._running.pop(key).set()


class TagRefresher:
    def __init__(
        self,
        registry: Registry,
        fetcher: ManifestFetcher,
        slots: Slots,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._fetcher = fetcher
        self._slots = slots
        self._ttl = ttl
        self._clock = clock
        self.records = TagRecords(registry.driver)
        self._flights = Flights()

    def pulled(self, name: str, tag: str, digest: Digest) -> None:
        """A tag was just pulled through: it is fresh for a TTL from now."""
        self.records.write(name, tag, TagCheck(self._clock(), str(digest)))

    def due(self, name: str, tag: str) -> float | None:
        """When a tag is due for its upstream check: the time this request started looking (read
        it before the tag itself: a check writes the tag, then its record, so a request that
        finds the record fresh finds the tag as that check left it). None if not due: pushed
        here, pulled before records existed, or checked recently."""
        arrived = self._clock()
        check = self.records.read(name, tag)
        return arrived if check is not None and check.due(self._ttl, arrived) else None

    def refresh(
        self, name: str, tag: str, info: ManifestInfo, routes: list[Route], arrived: float
    ) -> ManifestInfo:
        """The manifest `tag` names once a check (this request's, or one that ended after it
        arrived) has answered; `info` is what storage had."""
        leader = self._flights.join((name, tag))
        if leader is not None:
            leader.wait(CHECK_WAIT)
        else:
            try:
                self._lead(name, tag, routes, arrived)
            except StorageError as exc:  # the lock or the record could not be written: the
                # check is what failed, not the stored copy
                log.warning(
                    "tag %s:%s not checked upstream (storage: %s): serving the stored copy", name, tag, exc
                )
            finally:
                self._flights.done((name, tag))
        try:
            return self._registry.manifests.resolve(name, tag)
        except ManifestUnknown:
            return info  # deleted meanwhile: this request still gets what it found

    def _lead(self, name: str, tag: str, routes: list[Route], arrived: float) -> None:
        try:
            with self.records.lock(name, tag, wait=CHECK_WAIT):
                check = self.records.read(name, tag)
                if check is None or check.checked >= arrived or not check.due(self._ttl, self._clock()):
                    return  # checked by another process since this request arrived
                try:
                    current = self._registry.manifests.resolve(name, tag).digest
                except ManifestUnknown:
                    return  # deleted meanwhile
                pushed = not routes[0].prefixed and self._registry.manifests.is_pushed(name)
                if pushed or (check.digest and check.digest != str(current)):
                    self.records.drop(name, tag)  # pushed here since: a local tag now
                    return
                self._check(name, tag, routes, current)
        except ObjectBusy:
            log.info("tag %s:%s is being checked upstream elsewhere: serving the stored copy", name, tag)
        except ObjectNotFound:
            pass  # the record went away under us (the repository was deleted)

    def _check(self, name: str, tag: str, routes: list[Route], current: Digest) -> None:
        failed, throttled = False, 0.0
        for route in routes:
            try:
                with self._slots.held():
                    present, digest = self._fetcher.digest_of_tag(route, tag)
                    moved = (
                        self._store_moved(name, tag, route, digest, current)
                        if present and digest != current
                        else None
                    )
            except UpstreamThrottled as exc:
                throttled = max(throttled, exc.retry_after)
                continue
            except (UpstreamUnavailable, SlotsFull) as exc:
                log.warning("upstream check of tag %s:%s at %s: %s", name, tag, route.source, exc)
                failed = True
                continue
            if not present:
                continue
            self.records.write(name, tag, TagCheck(self._clock(), str(moved or current)))
            if moved is not None:
                log.info("tag %s:%s moved upstream at %s: %s -> %s", name, tag, route.source, current, moved)
            return
        now = self._clock()
        self.records.write(name, tag, TagCheck(now, str(current), now + throttled if throttled else 0.0))
        if throttled:
            log.warning(
                "upstream asked to wait %.0f s (429) before checking tag %s:%s: serving the stored copy %s",
                throttled, name, tag, current,
            )  # fmt: skip
        elif failed:
            log.warning(
                "tag %s:%s could not be checked upstream: serving the stored copy %s", name, tag, current
            )
        else:
            log.warning(
                "tag %s:%s is gone upstream (404): still serving the stored copy %s", name, tag, current
            )

    def _store_moved(
        self, name: str, tag: str, route: Route, digest: Digest | None, current: Digest
    ) -> Digest | None:
        """Fetch and store what `tag` names upstream now (by `digest` when the upstream said
        it); the digest stored, or None if it turned out to be the same manifest after all."""
        fetched = self._fetcher.manifest(route, str(digest) if digest else tag, digest)
        if fetched is None:
            raise UpstreamUnavailable(f"{route.source}: tag {tag} vanished between HEAD and GET")
        body, content_type = fetched
        actual = digest or Digest.of(body)
        if actual == current:
            return None
        if not route.prefixed and self._registry.manifests.is_pushed(name):
            return None  # pushed here meanwhile: local content wins
        try:
            self._registry.manifests.put(name, str(actual), body, content_type, [tag], from_upstream=True)
        except (ManifestInvalid, DigestInvalid) as exc:
            raise UpstreamUnavailable(f"{route.source}: manifest {actual} not stored: {exc}") from None
        return actual
