"""Garbage collection under load (issue #11): registry clients and collectors running at once on
one storage, then the checks of the outcome. The clients' requests are in tests/gc_clients.py,
the independent walk of the storage in tests/gc_audit.py.

Clients push images built from a shared pool of layers, docker-style (HEAD the layer in the
target repository: 200 skips it; else mount it from another repository known to hold it: 201
is done, 202 falls back to an upload, monolithic or in chunks), some wait before their
manifest PUT (up to twice the grace period), push indexes over their images (children by
digest first, HEAD-then-skip too), push the same manifest again under new tags, pull images
back and verify every byte, and delete tags (and sometimes whole manifests, by digest).
Meanwhile collections run back to back in this process against the same storage, mostly
`unreferenced`, one in four `untagged`, and a second collector contends for the lease, by
itself or through `POST /v2/<name>/gc` on the servers.

Afterwards (`Workload.finish`): one more collection past the grace, then every manifest that
got a 201 and still has a tag no client deleted pulls completely, each blob verified against
its digest (a loss otherwise), and an independent walk of the storage (before and after that
collection: plain os.walk or boto3 listings, its own parsing) counts what nothing references: blob data no repository
links, layer links no manifest of their repository references, pending manifests, upload
sessions, multipart uploads, leftovers of the collector's announcements.

Used by tests/e2e/test_gc_stress.py and bench/gc_stress.py."""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from storage.gc import CollectionRunning, GarbageCollector
from tests.gc_audit import StorageView, audit
from tests.gc_clients import (
    CONFIG_TYPE,
    LAYER_TYPE,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    Ledger,
    Puller,
    Pusher,
    Record,
    Tally,
    WorkloadError,
    sha256,
)


@dataclass
class Config:
    clients: int = 8
    images: int = 200  # new images pushed (re-pushes and indexes come on top)
    seconds: float = 0.0  # and keep pushing until this long has passed
    repositories: int = 4
    pool: int = 40  # shared layers
    grace: float = 1.5  # the servers' REGISTRY_GC_GRACE, and the collectors'
    slow: float = 0.15  # share of pushes that wait before the manifest PUT (up to 2x grace)
    repush: float = 0.1  # share of rounds that push an existing manifest under a new tag
    index: float = 0.1  # share of rounds that push an index over images of the repository
    delete_tag: float = 0.2
    delete_manifest: float = 0.05  # delete a whole manifest by digest
    pull: float = 0.3
    layers: tuple[int, int] = (2, 4)  # layers from the pool per image (and 30%: one of its own)
    pause: float = 0.0  # between collections (0: back to back)
    clock_resolution: float = 0.0  # of the store's times: 1 s on S3
    seed: int = 11


class ClientThread(threading.Thread):
    def __init__(self, workload: Workload, number: int) -> None:
        super().__init__(name=f"gc-client-{number}", daemon=True)
        self.w = workload
        rng = random.Random(workload.config.seed * 1000 + number)
        self.client = Client(workload.urls, workload.auth, workload.tally, rng)
        window = workload.config.grace - workload.config.clock_resolution
        self.pusher = Pusher(self.client, workload.ledger, window)
        self.puller = Puller(self.client, workload.ledger)

    def run(self) -> None:
        while (n := self.w.next_image()) is not None:
            for step in (self.push_image, self.repush, self.push_index, self.delete, self.pull):
                try:
                    step(n)
                except WorkloadError as exc:
                    self.w.tally.error(str(exc))
                except Exception as exc:  # a bug in the workload must show, not hang the test
                    self.w.tally.error(f"{type(exc).__name__}: {exc}")

    @property
    def rng(self) -> random.Random:
        return self.client.rng

    def _maybe_wait(self) -> bool:
        if self.rng.random() >= self.w.config.slow:
            return False
        time.sleep(self.rng.uniform(0, 2 * self.w.config.grace))
        return True

    def push_image(self, n: int) -> None:
        rng = self.rng
        repo = rng.choice(self.w.repos)
        layers = rng.sample(self.w.pool, k=rng.randint(*self.w.config.layers))
        if rng.random() < 0.3:
            layers.append(os.urandom(rng.randint(64, 4096)))  # a layer of its own
        config = json.dumps({"architecture": "amd64", "os": "linux", "image": n, "r": os.urandom(6).hex()})
        blobs = {sha256(b): b for b in [config.encode(), *layers]}
        started = time.monotonic()
        for digest, data in blobs.items():
            self.pusher.ensure_blob(repo, digest, data)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "digest": sha256(config.encode()), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": sha256(b), "size": len(b)} for b in layers],
        }
        body = json.dumps(doc).encode()
        record = Record(repo, sha256(body), OCI_MANIFEST, body, blobs, [], rng.random() < 0.25)
        waited = self._maybe_wait()
        if self.pusher.put_manifest(record, f"i{n}", started, waited):
            self.w.ledger.acknowledged(record, f"i{n}")
            self.w.tally.add("images_acknowledged")

    def repush(self, n: int) -> None:
        """The same layers and manifest under a new tag (docker tag + docker push)."""
        if self.rng.random() >= self.w.config.repush:
            return
        record = self.w.ledger.pick(self.rng, deletable=False, children=[])
        if record is None:
            return
        started = time.monotonic()
        for digest, data in record.blobs.items():
            self.pusher.ensure_blob(record.repo, digest, data)
        waited = self._maybe_wait()
        if self.pusher.put_manifest(record, f"r{n}", started, waited):
            self.w.ledger.acknowledged(record, f"r{n}")
            self.w.tally.add("repushes_acknowledged")

    def push_index(self, n: int) -> None:
        rng = self.rng
        if rng.random() >= self.w.config.index:
            return
        repo = rng.choice(self.w.repos)
        children = {
            r.digest: r
            for r in (self.w.ledger.pick(rng, repo, deletable=False, children=[]) for _ in range(3))
            if r is not None
        }
        if not children:
            return
        started = time.monotonic()
        for child in children.values():
            self.pusher.push_child(child)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d, "size": len(r.body)}
                for d, r in sorted(children.items())
            ],
        }
        body = json.dumps(doc).encode()
        record = Record(repo, sha256(body), OCI_INDEX, body, {}, sorted(children), False)
        waited = self._maybe_wait()
        if self.pusher.put_manifest(record, f"x{n}", started, waited):
            self.w.ledger.acknowledged(record, f"x{n}")
            self.w.tally.add("indexes_acknowledged")

    def delete(self, n: int) -> None:
        rng, c = self.rng, self.client
        if rng.random() < self.w.config.delete_tag:
            taken = self.w.ledger.take_tag(rng)
            if taken is not None:
                record, tag = taken
                r = c.call("DELETE", f"/v2/{record.repo}/manifests/{tag}", {202, 404})
                if r.status_code == 404:
                    self.w.tally.loss(f"DELETE {record.repo}:{tag}: 404 while live")
                self.w.tally.add("tags_deleted")
        if rng.random() < self.w.config.delete_manifest:
            record = self.w.ledger.take_deletable(rng)
            if record is not None:
                # It had a live tag until now: a 404 would mean it was lost.
                r = c.call("DELETE", f"/v2/{record.repo}/manifests/{record.digest}", {202, 404})
                if r.status_code == 404:
                    self.w.tally.loss(f"DELETE {record.repo}@{record.digest}: 404 while tagged")
                self.w.tally.add("manifests_deleted")

    def pull(self, n: int) -> None:
        if self.rng.random() >= self.w.config.pull:
            return
        picked = self.w.ledger.pick_live(self.rng)
        if picked is None:
            return
        record, tag = picked
        problem = self.puller.problem(record, tag)
        if problem is None:
            self.w.tally.add("pulls_verified")
        elif self.w.ledger.is_live(record, tag):
            self.w.tally.loss(f"during the run: {problem}")
        else:
            self.w.tally.add("pulls_raced_a_delete")


class Collectors:
    """Collections back to back (one in four untagged), and a second collector contending for
    the lease: directly, or through the servers' endpoint on a random repository."""

    def __init__(self, workload: Workload) -> None:
        self.w = workload
        # Long enough for any session a client is still writing; abandoned ones get purged.
        self.upload_ttl = max(10.0, 5 * workload.config.grace)
        self._collectors = [
            GarbageCollector(workload.make_driver(), workload.config.grace, self.upload_ttl) for _ in range(2)
        ]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._guarded, args=(self._main,), name="gc-main", daemon=True),
            threading.Thread(target=self._guarded, args=(self._contender,), name="gc-second", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _guarded(self, loop) -> None:
        try:
            loop()
        except Exception as exc:
            self.w.tally.error(f"collector thread died: {type(exc).__name__}: {exc}")

    def _collect(self, gc: GarbageCollector, mode: str, repository: str | None, prefix: str) -> None:
        tally = self.w.tally
        try:
            report = gc.collect(mode, repository=repository)
        except CollectionRunning:
            tally.add(f"{prefix}_busy")
            return
        except Exception as exc:
            tally.error(f"{prefix} collection failed: {type(exc).__name__}: {exc}")
            return
        tally.add(f"{prefix}_runs")
        tally.add(f"{prefix}_runs_{mode}")
        if repository is not None:
            tally.add(f"{prefix}_runs_one_repository")
        self.w.add_removed(report.as_dict())

    def _main(self) -> None:
        gc = self._collectors[0]
        rng = random.Random(self.w.config.seed)
        for run in itertools.count():
            if self._stop.is_set():
                return
            self._collect(gc, "untagged" if run % 4 == 3 else "unreferenced", None, "gc")
            self._stop.wait(rng.uniform(0, 0.05) + self.w.config.pause)

    def _contender(self) -> None:
        gc = self._collectors[1]
        rng = random.Random(self.w.config.seed + 1)
        session = requests.Session()
        session.auth = self.w.auth
        while not self._stop.wait(rng.uniform(0.05, 0.4) + self.w.config.pause):
            mode = rng.choice(("unreferenced", "unreferenced", "untagged"))
            if rng.random() < 0.5:
                self._collect(gc, mode, rng.choice([None, *self.w.repos]), "gc")
                continue
            repo = rng.choice(self.w.repos)
            try:
                # The endpoint waits up to 10 s for the lease, then answers 503.
                r = session.post(f"{rng.choice(self.w.urls)}/v2/{repo}/gc?mode={mode}", timeout=60)
            except requests.RequestException as exc:
                self.w.tally.error(f"POST /v2/{repo}/gc: {exc!r}")
                continue
            if r.status_code == 200:
                self.w.tally.add("endpoint_runs")
                self.w.add_removed(r.json())
            elif r.status_code == 503:
                self.w.tally.add("endpoint_busy")
            else:
                self.w.tally.error(f"POST /v2/{repo}/gc: {r.status_code} {r.text[:300]}")


REMOVED = ("layer_links", "manifests", "blobs", "uploads", "multipart_uploads", "spared")


class Workload:
    def __init__(
        self,
        config: Config,
        urls: list[str],
        auth: tuple[str, str] | None,
        make_driver: Callable[[], object],
    ) -> None:
        self.config = config
        self.urls = urls
        self.auth = auth
        self.make_driver = make_driver
        self.tally = Tally()
        self.ledger = Ledger()
        rng = random.Random(config.seed)
        self.repos = [f"stress/app-{i}" for i in range(config.repositories)]
        self.pool = [rng.randbytes(rng.randint(100, 24_000)) for _ in range(config.pool)]
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._started = 0.0

    def next_image(self) -> int | None:
        with self._lock:
            n = next(self._numbers)
        enough = n >= self.config.images and time.monotonic() - self._started >= self.config.seconds
        return None if enough else n

    def add_removed(self, report: dict) -> None:
        for key in REMOVED:
            self.tally.add(f"removed_{key}", int(report.get(key) or 0))

    def run(self) -> None:
        """The clients and the collectors at once, until the clients are done."""
        self._started = time.monotonic()
        collectors = Collectors(self)
        clients = [ClientThread(self, i) for i in range(self.config.clients)]
        collectors.start()
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        collectors.stop()
        self.tally.counts["seconds_busy"] = round(time.monotonic() - self._started, 1)
        durations = sorted(self.tally.durations) or [0.0]
        for name, q in (("p50", 0.5), ("p90", 0.9), ("max", 1.0)):
            self.tally.counts[f"push_seconds_{name}"] = round(durations[int(q * (len(durations) - 1))], 2)

    def _verify(self, live: list[tuple[Record, str]], number: int) -> None:
        """Pull each by its tag (every byte) and by digest (the manifest)."""
        puller = Puller(Client(self.urls, self.auth, self.tally, random.Random(number)), self.ledger)
        for record, tag in live:
            try:
                problem = puller.problem(record, tag) or puller.problem(record, record.digest, deep=False)
            except WorkloadError as exc:
                self.tally.error(f"verifying {record.repo}:{tag}: {exc}")
                continue
            if problem is None:
                self.tally.add("final_pulls_verified")
            else:
                self.tally.loss(f"after the run: {problem}")

    def finish(self, view: StorageView, settle: float) -> dict:
        """Past the grace (plus `settle`, the store's clock resolution), one more collection
        with a short upload TTL; then every live manifest pulled back and verified, and the
        storage audited. Returns the counts."""
        time.sleep(self.config.grace + settle)
        for key, value in audit(view).items():
            self.tally.counts[f"before_{key}"] = value
        gc = GarbageCollector(self.make_driver(), self.config.grace, upload_ttl=self.config.grace)
        final = gc.collect("unreferenced")
        for key in REMOVED:
            self.tally.counts[f"final_{key}"] = int(getattr(final, key))
        live = self.ledger.live()
        threads = [
            threading.Thread(target=self._verify, args=(live[i :: self.config.clients], i), daemon=True)
            for i in range(self.config.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for key, value in audit(view).items():
            self.tally.counts[f"left_{key}"] = value
        return dict(self.tally.counts)
