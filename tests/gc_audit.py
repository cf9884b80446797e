"""An independent checker of what garbage collection leaves in a store: its own walk (os.walk on
local disk, boto3 listings on S3) and its own parsing of keys, links and manifests, sharing no
code with the collector (storage/gc_scan.py), so a bug there cannot hide itself here."""

from __future__ import annotations

import json
import os
import re
from collections import Counter


class StorageView:
    """Raw keys of the store, read without the registry's driver."""

    def list_keys(self) -> list[str]:
        raise NotImplementedError

    def read(self, key: str) -> bytes | None:
        raise NotImplementedError

    def multipart_uploads(self) -> int:
        return 0


class DiskView(StorageView):
    def __init__(self, root) -> None:
        self.root = str(root)

    def list_keys(self) -> list[str]:
        found = []
        for directory, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(directory, self.root)
            found += [name if rel == "." else f"{rel}/{name}" for name in files]
        return found

    def read(self, key: str) -> bytes | None:
        try:
            with open(os.path.join(self.root, key), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None


class S3View(StorageView):
    def __init__(self, client, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/") + "/"

    def list_keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return [o["Key"][len(self.prefix) :] for page in pages for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def multipart_uploads(self) -> int:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        return sum(len(page.get("Uploads", [])) for page in pages)


_BLOB = re.compile(r"blobs/(\w+)/[0-9a-f]{2}/([0-9a-f]+)/(data|doomed)")
_REPO = re.compile(
    r"repositories/(.+?)/(_layers|_manifests)/(\w+)/([0-9a-f]+)|repositories/(.+?)/(_tags)/(.+)"
)


def _data_key(digest: str) -> str:
    alg, hexpart = digest.split(":", 1)
    return f"blobs/{alg}/{hexpart[:2]}/{hexpart}/data"


def audit(view: StorageView) -> dict[str, int]:
    """Counts of the store: what nothing references (all zero after a complete collection:
    MUST_BE_ZERO), what an unreferenced collection would take (`collectable_*`), and what is
    broken (a manifest whose blobs are gone: zero always)."""
    data, layers, manifests, tags = set(), {}, {}, {}
    counts = Counter({key: 0 for key in MUST_BE_ZERO})
    uploads = set()
    for key in view.list_keys():
        if m := _BLOB.fullmatch(key):
            if m[3] == "data":
                data.add(f"{m[1]}:{m[2]}")
            else:
                counts["gc_announcements"] += 1
        elif m := _REPO.fullmatch(key):
            if m[2]:
                (layers if m[2] == "_layers" else manifests).setdefault(m[1], set()).add(f"{m[3]}:{m[4]}")
            else:
                tags.setdefault(m[5], {})[m[7]] = key
        elif key.startswith("uploads/"):
            uploads.add(key.split("/")[1])
        elif key.startswith("gc/verdicts/") or key.endswith("/_gc"):
            counts["gc_announcements"] += 1
        if os.path.basename(key).startswith(".tmp-"):
            counts["temp_files"] += 1
    counts["uploads"] = len(uploads)
    counts["multipart_uploads"] = view.multipart_uploads()
    counts["blobs"] = len(data)
    linked, kept = set(), set()  # digests some link points at; those a collection leaves linked
    for repo in set(layers) | set(manifests):
        repo_layers, repo_manifests = layers.get(repo, set()), manifests.get(repo, set())
        linked |= repo_layers | repo_manifests
        referenced, children = set(), {}
        for digest in repo_manifests:
            link = json.loads(
                view.read(f"repositories/{repo}/_manifests/{digest.replace(':', '/')}") or b"{}"
            )
            if link.get("pending"):
                counts["pending_manifests"] += 1
                continue
            raw = view.read(_data_key(digest))
            if raw is None:
                counts["broken_manifests"] += 1
                continue
            doc = json.loads(raw)
            refs = {d["digest"] for d in [doc.get("config") or {}, *doc.get("layers", [])] if d}
            children[digest] = {d["digest"] for d in doc.get("manifests", [])}
            referenced |= refs
            if (refs - (data & repo_layers)) or (children[digest] - repo_manifests):
                counts["broken_manifests"] += 1
        kept |= (repo_layers & referenced) | set(children)
        counts["manifests"] += len(repo_manifests)
        counts["layer_links"] += len(repo_layers)
        counts["unreferenced_links"] += len(repo_layers - referenced)
        counts["links_without_data"] += len((repo_layers | repo_manifests) - data)
        counts["untagged_manifests"] += len(set(children) - _reachable(view, tags.get(repo, {}), children))
    counts["tags"] = sum(len(t) for t in tags.values())
    counts["unlinked_blobs"] = len(data - linked)
    counts["collectable_blobs"] = len(data - kept)
    counts["collectable_links"] = counts["unreferenced_links"]
    counts["collectable_manifests"] = counts["pending_manifests"]
    return dict(counts)


def _reachable(view: StorageView, tag_keys: dict[str, str], children: dict[str, set[str]]) -> set[str]:
    """Manifests the tags reach, through index children."""
    reachable = {(view.read(key) or b"").decode().strip() for key in tag_keys.values()}
    pending = list(reachable)
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in reachable:
                reachable.add(child)
                pending.append(child)
    return reachable


# What a complete collection leaves behind: nothing (untagged manifests stay in unreferenced mode).
MUST_BE_ZERO = (
    "unlinked_blobs",
    "unreferenced_links",
    "pending_manifests",
    "links_without_data",
    "broken_manifests",
    "uploads",
    "multipart_uploads",
    "gc_announcements",
    "temp_files",
)
