"""The request being served, as every log line sees it: its id.

The worker (serving/worker.py) sets REQUEST_ID when it starts serving a request and resets it
when the request is over, in the connection's greenlet: every greenlet has its own context, so
lines logged anywhere below (auth, storage, upstream) carry the id of their own request, and a
keep-alive connection's next request starts clean. RequestIdFilter, on the log handlers, copies
the id onto each record. Standard library only: the gunicorn master loads it (log config)."""

from __future__ import annotations

import contextvars
import logging
import os
import re

NO_REQUEST = "-"
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("berth_request_id", default=NO_REQUEST)

# What an id from a proxy may look like: nginx's $request_id (32 hex digits), UUIDs, ULIDs,
# trace ids. Bounded and free of spaces, quotes and control characters, so it can go into log
# lines and a response header as it is.
MAX_REQUEST_ID = 128
_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")


def new_request_id() -> str:
    """32 hex digits, as nginx's $request_id: unique across workers and instances."""
    return os.urandom(16).hex()


def valid_request_id(value: str | None) -> bool:
    return bool(value) and len(value) <= MAX_REQUEST_ID and _REQUEST_ID_SHAPE.fullmatch(value) is not None


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (`-` outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def run_in_request_context(target):
    """`target` bound to the calling request's context: for a thread (a greenlet under gevent)
    started on behalf of a request, whose log lines should carry that request's id."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(target, *args, **kwargs)
