"""Health endpoints for a proxy or an orchestrator, outside the registry API (`/v2/`). They
reveal nothing but whether the process answers and whether its storage is usable, so they need
no credentials: a load balancer's probe has none."""

from __future__ import annotations

import json
import logging

import falcon

from storage.driver import StorageDriver, StorageError, StorageFull

log = logging.getLogger("berth.health")


class Liveness:
    """`GET /healthz`: the process serves requests (restart it if not)."""

    scope = "public"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/json"
        resp.data = b'{"status": "ok"}'

    on_head = on_get


class Readiness:
    """`GET /readyz`: whether this instance can serve. 200 while storage answers, also when it
    cannot take writes (a full disk): pulls still work and must keep coming, so the body says
    which (`"writable": false`) rather than the status. 503 only when storage cannot be read."""

    scope = "public"

    def __init__(self, driver: StorageDriver) -> None:
        self._driver = driver

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/json"
        writable = True
        try:
            try:
                self._driver.check()
            except StorageFull as exc:
                log.warning("storage cannot take writes: %s", exc)
                writable = False
                self._driver.exists(READ_PROBE)  # but can it still be read?
        except StorageError as exc:
            log.warning("not ready: %s", exc)
            resp.status = falcon.HTTP_503
            resp.data = json.dumps({"status": "unavailable", "storage": "error"}).encode()
            return
        resp.data = json.dumps({"status": "ok", "storage": "ok", "writable": writable}).encode()

    on_head = on_get


# A key that is never written: looking it up proves storage answers reads, and changes nothing.
READ_PROBE = "repositories/_readiness-probe"
