"""Faults for the S3 proxy of the end-to-end tests (tests/e2e/s3_servers.py): the failures a real
object store shows, injected per S3 operation, by probability or on the Nth matching call.

A test sends the proxy a plan (`FaultControl.set`): a seed and a list of rules, each a JSON object:

    {"op": "CompleteMultipartUpload",   # an S3 operation name, or "*"
     "key": "uploads/.*/data$",         # optional: a regex searched in the object key
     "action": "error",                 # what to do, below
     "p": 0.05,                         # inject with this probability, or
     "nth": [1, 3],                     # on these matching calls (1-based), else on every call
     "times": 2,                        # at most this many injections
     "delay": 0.5,                      # seconds to wait first (alone: a slow store)
     "status": 503, "code": "SlowDown", # for "error"
     "fraction": 0.5}                   # how far into a body to cut (reset_request, truncate...)

Actions: "error" (an S3 XML error, never forwarded), "reset" (the connection is reset before
forwarding, after reading `fraction` of the request body), "drop_response" (forwarded, then
reset: the store acted but the client never hears), "reset_mid_response" (part of the body,
then a reset), "truncate" (part of the body, then a clean close), "corrupt" (one byte of the
body flipped), "delay" (only the delay). The first rule that decides to inject wins.

The proxy counts what each rule saw and injected, and records multipart uploads whose creation
it hid from the client (`dropped_uploads`): nothing can reference those but the store itself."""

from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ACTIONS = {"error", "reset", "drop_response", "reset_mid_response", "truncate", "corrupt", "delay"}
CONTROL_PATH = "/__faults__"


def classify(method: str, path: str, headers) -> tuple[str, str]:
    """The S3 operation a path-style request is, and its object key ('' for bucket calls)."""
    parts = urlsplit(path)
    query = parse_qs(parts.query, keep_blank_values=True)
    _bucket, _, key = parts.path.lstrip("/").partition("/")
    key = unquote(key)
    copy = headers.get("x-amz-copy-source") is not None
    if not key:
        bucket_ops = {
            "GET": "ListMultipartUploads" if "uploads" in query else "ListObjectsV2",
            "HEAD": "HeadBucket",
            "PUT": "CreateBucket",
            "POST": "DeleteObjects" if "delete" in query else "PostBucket",
            "DELETE": "DeleteBucket",
        }
        return bucket_ops.get(method, method), key
    if method == "GET":
        return ("ListParts" if "uploadId" in query else "GetObject"), key
    if method == "HEAD":
        return "HeadObject", key
    if method == "PUT":
        if "partNumber" in query:
            return ("UploadPartCopy" if copy else "UploadPart"), key
        return ("CopyObject" if copy else "PutObject"), key
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload", key
        if "uploadId" in query:
            return "CompleteMultipartUpload", key
    if method == "DELETE":
        return ("AbortMultipartUpload" if "uploadId" in query else "DeleteObject"), key
    return method, key


@dataclass
class Rule:
    op: str
    action: str
    key: str | None = None
    p: float | None = None
    nth: list[int] | None = None
    times: int | None = None
    delay: float = 0.0
    status: int = 503
    code: str = "SlowDown"
    fraction: float = 0.5
    seen: int = 0
    injected: int = 0
    _key_re: re.Pattern | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Rule:
        if doc.get("action") not in ACTIONS:
            raise ValueError(f"unknown action {doc.get('action')!r}")
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__ and not k.startswith("_")}
        rule = cls(**known)
        rule._key_re = re.compile(rule.key) if rule.key else None
        return rule

    def matches(self, op: str, key: str) -> bool:
        return self.op in ("*", op) and (self._key_re is None or bool(self._key_re.search(key)))

    def decide(self, rng: random.Random) -> bool:
        """Called once per matching request (under the plan's lock): inject this time?"""
        self.seen += 1
        if self.times is not None and self.injected >= self.times:
            return False
        if self.nth is not None:
            hit = self.seen in self.nth
        elif self.p is not None:
            hit = rng.random() < self.p
        else:
            hit = True
        if hit:
            self.injected += 1
        return hit

    def report(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "key": self.key,
            "action": self.action,
            "seen": self.seen,
            "injected": self.injected,
        }


class FaultPlan:
    """The proxy's rules and counters, replaced as a whole by the control endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._rng = random.Random(0)
        self.ops: dict[str, int] = {}
        self.dropped_uploads: list[dict[str, str]] = []

    def load(self, doc: dict[str, Any]) -> None:
        rules = [Rule.from_json(r) for r in doc.get("rules", [])]
        with self._lock:
            self._rules = rules
            self._rng = random.Random(doc.get("seed", 0))
            self.ops = {}
            self.dropped_uploads = []

    def decide(self, op: str, key: str) -> Rule | None:
        with self._lock:
            self.ops[op] = self.ops.get(op, 0) + 1
            for rule in self._rules:
                if rule.matches(op, key) and rule.decide(self._rng):
                    return rule
        return None

    def note_dropped_upload(self, key: str, body: bytes) -> None:
        found = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
        if found:
            with self._lock:
                self.dropped_uploads.append({"key": key, "upload_id": found.group(1).decode()})

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rules": [r.report() for r in self._rules],
                "ops": dict(self.ops),
                "dropped_uploads": list(self.dropped_uploads),
            }


def error_body(code: str, message: str = "injected fault") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault</RequestId></Error>"
    ).encode()


class FaultControl:
    """The test side: set, read and clear the proxy's fault plan over HTTP."""

    def __init__(self, proxy_url: str) -> None:
        self.url = proxy_url + CONTROL_PATH

    def set(self, rules: list[dict[str, Any]], seed: int = 0) -> None:
        import requests

        r = requests.put(self.url, data=json.dumps({"rules": rules, "seed": seed}), timeout=10)
        r.raise_for_status()

    def clear(self) -> None:
        self.set([])

    def report(self) -> dict[str, Any]:
        import requests

        r = requests.get(self.url, timeout=10)
        r.raise_for_status()
        return r.json()

    def injected(self) -> int:
        return sum(rule["injected"] for rule in self.report()["rules"])
