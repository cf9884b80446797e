"""What the garbage collection stress clients do (tests/gc_workload.py): docker's push step by
step (HEAD-then-skip, cross-repository mounts, monolithic or chunked uploads, the manifest PUT and
its answers to MANIFEST_BLOB_UNKNOWN), pulls that verify every byte against its digest, and the
ledger they share of what was acknowledged, which tags are live and where blobs are."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"
PUSH_ATTEMPTS = 6  # manifest PUTs per push before the client gives up (counted)
RETRY_503_FOR = 60.0  # how long a request is retried on 503 before it counts as an error


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class WorkloadError(Exception):
    """An answer the workload did not expect: counted as an error, the operation abandoned."""


@dataclass
class Record:
    """A manifest that got a 201, and what the clients did with it since."""

    repo: str
    digest: str
    media_type: str
    body: bytes
    blobs: dict[str, bytes]  # digest -> bytes (config and layers)
    children: list[str]  # index: child manifest digests
    deletable: bool  # may be deleted by digest (then never re-pushed nor made a child)
    live_tags: set[str] = field(default_factory=set)
    deleted: bool = False  # by digest


class Ledger:
    """What the clients know, shared between them: acknowledged manifests, which tags are live,
    which repositories hold a blob (mount sources, possibly stale)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: dict[tuple[str, str], Record] = {}  # (repo, digest)
        self._held: dict[str, set[str]] = {}

    def acknowledged(self, record: Record, tag: str | None) -> None:
        with self._lock:
            known = self.records.setdefault((record.repo, record.digest), record)
            if tag is not None and not known.deleted:
                known.live_tags.add(tag)
            for digest in record.blobs:
                self._held.setdefault(digest, set()).add(record.repo)

    def located(self, digest: str, repo: str) -> None:
        with self._lock:
            self._held.setdefault(digest, set()).add(repo)

    def mount_source(self, digest: str, repo: str, rng: random.Random) -> str | None:
        with self._lock:
            sources = sorted(self._held.get(digest, set()) - {repo})
        return rng.choice(sources) if sources else None

    def pick(self, rng: random.Random, repo: str | None = None, **want) -> Record | None:
        with self._lock:
            found = [
                r
                for r in self.records.values()
                if (repo is None or r.repo == repo)
                and not r.deleted
                and all(getattr(r, k) == v for k, v in want.items())
            ]
        return rng.choice(found) if found else None

    def pick_live(self, rng: random.Random) -> tuple[Record, str] | None:
        with self._lock:
            found = [(r, t) for r in self.records.values() for t in r.live_tags]
        return rng.choice(sorted(found, key=lambda p: (p[0].repo, p[1]))) if found else None

    def take_tag(self, rng: random.Random) -> tuple[Record, str] | None:
        """A live tag, no longer live from now on (before the client sends its DELETE)."""
        with self._lock:
            found = sorted(((r, t) for r in self.records.values() for t in r.live_tags), key=lambda p: p[1])
            if not found:
                return None
            record, tag = rng.choice(found)
            record.live_tags.discard(tag)
            return record, tag

    def take_deletable(self, rng: random.Random) -> Record | None:
        with self._lock:
            found = [r for r in self.records.values() if r.deletable and r.live_tags and not r.deleted]
            if not found:
                return None
            record = rng.choice(sorted(found, key=lambda r: r.digest))
            record.deleted = True
            record.live_tags.clear()
            return record

    def is_live(self, record: Record, tag: str) -> bool:
        with self._lock:
            return tag in record.live_tags

    def child(self, repo: str, digest: str) -> Record:
        with self._lock:
            return self.records[(repo, digest)]

    def live(self) -> list[tuple[Record, str]]:
        with self._lock:
            return [(r, sorted(r.live_tags)[0]) for r in self.records.values() if r.live_tags]


class Tally:
    """Counts, and the first few examples of what went wrong, across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.durations: list[float] = []  # of pushes that did not pause on purpose
        self.losses: list[str] = []

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def duration(self, seconds: float) -> None:
        with self._lock:
            self.durations.append(seconds)

    def error(self, text: str) -> None:
        with self._lock:
            self.counts["errors"] += 1
            if len(self.errors) < 20:
                self.errors.append(text)

    def loss(self, text: str) -> None:
        with self._lock:
            self.counts["losses"] += 1
            if len(self.losses) < 20:
                self.losses.append(text)


class Client:
    """One client thread's requests: a requests.Session per thread, the instances taking turns."""

    def __init__(self, urls: list[str], auth: tuple[str, str] | None, tally: Tally, rng: random.Random):
        self._urls = urls
        self._session = requests.Session()
        self._session.auth = auth
        self.tally = tally
        self.rng = rng

    def call(self, method: str, path: str, expect: set[int], **kwargs) -> requests.Response:
        """One request, retried on 503 (a collection holds what it needs: Retry-After, shortened
        here so the test stays fast). Any status outside `expect` raises WorkloadError."""
        deadline = time.monotonic() + RETRY_503_FOR
        url = path if path.startswith("http") else self.rng.choice(self._urls) + path
        while True:
            try:
                r = self._session.request(method, url, timeout=60, **kwargs)
            except requests.RequestException as exc:
                raise WorkloadError(f"{method} {path}: {exc!r}") from exc
            if r.status_code == 503 and time.monotonic() < deadline:
                self.tally.add("retried_503")
                time.sleep(min(float(r.headers.get("Retry-After") or 1), 0.3 + self.rng.random() * 0.3))
                continue
            if r.status_code not in expect:
                raise WorkloadError(f"{method} {path}: {r.status_code} {r.text[:300]}")
            return r

    def absolute(self, location: str) -> str:
        return location if location.startswith("http") else self.rng.choice(self._urls) + location


class Pusher:
    """docker's push, step by step, with its answers to refusals."""

    def __init__(self, client: Client, ledger: Ledger, window: float) -> None:
        self.c = client
        self.ledger = ledger
        # How long a push may take before the collector may take what it uploaded first: the
        # grace period, less the store's clock resolution (S3 times have whole seconds).
        self.window = window

    def ensure_blob(self, repo: str, digest: str, data: bytes) -> None:
        c = self.c
        if c.call("HEAD", f"/v2/{repo}/blobs/{digest}", {200, 404}).status_code == 200:
            c.tally.add("layers_skipped")
            return
        session = None
        source = self.ledger.mount_source(digest, repo, c.rng)
        if source is not None:
            r = c.call("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}", {201, 202})
            if r.status_code == 201:
                c.tally.add("layers_mounted")
                self.ledger.located(digest, repo)
                return
            c.tally.add("mounts_refused")  # 202: the source lost it (or never had it): upload
            session = r.headers["Location"]
        self.upload(repo, digest, data, session)
        self.ledger.located(digest, repo)

    def upload(self, repo: str, digest: str, data: bytes, session: str | None) -> None:
        c = self.c
        if c.rng.random() < 0.5:
            if session is not None:
                c.tally.add("sessions_abandoned")  # left for the upload purge
            c.call("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", {201}, data=data)
            c.tally.add("layers_uploaded_monolithic")
            return
        if session is None:
            session = c.call("POST", f"/v2/{repo}/blobs/uploads/", {202}).headers["Location"]
        location = c.absolute(session)
        # A PATCH, then the closing PUT with the rest (a session of two requests, as containerd's;
        # docker sends everything in the PATCH and an empty PUT).
        cut = c.rng.randint(1, len(data))
        pieces = [data[:cut], data[cut:]]
        offset = 0
        for piece in pieces[:-1]:
            r = c.call(
                "PATCH",
                location,
                {202},
                data=piece,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                },
            )
            location = c.absolute(r.headers["Location"])
            offset += len(piece)
        sep = "&" if "?" in location else "?"
        # A 503 here (the collector is deleting a stored copy of the same blob) is retried with
        # the same request: the session keeps its bytes for it (tests/test_gc_findings.py).
        c.call("PUT", f"{location}{sep}digest={digest}", {201}, data=pieces[-1])
        c.tally.add("layers_uploaded_chunked")

    def put_manifest(self, record: Record, reference: str, started: float, waited: bool = False) -> bool:
        """PUT a manifest; on MANIFEST_BLOB_UNKNOWN push what it names again (blobs, or child
        manifests by digest) and retry, as docker does. False if it gave up. `started`: when
        the push began (its first blob request); `waited`: it paused on purpose before this."""
        c = self.c
        took = time.monotonic() - started
        if not waited:
            c.tally.duration(took)
            if took >= self.window:
                c.tally.add("pushes_slower_than_grace")
        for _ in range(PUSH_ATTEMPTS):
            r = c.call(
                "PUT",
                f"/v2/{record.repo}/manifests/{reference}",
                {201, 400},
                data=record.body,
                headers={"Content-Type": record.media_type},
            )
            if r.status_code == 201:
                if r.headers.get("Docker-Content-Digest") != record.digest:
                    raise WorkloadError(
                        f"201 for {record.digest} with {r.headers.get('Docker-Content-Digest')}"
                    )
                return True
            error = (r.json().get("errors") or [{}])[0]
            if error.get("code") != "MANIFEST_BLOB_UNKNOWN":
                raise WorkloadError(f"PUT manifest: 400 {r.text[:300]}")
            if waited:
                c.tally.add("refusals_after_wait")
            elif time.monotonic() - started >= self.window:
                c.tally.add("refusals_slow")  # no pause, but slower than the grace period
            else:
                c.tally.add("refusals_prompt")
            named = (error.get("detail") or {}).get("digests") or [*record.blobs, *record.children]
            for digest in named:
                if digest in record.blobs:
                    self.ensure_blob(record.repo, digest, record.blobs[digest])
                elif digest in record.children:
                    self.push_child(self.ledger.child(record.repo, digest))
        c.tally.add("pushes_abandoned")
        return False

    def push_child(self, child: Record) -> None:
        """An index's child, by digest: HEAD first, PUT (its blobs first) only if missing."""
        c = self.c
        if c.call("HEAD", f"/v2/{child.repo}/manifests/{child.digest}", {200, 404}).status_code == 200:
            c.tally.add("children_skipped")
            return
        started = time.monotonic()
        for digest, data in child.blobs.items():
            self.ensure_blob(child.repo, digest, data)
        if not self.put_manifest(child, child.digest, started):
            raise WorkloadError(f"child {child.digest} could not be pushed")
        c.tally.add("children_pushed")


class Puller:
    def __init__(self, client: Client, ledger: Ledger) -> None:
        self.c = client
        self.ledger = ledger

    def problem(self, record: Record, reference: str, deep: bool = True) -> str | None:
        """What is wrong with pulling `record` by `reference` (None: every byte verified; not
        `deep`: the manifest only)."""
        c = self.c
        r = c.call("GET", f"/v2/{record.repo}/manifests/{reference}", {200, 404}, headers={"Accept": ACCEPT})
        if r.status_code != 200:
            return f"manifest {record.repo}:{reference} ({record.digest}): {r.status_code} {r.text[:200]}"
        if sha256(r.content) != record.digest or r.headers.get("Docker-Content-Digest") != record.digest:
            return f"manifest {record.repo}:{reference}: got {sha256(r.content)}, want {record.digest}"
        if not deep:
            return None
        for digest in record.blobs:
            b = c.call("GET", f"/v2/{record.repo}/blobs/{digest}", {200, 404})
            if b.status_code != 200 or sha256(b.content) != digest:
                return (
                    f"blob {digest} of {record.repo}@{record.digest}: {b.status_code}, {len(b.content)} bytes"
                )
        for digest in record.children:
            found = self.problem(self.ledger.child(record.repo, digest), digest)
            if found:
                return f"child of {record.repo}@{record.digest}: {found}"
        return None
