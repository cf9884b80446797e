"""One structured access line and the HTTP metrics for every request, written by the worker
(serving/worker.py), which alone sees each request from its head to its last byte: requests
the app answers, requests gunicorn's parser refuses (400, 431...), and the bytes sent by
sendfile. What only the app knows (route template, repository, user, upload id) it leaves in
the WSGI environ (observability/request_fields.py).

The request id is the trusted proxy's `X-Request-Id` (nginx's $request_id, see
deploy/nginx.conf) when it has a safe shape, else a new one. It is set for every log line of
the request (observability/request_context.py) and returned on every response."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auth.client_address import TrustedProxies
from observability import log_format, metrics
from observability.request_context import REQUEST_ID, new_request_id, valid_request_id
from observability.request_fields import PRINCIPAL, REPOSITORY, ROUTE, UPLOAD_ID, USER
from settings import Settings

access_log = logging.getLogger("berth.access")

UNROUTED = "-"  # the app never routed it (not Berth's app)
REFUSED = "{invalid}"  # gunicorn refused the request before any app saw it


@dataclass
class RequestRecord:
    """A request being served."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    environ: Mapping[str, Any] = field(default_factory=dict)  # the WSGI environ, once made
    ended: bool = False
    _token: Any = None


class RequestObserver:
    def __init__(self, proxies: TrustedProxies, access: bool = True, record_metrics: bool = True,
                 json_lines: bool = False) -> None:  # fmt: skip
        self._proxies = proxies
        self._access = access
        self._metrics = record_metrics
        self._json = json_lines
        self._failed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestObserver:
        obs = settings.observability
        return cls(settings.trusted_proxies, obs.access_log, obs.metrics_enabled, obs.log_format == "json")

    def start(self) -> None:
        """In the worker: write held access lines at least every ACCESS_BATCH_SECONDS."""
        if self._access:
            threading.Thread(target=self._write_access_lines, name="access-log", daemon=True).start()

    @staticmethod
    def _write_access_lines() -> None:
        while True:
            time.sleep(log_format.ACCESS_BATCH_SECONDS)
            log_format.flush_access_lines()

    def flush(self) -> None:
        """The worker is exiting: its held access lines, and its last per-request totals for
        the next scrape."""
        log_format.flush_access_lines()
        if self._metrics:
            metrics.PER_REQUEST.flush()

    # ------------------------------------------------------------------------------ begin

    def begin(self, method: str, path: str, peer: str, header_id: str | None) -> RequestRecord:
        """A request's head was read: give it its id (`header_id` is its X-Request-Id header,
        believed only from a trusted proxy) and make it the current request of this greenlet."""
        request_id = header_id if header_id and self._proxies.trusts_peer(peer) else None
        if request_id is None or not valid_request_id(request_id):
            request_id = new_request_id()
        record = RequestRecord(request_id, method, path)
        record._token = REQUEST_ID.set(request_id)
        return record

    def begin_refused(self, method: str, path: str, peer: str, header_id: str | None) -> RequestRecord:
        """A request gunicorn's parser refused before any app saw it: its route is REFUSED."""
        record = self.begin(method, path, peer, header_id)
        record.environ = {"REMOTE_ADDR": peer, ROUTE: REFUSED}
        return record

    # ------------------------------------------------------------------------------ end

    def end(
        self, record: RequestRecord, status: int, received: int, sent: int, note: str | None = None
    ) -> None:
        """The request is over (answered with `status`, 0 if nothing was; `received` and `sent`
        body bytes): its access line and metrics, once; then the greenlet has no current
        request."""
        if record.ended:
            return
        record.ended = True
        try:
            environ = record.environ
            duration = time.perf_counter() - record.started
            route = environ.get(ROUTE, UNROUTED)
            method = record.method if record.method in metrics.HTTP_METHODS else "OTHER"
            if self._metrics:
                self._record(route, method, status, duration, received, sent)
            if self._access:
                self._log(record, environ, route, status, duration, received, sent, note)
        except Exception:  # the request was served: a broken log or metric must not fail it
            if not self._failed:
                self._failed = True
                logging.getLogger("berth").exception("recording a request failed (said once)")
        finally:
            try:
                REQUEST_ID.reset(record._token)
            except ValueError:  # set in another context (cannot happen in the worker's loop)
                REQUEST_ID.set("-")

    @staticmethod
    def _record(route: str, method: str, status: int, duration: float, received: int, sent: int) -> None:
        status_class = f"{status // 100}xx" if status else "none"
        metrics.HTTP_REQUESTS.inc((route, method, status_class))
        metrics.HTTP_DURATION.observe((route, method), duration)
        if received:
            metrics.HTTP_RECEIVED.inc((route, method), received)
        if sent:
            metrics.HTTP_SENT.inc((route, method), sent)

    def _log(self, record: RequestRecord, environ: Mapping[str, Any], route: str, status: int,
             duration: float, received: int, sent: int, note: str | None) -> None:  # fmt: skip
        fields = {
            "method": record.method,
            "path": record.path,
            "route": route,
            "repository": environ.get(REPOSITORY),
            "status": status,
            "bytes_in": received,
            "bytes_out": sent,
            "duration_ms": round(duration * 1000, 3),
            "user": environ.get(USER),
            "principal": environ.get(PRINCIPAL),
            "client": self._proxies.client_address(environ),
            "upload_id": environ.get(UPLOAD_ID),
        }
        if note:
            fields["note"] = note
        if self._json:
            # A message without arguments is not %-formatted (a path may hold a '%').
            access_log.info(f"{record.method} {record.path} {status}", extra={"fields": fields})
        else:
            access_log.info(_text_line(fields))


def _text_line(fields: dict[str, Any]) -> str:
    """`GET /v2/team/app/manifests/v1 200 in=0 out=1024 2.1ms client=10.0.0.7 user=alice ...`:
    absent fields are left out; every value is escaped (a path may hold a decoded newline)."""
    head = f"{_safe(fields['method'])} {_safe(fields['path'])} {fields['status']}"
    parts = [head, f"in={fields['bytes_in']}", f"out={fields['bytes_out']}", f"{fields['duration_ms']}ms"]
    for key in ("client", "user", "route", "repository", "upload_id", "note"):
        value = fields.get(key)
        if value:
            parts.append(f"{key}={_safe(str(value))}")
    return " ".join(parts)


def _safe(value: str) -> str:
    if value.isprintable() and " " not in value:
        return value
    return value.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")
