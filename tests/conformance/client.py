"""Tiny HTTP adapter so the conformance tests run against a live server or a WSGI app.

Both clients expose ``request(method, path_or_url, *, headers=None, body=None, params=None)``
and return a :class:`Response`.  ``path_or_url`` may be a relative path (``/v2/...``) or an
absolute URL such as a ``Location`` header returned by the server; for the WSGI client the
scheme and host are stripped.  ``params`` are appended to any query string already present in
``path_or_url`` (a key given in ``params`` replaces the same key in the existing query, like Go's
``url.Values.Set``), so the opaque state a registry puts in ``Location`` is preserved byte for byte.
A body given as an iterator of bytes is sent with ``Transfer-Encoding: chunked`` by
:class:`HttpClient` (the WSGI client joins it).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

__all__ = ["HttpClient", "Response", "WsgiClient", "split_url"]


class Response:
    """A finished HTTP exchange."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, method: str = "", url: str = ""):
        self.status = status
        self.headers = CaseInsensitiveDict(headers)
        self.body = body or b""
        self.method = method
        self.url = url
        self.truncated = False  # the server closed the connection before the announced length

    def json(self):
        return json.loads(self.body)

    def error_codes(self) -> list[str]:
        """The ``code`` of every entry of an OCI error body (empty if the body is not one)."""
        try:
            doc = self.json()
        except ValueError:
            return []
        if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
            return []
        return [e.get("code") for e in doc["errors"] if isinstance(e, dict)]

    def __repr__(self) -> str:  # shown by pytest on assertion failures
        shown = self.body[:300]
        return f"<Response {self.method} {self.url} -> {self.status} headers={dict(self.headers)!r} body={shown!r}>"


def split_url(path_or_url: str) -> tuple[str, str]:
    """Return (path, raw query) of a relative path or an absolute URL."""
    parts = urlsplit(path_or_url)
    return parts.path or "/", parts.query


def _merge_query(query: str, params: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> str:
    if not params:
        return query
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    keys = {k for k, _ in items}
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0] not in keys]
    extra = urlencode(items)
    return "&".join([*kept, extra]) if extra else "&".join(kept)


def _auth_header(auth: tuple[str, str] | None) -> dict[str, str]:
    if not auth:
        return {}
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class HttpClient:
    """Talks to a running registry over HTTP with ``requests``."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self.session = requests.Session()

    def request(self, method, path_or_url, *, headers=None, body=None, params=None) -> Response:
        path, query = split_url(path_or_url)
        query = _merge_query(query, params)
        url = self.base_url + path + (f"?{query}" if query else "")
        hdrs = {**_auth_header(self.auth), **(headers or {})}
        data = body
        if body is not None and not isinstance(body, (bytes, bytearray)):
            data = (bytes(chunk) for chunk in body)  # generator -> chunked transfer encoding
        r = self.session.request(method, url, headers=hdrs, data=data, timeout=self.timeout, stream=True)
        chunks, truncated = [], False
        try:
            for chunk in r.raw.stream(1 << 16, decode_content=False):
                chunks.append(chunk)
        except (
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.IncompleteRead,
            requests.RequestException,
        ):
            truncated = True  # e.g. a 416 whose Content-Length announces the whole blob
        finally:
            r.close()
        resp = Response(r.status_code, r.headers, b"".join(chunks), method, url)
        resp.truncated = truncated
        return resp

    def close(self):
        self.session.close()


class WsgiClient:
    """Calls a WSGI app in-process with ``falcon.testing.TestClient``."""

    def __init__(self, wsgi_app, auth: tuple[str, str] | None = None):
        from falcon import testing

        self.app = wsgi_app
        self.auth = auth
        self.client = testing.TestClient(wsgi_app)

    def request(self, method, path_or_url, *, headers=None, body=None, params=None) -> Response:
        path, query = split_url(path_or_url)
        query = _merge_query(query, params)
        hdrs = {**_auth_header(self.auth), **(headers or {})}
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = b"".join(bytes(chunk) for chunk in body)
        if body is not None and method.upper() not in ("GET", "HEAD"):
            hdrs.setdefault("Content-Length", str(len(body)))
        result = self.client.simulate_request(
            method.upper(),
            path,
            query_string=query or None,
            headers=hdrs,
            body=body if body is not None else None,
        )
        return Response(
            result.status_code, result.headers, result.content, method, path + (f"?{query}" if query else "")
        )

    def close(self):
        pass
