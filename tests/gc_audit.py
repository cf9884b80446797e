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


def audit(view: StorageView) -> dict[str, int]:
    """Counts of what nothing references (all zero after a complete collection), and of what is
    broken (a manifest whose blobs are gone: zero always)."""
    data, layers, manifests, tags = set(), {}, {}, {}
    counts = Counter(uploads=0, gc_announcements=0, temp_files=0)
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
    linked = set()
    for repo in set(layers) | set(manifests):
        linked |= layers.get(repo, set()) | manifests.get(repo, set())
        referenced, reachable, children = set(), set(), {}
        for digest in manifests.get(repo, set()):
            counts["manifests"] += 1
            link = json.loads(
                view.read(f"repositories/{repo}/_manifests/{digest.replace(':', '/')}") or b"{}"
            )
            if link.get("pending"):
                counts["pending_manifests"] += 1
                continue
            raw = view.read(
                f"blobs/{digest.split(':')[0]}/{digest.split(':')[1][:2]}/{digest.split(':')[1]}/data"
            )
            if raw is None:
                counts["broken_manifests"] += 1
                continue
            doc = json.loads(raw)
            refs = {d["digest"] for d in [doc.get("config") or {}, *doc.get("layers", [])] if d}
            children[digest] = {d["digest"] for d in doc.get("manifests", [])}
            referenced |= refs
            missing = {d for d in refs if d not in data or d not in layers.get(repo, set())}
            missing |= {d for d in children[digest] if d not in manifests.get(repo, set())}
            if missing:
                counts["broken_manifests"] += 1
        for key in tags.get(repo, {}).values():
            reachable.add((view.read(key) or b"").decode().strip())
        pending = list(reachable)
        while pending:
            for child in children.get(pending.pop(), ()):
                if child not in reachable:
                    reachable.add(child)
                    pending.append(child)
        counts["untagged_manifests"] += len(set(children) - reachable)
        counts["layer_links"] += len(layers.get(repo, set()))
        counts["unreferenced_links"] += len(layers.get(repo, set()) - referenced)
        counts["links_without_data"] += len((layers.get(repo, set()) | manifests.get(repo, set())) - data)
    counts["tags"] = sum(len(t) for t in tags.values())
    counts["unlinked_blobs"] = len(data - linked)
    return dict(counts)


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
