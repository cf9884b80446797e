"""`POST /v2/<name>/gc?mode=unreferenced|untagged`: garbage collection of one repository, as in
serverless-registry (same path, modes and `{"success": true}`, plus what was removed). It takes
the repository's links and manifests, and only blob data no other repository links."""

from __future__ import annotations

import json

import falcon

from errors import Unsupported
from storage.digests import validate_name
from storage.gc import MODES, GarbageCollector

# How long a request waits for a collection already running before answering 503.
LEASE_WAIT = 10.0


class RepositoryGc:
    scope = "repository"  # POST: push on the repository, like a DELETE

    def __init__(self, collector: GarbageCollector, delete_enabled: bool) -> None:
        self._collector = collector
        self._delete_enabled = delete_enabled

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        validate_name(name)
        if not self._delete_enabled:
            raise Unsupported("deletes are disabled on this registry")
        mode = req.get_param("mode") or "unreferenced"
        if mode not in MODES:
            raise Unsupported(
                "unknown garbage collection mode", status=400, detail={"mode": mode, "modes": list(MODES)}
            )
        report = self._collector.collect(mode, repository=name, wait=LEASE_WAIT)
        resp.content_type = "application/json"
        resp.data = json.dumps({"success": True, **report.as_dict()}).encode()
