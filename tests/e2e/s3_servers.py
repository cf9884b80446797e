"""An S3 endpoint for the end-to-end tests: moto's server over HTTP on 127.0.0.1, behind a small
proxy that enforces Cloudflare R2's multipart rules (moto does not): every non-trailing part of
a completed upload has the same size, at least 5 MiB, and the last is no larger. A violation is
refused the way R2 refuses it (400 InvalidPart) and recorded for the tests to assert on.

The same proxy injects the faults of a real store on demand (errors, resets, lost responses,
truncated or corrupted bodies, delays; see tests/e2e/s3_faults.py), set at runtime through its
control endpoint; with no plan set it forwards everything untouched."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.s3_strict import MIN_PART, R2RuleViolation, check_part_sizes

from .process import REPO_ROOT, _Process, free_port, require_binary
from .s3_faults import CONTROL_PATH, FaultControl, FaultPlan, classify, error_body

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
# send_response() writes its own Date and Server: the upstream's would come twice.
NOT_RELAYED = HOP_BY_HOP | {"date", "server"}


def _answering(process: _Process, url: str, timeout: float = 30):
    """Wait until `url` answers any HTTP at all; the process, or an error with its log."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process._check_alive()
        try:
            requests.get(url, timeout=1)
            return process
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not start")


class MotoServer(_Process):
    name = "moto"

    def __init__(self, workdir: Path, min_part: int | None = None) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.min_part = min_part  # moto's minimum part size (5 MiB, like S3 and R2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        binary = require_binary("moto_server", str(Path(sys.executable).parent / "moto_server"))
        env = dict(os.environ)
        if self.min_part is not None:
            env["S3_UPLOAD_PART_MIN_SIZE"] = str(self.min_part)
        self._spawn([binary, "-H", "127.0.0.1", "-p", str(self.port)], env=env)
        return _answering(self, self.url)


class R2StrictProxy(_Process):
    """The proxy in its own process (in the test process, its threads would fight the test's
    own client threads for the GIL). It reports each completion as a JSON line in a file."""

    name = "r2-strict-proxy"

    def __init__(self, workdir: Path, upstream_port: int, min_part: int = MIN_PART) -> None:
        super().__init__(workdir)
        self.upstream_port = upstream_port
        self.port = free_port()
        self.report = self.workdir / "completions.jsonl"
        self.min_part = min_part  # R2's is 5 MiB; in-process tests lower it with moto's

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self._spawn(
            [
                sys.executable,
                "-m",
                "tests.e2e.s3_servers",
                str(self.port),
                str(self.upstream_port),
                str(self.report),
                str(self.min_part),
            ],
            cwd=REPO_ROOT,
        )
        return _answering(self, self.url)

    def _records(self) -> list[dict]:
        if not self.report.exists():
            return []
        return [json.loads(line) for line in self.report.read_text().splitlines() if line.strip()]

    @property
    def completed(self) -> list[list[int]]:
        return [r["sizes"] for r in self._records() if "sizes" in r]

    @property
    def violations(self) -> list[str]:
        return [r["violation"] for r in self._records() if "violation" in r]

    @property
    def faults(self) -> FaultControl:
        return FaultControl(self.url)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that gives up (or a connection this proxy reset on purpose) is not news.
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handle_error(request, client_address)


class _ProxyServer:
    """Forwards every request to `upstream`, streaming bodies, and checks completions."""

    def __init__(self, port: int, upstream_port: int, report: Path, min_part: int) -> None:
        self.upstream_port = upstream_port
        self.report = report
        self.min_part = min_part
        self.parts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self.faults = FaultPlan()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm
                # holds the body until the client's delayed ACK, 40 ms per response.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _forward(self):
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True

    def _record(self, entry: dict) -> None:
        with self._lock, open(self.report, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        if urlsplit(h.path).path == CONTROL_PATH:
            self._control(h)
            return
        op, key = classify(h.command, h.path, h.headers)
        rule = self.faults.decide(op, key)
        action = rule.action if rule is not None else None
        if rule is not None and rule.delay:
            time.sleep(rule.delay)
        query = parse_qs(urlsplit(h.path).query, keep_blank_values=True)
        length = int(h.headers.get("Content-Length") or 0)
        if action == "error":
            _drain(h, length)
            self._reply(h, rule.status, error_body(rule.code), head=h.command == "HEAD")
            return
        if action == "reset":
            _drain(h, int(length * rule.fraction))
            _reset(h)
            return
        upload_id = query.get("uploadId", [None])[0]
        body_needed = h.command == "POST" and upload_id is not None  # CompleteMultipartUpload
        body = h.rfile.read(length) if body_needed else None
        if body_needed:
            refusal = self._check_completion(upload_id, body)
            if refusal:
                self._reply(
                    h, 400, f"<Error><Code>InvalidPart</Code><Message>{refusal}</Message></Error>".encode()
                )
                return
        if h.command == "PUT" and upload_id is not None and "partNumber" in query:
            copy_range = h.headers.get("x-amz-copy-source-range")
            if copy_range:
                start, end = re.match(r"bytes=(\d+)-(\d+)", copy_range).groups()
                size = int(end) - int(start) + 1
            else:
                size = length
            with self._lock:
                self.parts[(upload_id, int(query["partNumber"][0]))] = size
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=300)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body is not None:
            conn.send(body)
        else:
            remaining = length
            while remaining > 0:
                chunk = h.rfile.read(min(1 << 20, remaining))
                if not chunk:
                    break
                conn.send(chunk)
                remaining -= len(chunk)
        resp = conn.getresponse()
        try:
            if action in ("drop_response", "reset_mid_response", "truncate", "corrupt"):
                self._faulty_response(h, resp, op, key, rule)
            else:
                self._relay(h, resp)
        finally:
            conn.close()

    @staticmethod
    def _relay(h: BaseHTTPRequestHandler, resp: http.client.HTTPResponse) -> None:
        h.send_response(resp.status)
        upstream_length = resp.getheader("Content-Length")
        for k, v in resp.getheaders():
            if k.lower() not in NOT_RELAYED:
                h.send_header(k, v)
        if upstream_length is None:
            data = resp.read()
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        else:
            h.end_headers()
            if h.command != "HEAD":
                while chunk := resp.read(1 << 20):
                    h.wfile.write(chunk)

    def _faulty_response(self, h, resp, op: str, key: str, rule) -> None:
        """The store acted on the request; the client gets a broken answer."""
        data = resp.read() if h.command != "HEAD" else b""
        hidden = rule.action != "corrupt" and resp.status == 200
        if hidden and op == "CreateMultipartUpload":
            self.faults.note_dropped_upload(key, data)
        if rule.action == "drop_response" or not data:
            _reset(h)
            return
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in NOT_RELAYED and k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if rule.action == "corrupt":
            middle = len(data) // 2
            h.wfile.write(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
            return
        h.wfile.write(data[: int(len(data) * rule.fraction)])
        if rule.action == "truncate":
            h.connection.shutdown(socket.SHUT_WR)  # a clean end, short of Content-Length
            h.close_connection = True
        else:
            _reset(h)

    def _control(self, h: BaseHTTPRequestHandler) -> None:
        if h.command == "PUT":
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            try:
                self.faults.load(json.loads(body or b"{}"))
            except (ValueError, TypeError) as exc:
                self._reply(h, 400, str(exc).encode())
                return
        self._reply(h, 200, json.dumps(self.faults.report()).encode(), content_type="application/json")

    def _check_completion(self, upload_id: str, body: bytes) -> str | None:
        root = ET.fromstring(body)  # noqa: S314 - the body is our own client's, relayed in a test
        numbers = [int(el.text) for el in root.iter() if el.tag.endswith("PartNumber")]
        try:
            with self._lock:
                sizes = [self.parts[(upload_id, n)] for n in numbers]
            check_part_sizes(sizes, self.min_part)
        except (KeyError, R2RuleViolation) as exc:
            self._record({"violation": f"{upload_id}: {exc!r}"})
            return "All non-trailing parts must have the same length."
        self._record({"sizes": sizes})
        return None

    @staticmethod
    def _reply(
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str = "application/xml",
        head: bool = False,
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)


def _drain(h: BaseHTTPRequestHandler, length: int) -> None:
    while length > 0:
        chunk = h.rfile.read(min(1 << 20, length))
        if not chunk:
            return
        length -= len(chunk)


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Abort the client's connection with a TCP reset (SO_LINGER 0), as a dying peer does."""
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.connection.close()
    h.close_connection = True


if __name__ == "__main__":
    port, upstream, report, min_part = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    _ProxyServer(port, upstream, report, min_part).server.serve_forever()
