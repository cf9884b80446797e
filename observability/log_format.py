"""How Berth's log lines look: readable text (the default) or one JSON object per line
(REGISTRY_LOG_FORMAT=json), for the app's lines and gunicorn's alike, each with the id of the
request it belongs to.

JSON is written by python-json-logger with orjson (no hand-made escaping; orjson halves the
cost of a line against the standard json module): the record's fields, the extra fields a line
was logged with (the access line's method, route, status...), and a traceback as one string
field, so every line stays one line. Text lines escape control characters in the
access line's fields (a path may hold an encoded newline); other lines are the messages as
logged. Standard library and python-json-logger only: the gunicorn master loads this module
through `logconfig_dict` (gunicorn.conf.py)."""

from __future__ import annotations

import logging
import logging.config
import time
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

# gunicorn's own layout ([pid] [LEVEL]), plus the logger and the request id.
TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s rid=%(request_id)s %(message)s"
# Record attributes in every JSON line, renamed to what log pipelines expect.
JSON_FIELDS = ["levelname", "name", "process", "message"]
JSON_RENAMES = {"levelname": "level", "name": "logger", "process": "pid"}


class BerthJsonFormatter(OrjsonFormatter):
    """python-json-logger's formatter, with a shortcut through its `add_fields` hook for lines
    that carry their fields ready-made in `record.fields` (the access line, one per request):
    the same object, built without walking every attribute of the record."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        fields = record.__dict__.get("fields")
        if fields is None:
            super().add_fields(log_data, record, message_dict)
            return
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["pid"] = record.process
        log_data["message"] = record.message
        log_data.update(fields)
        log_data["request_id"] = record.__dict__.get("request_id")
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC)


def json_formatter() -> logging.Formatter:
    return BerthJsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp="time")


def text_formatter() -> logging.Formatter:
    return logging.Formatter(TEXT_FORMAT)


def skip_unused_record_fields() -> None:
    """Neither format shows where a line was logged from, nor thread names (greenlets under
    gevent): the logging HOWTO's "Optimization" settings turn their collection off, a few
    microseconds of every line (every request writes one)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


ACCESS_LOGGER = "berth.access"
ACCESS_BATCH_BYTES = 64 * 1024  # access lines held at most (per process) before a write
ACCESS_BATCH_SECONDS = 0.5  # and for at most this long (the worker flushes on a timer)


class BatchingStreamHandler(logging.StreamHandler):
    """stderr, with access lines written together: up to ACCESS_BATCH_BYTES or
    ACCESS_BATCH_SECONDS of them in one write, as nginx's `access_log ... buffer= flush=`.

    One write() per request was most of what an access line cost: measured in a worker serving
    manifest GETs, a line formatted but not written added nothing visible to a request's CPU
    time, and the same line written at once added about 60 us (bench/observability.py). Every
    other line (any logger but the access log, any level) is written at once, after the access
    lines held before it, so the order of lines is kept. A worker that stops writes what it
    holds; one killed with SIGKILL loses at most the last ACCESS_BATCH_SECONDS of access lines."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self._held: list[str] = []
        self._held_bytes = 0
        self._held_since = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if record.name != ACCESS_LOGGER:
                self._held.append(line)
                self._write_held()
                return
            if not self._held:
                self._held_since = time.monotonic()
            self._held.append(line)
            self._held_bytes += len(line) + 1
            if (
                self._held_bytes >= ACCESS_BATCH_BYTES
                or time.monotonic() - self._held_since >= ACCESS_BATCH_SECONDS
            ):
                self._write_held()
        except Exception:
            self.handleError(record)

    def _write_held(self) -> None:
        if self._held:
            text = "\n".join(self._held) + "\n"
            self._held.clear()
            self._held_bytes = 0
            self.stream.write(text)
        self.stream.flush()

    def flush(self) -> None:
        """Write what is held (the worker's timer, a stop, logging.shutdown at exit)."""
        with self.lock:
            if self.stream is not None and hasattr(self.stream, "flush"):
                self._write_held()


def flush_access_lines() -> None:
    """Write the access lines this process holds (see BatchingStreamHandler)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def logging_config(log_format: str) -> dict[str, Any]:
    """A dictConfig for gunicorn's `logconfig_dict` (which overlays it on gunicorn's defaults)
    and for processes without gunicorn (the CLI, a bare WSGI server): everything to stderr
    through one handler. gunicorn's error logger propagates to it (gunicorn's own handler is
    dropped, its --log-level kept); gunicorn's access logger is not touched: off by default
    (gunicorn.conf.py), Berth writes its own access line."""
    skip_unused_record_fields()
    factory = json_formatter if log_format == "json" else text_formatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "observability.request_context.RequestIdFilter"}},
        "formatters": {"berth": {"()": f"{__name__}.{factory.__name__}"}},
        "handlers": {
            "console": {
                "()": f"{__name__}.BatchingStreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "berth",
                "filters": ["request_id"],
            },
        },
        "root": {"level": "INFO", "handlers": ["console"]},
        "loggers": {"gunicorn.error": {"handlers": [], "propagate": True}},
    }


def configure(log_format: str) -> None:
    """Set up logging as gunicorn.conf.py does, where gunicorn did not (root has no handler)."""
    if not logging.getLogger().handlers:
        logging.config.dictConfig(logging_config(log_format))
