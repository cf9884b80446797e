"""Health endpoints for a proxy or an orchestrator, outside the registry API (`/v2/`). They
reveal nothing but whether the process answers and whether its storage is usable, so they need
no credentials: a load balancer's probe has none."""

from __future__ import annotations

import json
import logging

import falcon

from storage.driver import StorageDriver, StorageError

log = logging.getLogger("berth.health")


class Liveness:
    """`GET /healthz`: the process serves requests (restart it if not)."""

    scope = "public"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/json"
        resp.data = b'{"status": "ok"}'

    on_head = on_get


class Readiness:
    """`GET /readyz`: storage answers (send traffic elsewhere while it does not)."""

    scope = "public"

    def __init__(self, driver: StorageDriver) -> None:
        self._driver = driver

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/json"
        try:
            self._driver.check()
        except StorageError as exc:
            log.warning("not ready: %s", exc)
            resp.status = falcon.HTTP_503
            resp.data = json.dumps({"status": "unavailable", "storage": "error"}).encode()
            return
        resp.data = b'{"status": "ok", "storage": "ok"}'

    on_head = on_get
