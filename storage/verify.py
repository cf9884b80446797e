"""Verification of what is stored: every blob's bytes rehashed against its digest, and every link
checked for its data. For operators (`python -m berth verify`); it reads, and never changes
anything. Bytes are streamed 1 MiB at a time, so memory does not grow with blob sizes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from storage import paths
from storage.digests import Digest
from storage.driver import ObjectNotFound, StorageDriver
from storage.gc import Progress
from storage.gc_scan import scan_blobs, scan_repositories

CHUNK = 1024 * 1024


@dataclass
class VerifyReport:
    blobs: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)  # digests whose bytes hash to something else
    missing: list[str] = field(default_factory=list)  # "<repository>@<digest>" linked, no data

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing

    def as_dict(self) -> dict:
        return {"blobs": self.blobs, "bytes": self.bytes, "corrupt": self.corrupt, "missing": self.missing}


def verify(
    driver: StorageDriver, repository: str | None = None, progress: Progress | None = None
) -> VerifyReport:
    progress = progress or Progress()
    report = VerifyReport()
    repos = scan_repositories(driver, repository)
    stored = scan_blobs(driver).data
    wanted: dict[Digest, list[str]] = {}
    for repo in repos.values():
        for digest in (*repo.layers, *repo.manifests):
            wanted.setdefault(digest, []).append(repo.name)
    if repository is None:
        for digest in stored:
            wanted.setdefault(digest, [])
    progress.phase("verifying", len(wanted))
    for digest in sorted(wanted):
        if digest not in stored:
            report.missing += [f"{name}@{digest}" for name in wanted[digest]]
            progress.advance()
            continue
        size = _check(driver, digest, report)
        report.blobs += 1
        report.bytes += size
        progress.advance(1, size)
    return report


def _check(driver: StorageDriver, digest: Digest, report: VerifyReport) -> int:
    hasher = hashlib.new(digest.algorithm)
    size = 0
    try:
        reader = driver.open_range(paths.blob_data(digest))
    except ObjectNotFound:
        report.missing.append(str(digest))
        return 0
    try:
        while chunk := reader.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    finally:
        reader.close()
    if hasher.hexdigest() != digest.hex:
        report.corrupt.append(str(digest))
    return size
