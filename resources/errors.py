"""The one place where errors become HTTP responses: every error, Falcon's own included, is an
OCI JSON error body, and nothing unexpected reaches the client as a traceback."""

from __future__ import annotations

import json
import logging

import falcon

from errors import RegistryError, Unavailable
from storage.driver import StorageError, StorageFull

log = logging.getLogger("berth.errors")

# Falcon's own errors (unknown route, bad method, malformed header...) as OCI codes.
_HTTP_CODES = {
    400: "UNSUPPORTED",
    404: "UNSUPPORTED",
    405: "UNSUPPORTED",
    411: "SIZE_INVALID",
    413: "SIZE_INVALID",
    415: "UNSUPPORTED",
}


def _render(resp: falcon.Response, status: int, body: dict, headers: dict[str, str]) -> None:
    resp.status = status
    resp.content_type = "application/json"
    resp.data = json.dumps(body).encode()
    for name, value in headers.items():
        resp.set_header(name, value)


def handle_registry_error(req, resp, exc: RegistryError, params) -> None:
    _render(resp, exc.status, exc.body(), exc.headers)


def handle_http_error(req, resp, exc: falcon.HTTPError, params) -> None:
    status = exc.status_code
    code = _HTTP_CODES.get(status, "UNKNOWN")
    message = exc.title or "error"
    if exc.description:
        message = f"{message}: {exc.description}"
    if status == 404:
        message = "unknown route"
    headers = dict(exc.headers or {})
    _render(resp, status, {"errors": [{"code": code, "message": message}]}, headers)


def handle_storage_error(req, resp, exc: StorageError, params) -> None:
    log.error("storage error on %s %s: %r", req.method, req.path, exc)
    err = Unavailable("storage backend error")
    _render(resp, err.status, err.body(), {"Retry-After": "1"})


def handle_storage_full(req, resp, exc: StorageFull, params) -> None:
    # Expected in operation (a disk fills up): one line, no traceback. Reads keep working.
    log.error("storage full on %s %s: %s", req.method, req.path, exc)
    err = Unavailable("storage is full", status=507)
    _render(resp, err.status, err.body(), {})


def handle_unexpected(req, resp, exc: Exception, params) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    _render(resp, 500, {"errors": [{"code": "UNKNOWN", "message": "internal server error"}]}, {})


def register(app: falcon.App) -> None:
    # Falcon picks the most specific handler by MRO.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(StorageError, handle_storage_error)
    app.add_error_handler(StorageFull, handle_storage_full)
    app.add_error_handler(RegistryError, handle_registry_error)
