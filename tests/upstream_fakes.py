"""Small upstream registries on 127.0.0.1 for the pull-through tests, each a real HTTP server in
a thread of the test process (so tests can count and inspect what reached it):

- `HttpServer` answers with whatever a handler returns: a body of bytes, or an iterable of
  chunks streamed as they come (chunked, unless the handler gives a Content-Length), so a test
  can play an upstream whose body never ends or trickles;
- `StaticRegistry` serves manifests and blobs from dicts, optionally behind Basic auth, and can
  corrupt blobs, redirect blob GETs to another origin, fail every content request with a given
  status (and headers: a 429's Retry-After), slow its manifest HEADs down and hold blob GETs
  (counting how many are in flight at once);
- `TokenGate` puts Docker's Bearer token flow in front of any registry: its `/v2/` and content
  routes answer 401 with a Bearer challenge, its `/token` realm issues tokens (OAuth2 POST form
  and GET with Basic), and it forwards authorised reads to the registry behind it. Blob GETs are
  redirected to a second port ("storage"), which must never see an Authorization header;
- `Redirector` sends every content request to another origin;
- `SwitchProxy` stands in front of a real registry and answers 429, or slows HEADs, on cue;
- `registry(routes)` is an anonymous upstream answering from a route table, and `endless()` /
  `trickle()` make bodies that never end or arrive a byte at a time (each capped, so that code
  without bounds fails a test instead of hanging it).

`pull_through_app` builds a Berth app (filesystem storage) pulling through given entries.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from falcon import testing

from app import create_app
from storage import driver_from_settings, paths
from storage.digests import Digest
from tests.conftest import Api, make_settings
from upstream.config import UpstreamSettings, parse_registries

Body = bytes | Iterable[bytes]
MiB = 1024 * 1024
Handler = Callable[[str, str, dict, dict[str, str], bytes], tuple[int, dict[str, str], Body]]
_CONTENT = re.compile(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pull_through_app(data_dir, entries: list[dict], env: dict[str, str] | None = None, **upstream):
    """A Berth app on the filesystem pulling through `entries` (REGISTRIES_JSON as a list),
    with short timeouts unless `upstream` says otherwise; returns (api, app, driver)."""
    values = {"connect_timeout": 1.0, "read_timeout": 5.0, **upstream}
    registries = parse_registries(json.dumps(entries), env or {})
    settings = make_settings(data_dir, upstream=UpstreamSettings(registries, **values))
    app = create_app(settings)
    return Api(testing.TestClient(app), data_dir), app, driver_from_settings(settings)


def nothing_stored(driver, name: str, digest: str) -> bool:
    """No copy, no link and no staging object left for `digest` in repository `name`."""
    key = Digest.parse(digest)
    return not (
        driver.exists(paths.blob_data(key))
        or driver.exists(paths.layer_link(name, key))
        or driver.exists(paths.manifest_link(name, key))
        or driver.list_children(paths.UPLOADS)
    )


class _Server(ThreadingHTTPServer):
    # Tests open dozens of connections at once: the default listen backlog of 5 drops some,
    # and a dropped SYN is retried only after a second (a connect timeout on a busy machine).
    request_queue_size = 256


class HttpServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 calling `handler(method, path, query, headers,
    body)`; every request is recorded in `requests` as (method, path, headers), and the body
    bytes it managed to send in `sent` (a streamed body stops when the client goes away)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.sent = 0
        self.broken = 0  # streamed bodies cut short by the client
        outer = self

        self.connections: set = set()  # open client sockets: stop() cuts keep-alive ones too

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                outer.connections.add(self.connection)

            def finish(self) -> None:
                outer.connections.discard(self.connection)
                super().finish()

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((self.command, parts.path, headers))
                status, out_headers, out = outer.handler(
                    self.command, parts.path, parse_qs(parts.query), headers, body
                )
                self.send_response(status)
                out_headers = dict(out_headers)
                streamed = not isinstance(out, bytes)
                if not streamed:
                    out_headers.setdefault("Content-Length", str(len(out)))
                elif "Content-Length" not in out_headers:
                    out_headers["Transfer-Encoding"] = "chunked"
                for k, v in out_headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if not streamed:
                    self.wfile.write(out)
                    outer.sent += len(out)
                    return
                chunked = "Transfer-Encoding" in out_headers
                try:
                    for piece in out:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                        self.wfile.flush()
                        outer.sent += len(piece)
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    outer.broken += 1
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), _H)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        """Stop listening and cut the connections clients keep alive: stopped, as a process is."""
        self.server.shutdown()
        self.server.server_close()
        for sock in list(self.connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _basic_ok(headers: dict[str, str], users: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if not auth.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
    except ValueError:
        return None
    return user if users.get(user) == password else None


def _json(status: int, doc: dict, extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(extra or {})}, json.dumps(doc).encode()


class StaticRegistry(HttpServer):
    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = users
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.repos: dict[str, set[str]] = {}  # blobs each repository holds
        self.corrupt: set[str] = set()
        self.redirect_blobs_to: str | None = None  # base URL of another origin
        self.fail_with: int | None = None  # answer every content request with this status
        self.fail_headers: dict[str, str] = {}  # and these headers (Retry-After...)
        self.head_delay = 0.0  # seconds every manifest HEAD waits before it is answered
        self.hold_blobs: threading.Event | None = None  # blob GETs wait for it (at most 10 s)
        self.in_flight = self.max_in_flight = 0
        self._flight_lock = threading.Lock()
        super().__init__(self._handle)

    def count(self, method: str, fragment: str) -> int:
        """Requests so far with `method` whose path contains `fragment`."""
        return sum(1 for m, p, _ in list(self.requests) if m == method and fragment in p)

    def add_image(self, name: str, tag: str | None, layer_size: int = 512) -> tuple[str, bytes]:
        """A small OCI image (config and one layer) under `name`, tagged `tag` (moving the tag if
        it exists); returns (manifest digest, manifest bytes)."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": secrets.token_hex(8)}).encode()
        layer = secrets.token_bytes(layer_size)
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": self.add_blob(name, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": self.add_blob(name, layer),
                    "size": len(layer),
                }
            ],
        }
        body = json.dumps(doc, indent=1).encode()
        return self.add_manifest(name, tag, body, doc["mediaType"]), body

    def add_blob(self, name: str, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        self.repos.setdefault(name, set()).add(digest)
        return digest

    def add_manifest(self, name: str, tag: str | None, body: bytes, media_type: str) -> str:
        digest = sha256(body)
        self.manifests[(name, digest)] = (body, media_type)
        if tag:
            self.manifests[(name, tag)] = (body, media_type)
        return digest

    def _handle(self, method, path, query, headers, body):
        if self.users is not None and path.startswith("/v2") and _basic_ok(headers, self.users) is None:
            return _json(
                401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": 'Basic realm="fake"'}
            )
        if path == "/v2/":
            return _json(200, {})
        if path.startswith("/storage/"):
            return self._blob(path.rsplit("/", 1)[1], direct=True)
        match = _CONTENT.match(path)
        if not match or method not in ("GET", "HEAD"):
            return _json(405 if match else 404, {"errors": [{"code": "UNSUPPORTED"}]})
        if self.fail_with:
            return _json(self.fail_with, {"errors": [{"code": "UNAVAILABLE"}]}, self.fail_headers)
        name, kind, ref = match.groups()
        if kind == "manifests" and method == "HEAD" and self.head_delay:
            time.sleep(self.head_delay)
        if kind == "blobs" and method == "GET" and self.hold_blobs is not None:
            with self._flight_lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                self.hold_blobs.wait(10)
            finally:
                with self._flight_lock:
                    self.in_flight -= 1
        if kind == "manifests":
            found = self.manifests.get((name, ref))
            if found is None:
                return _json(404, {"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            data, media_type = found
            return 200, {"Content-Type": media_type, "Docker-Content-Digest": sha256(data)}, data
        if ref not in self.repos.get(name, ()):
            return _json(404, {"errors": [{"code": "BLOB_UNKNOWN"}]})
        if method == "GET" and self.redirect_blobs_to:
            return 307, {"Location": f"{self.redirect_blobs_to}/storage/{ref}"}, b""
        return self._blob(ref, direct=False)

    def _blob(self, digest: str, direct: bool):
        data = self.blobs[digest]
        if digest in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]  # same length, wrong bytes
        return 200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}, data


class TokenGate(HttpServer):
    """Docker's token flow in front of `backend_url` (reached with `backend_auth`, if any)."""

    def __init__(
        self,
        backend_url: str,
        users: dict[str, str],
        backend_auth: tuple[str, str] | None = None,
        post_supported: bool = True,
        expires_in: int = 300,
        redirect_blobs: bool = True,
    ) -> None:
        self.backend_url = backend_url
        self.backend_auth = backend_auth
        self.users = users
        self.post_supported = post_supported
        self.expires_in = expires_in
        self.tokens: dict[str, tuple[set[str], float]] = {}
        self.token_requests: list[tuple[str, str]] = []  # (method, scope)
        self.lock = threading.Lock()
        self.storage = HttpServer(self._storage)  # another origin: a different port
        self.redirect_blobs = redirect_blobs
        super().__init__(self._handle)

    def stop(self) -> None:
        self.storage.stop()
        super().stop()

    def _challenge(self, scope: str | None):
        value = f'Bearer realm="{self.url}/token",service="token-gate"'
        if scope:
            value += f',scope="{scope}"'
        return _json(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": value})

    def _handle(self, method, path, query, headers, body):
        if path == "/token":
            return self._token(method, query, headers, body)
        auth = headers.get("authorization", "")
        grant = self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if grant is not None and grant[1] < time.monotonic():
            grant = None
        if path in ("/v2", "/v2/"):
            return _json(200, {}) if grant else self._challenge(None)
        match = _CONTENT.match(path)
        if not match:
            return _json(404, {"errors": [{"code": "UNSUPPORTED"}]})
        scope = f"repository:{match.group(1)}:pull"
        if grant is None or scope not in grant[0]:
            return self._challenge(scope)
        if match.group(2) == "blobs" and method == "GET" and self.redirect_blobs:
            signature = secrets.token_hex(8)
            return 307, {"Location": f"{self.storage.url}/direct{path}?sig={signature}"}, b""
        return self._forward(method, path, headers)

    def _forward(self, method, path, headers):
        accept = {"Accept": headers["accept"]} if "accept" in headers else {}
        r = requests.request(
            method, self.backend_url + path, headers=accept, auth=self.backend_auth, timeout=30
        )
        keep = ("Content-Type", "Docker-Content-Digest", "Content-Length")
        return r.status_code, {k: r.headers[k] for k in keep if k in r.headers}, r.content

    def _storage(self, method, path, query, headers, body):
        if "authorization" in headers:
            return _json(400, {"error": "presigned URLs take no Authorization header"})
        return self._forward(method, path.removeprefix("/direct"), {})

    def _token(self, method, query, headers, body):
        if method == "POST":
            if not self.post_supported:
                return _json(404, {"error": "not found"})
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            user = form.get("username")
            if form.get("grant_type") != "password" or self.users.get(user or "") != form.get("password"):
                return _json(401, {"error": "invalid_grant"})
            scopes = form.get("scope", "")
        else:
            if _basic_ok(headers, self.users) is None:
                return _json(401, {"error": "unauthorized"})
            scopes = " ".join(query.get("scope", []))
        with self.lock:
            self.token_requests.append((method, scopes))
        token = secrets.token_urlsafe(16)
        self.tokens[token] = (set(scopes.split()), time.monotonic() + self.expires_in)
        doc = {"token": token, "access_token": token, "expires_in": self.expires_in}
        return _json(200, doc)


class Redirector(HttpServer):
    """An upstream that answers /v2/ itself and redirects every content request to the same
    path on `target` (another origin), with a presigned-looking query."""

    def __init__(self, target: str, status: int = 307) -> None:
        self.target = target
        self.status = status
        super().__init__(self._handle)

    def _handle(self, method, path, query, headers, body):
        if path == "/v2/":
            return _json(200, {})
        return self.status, {"Location": f"{self.target}{path}?X-Amz-Signature=s3cr3t-sig"}, b""


def endless(piece: bytes = b" " * 65536, cap: int = 256 * MiB) -> Iterator[bytes]:
    """A body that does not end (for code that reads it all, it ends at `cap`)."""
    for _ in range(cap // len(piece)):
        yield piece


def trickle(data: bytes, every: float, give_up: float = 8.0) -> Iterator[bytes]:
    """`data` a byte at a time, each well within the read timeout; stops after `give_up`
    seconds so that code without a deadline fails the test instead of hanging it."""
    ends = time.monotonic() + give_up
    for i in range(len(data)):
        if time.monotonic() > ends:
            return
        yield data[i : i + 1]
        time.sleep(every)


def registry(routes: dict[str, object]) -> HttpServer:
    """An anonymous upstream: /v2/ answers 200 unless routes say otherwise; routes map a path
    (or "HEAD <path>") to (status, headers, body)."""

    def handle(method, path, query, headers, body):
        found = routes.get(f"{method} {path}") or routes.get(path)
        if found is None:
            return (200, {}, b"") if path == "/v2/" else (404, {}, b'{"errors": []}')
        return found() if callable(found) else found

    return HttpServer(handle)


class SwitchProxy(HttpServer):
    """A reverse proxy in front of a real registry (`target`), for the tests that need it to
    misbehave on cue: `mode = "429"` answers every request 429 with `retry_after`, and
    `head_delay` slows manifest HEADs down. The client's Host header is passed on, so a token
    realm the registry builds from it points back through the proxy. Every request it saw is in
    `requests`; bodies are read whole (the tests' images are small)."""

    _HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "accept-encoding"})
    _KEEP = (
        "Content-Type",
        "Content-Length",
        "Docker-Content-Digest",
        "Docker-Distribution-API-Version",
        "WWW-Authenticate",
        "Location",
        "Retry-After",
    )

    def __init__(self, target: str) -> None:
        self.target = target
        self.mode = "pass"
        self.retry_after = 60
        self.head_delay = 0.0
        super().__init__(self._handle)

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p, _ in list(self.requests) if m == method and fragment in p)

    def _handle(self, method, path, query, headers, body):
        if self.mode == "429" and path != "/v2/":
            return _json(
                429, {"errors": [{"code": "TOOMANYREQUESTS"}]}, {"Retry-After": str(self.retry_after)}
            )
        if method == "HEAD" and "/manifests/" in path and self.head_delay:
            time.sleep(self.head_delay)
        query_string = urlencode(query, doseq=True)
        url = f"{self.target}{path}" + (f"?{query_string}" if query_string else "")
        sent = {k: v for k, v in headers.items() if k not in self._HOP}
        r = requests.request(method, url, headers=sent, data=body or None, allow_redirects=False, timeout=30)
        return r.status_code, {k: r.headers[k] for k in self._KEEP if k in r.headers}, r.content
