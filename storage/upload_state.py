"""An upload session's saved state (uploads/<id>/state.json): JSON, never pickled.

A session takes bytes (version 1) until its closing PUT has them all and verified them; it is
then saved as *publishing* (version 2: an older Berth refuses it instead of resuming it as a
session still taking bytes) with the verified digest and what recognises a retried closing
PUT: the size and running hash before that request's last chunk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from errors import DigestInvalid
from storage.digests import Digest
from storage.driver import StorageError
from storage.hashing import HashStateError, ResumableHash

STATE_VERSION = 1
PUBLISHING_VERSION = 2


@dataclass
class Publishing:
    digest: Digest
    verified: bool  # False only when the digest's algorithm was not the running hash's
    size_before: int  # where the closing PUT's last chunk started
    hash_before: ResumableHash  # the running hash before that chunk
    # The writer state holds every byte (sealed). False when the blob was found stored
    # already: the writer is only kept to be aborted, never committed.
    sealed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": str(self.digest),
            "verified": self.verified,
            "size_before": self.size_before,
            "hash_before": self.hash_before.export(),
            "sealed": self.sealed,
        }


@dataclass
class UploadState:
    upload_id: str
    name: str
    owner: str
    started: float
    size: int
    hash: ResumableHash
    writer: dict[str, Any] | None  # the driver's resume state; None before the first byte
    publishing: Publishing | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "v": STATE_VERSION if self.publishing is None else PUBLISHING_VERSION,
            "name": self.name,
            "owner": self.owner,
            "started": self.started,
            "size": self.size,
            "hash_algorithm": self.hash.algorithm,
            "hash_state": self.hash.export(),
            "writer": self.writer,
        }
        if self.publishing is not None:
            doc["publishing"] = self.publishing.to_json()
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, upload_id: str, raw: bytes) -> UploadState:
        try:
            doc = json.loads(raw)
            if doc.get("v") not in (STATE_VERSION, PUBLISHING_VERSION):
                raise ValueError("unknown state version")
            algorithm = doc["hash_algorithm"]
            publishing = None
            if doc["v"] == PUBLISHING_VERSION:
                pub = doc["publishing"]
                publishing = Publishing(
                    digest=Digest.parse(str(pub["digest"])),
                    verified=bool(pub["verified"]),
                    size_before=int(pub["size_before"]),
                    hash_before=ResumableHash.restore(algorithm, pub["hash_before"]),
                    sealed=bool(pub["sealed"]),
                )
            return cls(
                upload_id=upload_id,
                name=str(doc["name"]),
                owner=str(doc["owner"]),
                started=float(doc["started"]),
                size=int(doc["size"]),
                hash=ResumableHash.restore(algorithm, doc["hash_state"]),
                writer=doc["writer"],
                publishing=publishing,
            )
        except (ValueError, KeyError, TypeError, HashStateError, DigestInvalid) as exc:
            raise StorageError(f"corrupt upload state {upload_id}: {exc}") from exc


def copy_hash(h: ResumableHash) -> ResumableHash:
    return ResumableHash.restore(h.algorithm, h.export())
