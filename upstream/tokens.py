"""Authenticating to an upstream registry the way the registry token spec describes.

A registry's `GET /v2/` answers 401 with a `WWW-Authenticate` challenge: `Basic` (send the
credentials with every request) or `Bearer realm=...,service=...` (ask the realm for a token
for a scope such as `repository:library/alpine:pull`, then send `Authorization: Bearer`).
Tokens are asked for with the OAuth2 form POST first (what containerd does; it is the only form
some realms accept for passwords), falling back to GET with Basic credentials (the older form
every realm speaks). They are cached per upstream account and scope until shortly before they
expire: serverless-registry asks for a new one on every request, which rate-limited realms
punish. The cache is in memory and, when a token directory is configured, in files every worker
process shares (token_files.py), so a cold instance asks once, not once per worker.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlencode, urlsplit

import urllib3

from upstream.config import UpstreamRegistry
from upstream.token_files import TokenFiles

log = logging.getLogger("berth.upstream")

DEFAULT_EXPIRES_IN = 60  # the token spec's default when a realm does not say
CLIENT_ID = "berth"
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(?:,|$)')
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)")


class UpstreamAuthError(Exception):
    """The upstream refused our credentials or its realm misbehaved."""


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-cased: "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a `WWW-Authenticate` header (RFC 9110 syntax: several challenges, each
    a scheme followed by comma-separated auth-params, quoted values may hold commas)."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        if header[pos] in ", ":
            pos += 1
            continue
        scheme = _SCHEME.match(header, pos)
        if not scheme:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while pos < len(header):
            param = _PARAM.match(header, pos)
            if not param:
                break
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class TokenCache:
    """Bearer tokens per (upstream account, scope), each dropped `margin` seconds before it
    expires so a token never runs out between being read here and reaching the upstream. With
    `files`, tokens are also shared with the other worker processes (token_files.py)."""

    def __init__(
        self,
        margin: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        files: TokenFiles | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._margin = margin
        self._clock = clock
        self._files = files
        self._wall_clock = wall_clock

    def get(self, upstream: str, scope: str) -> str | None:
        entry = self._tokens.get((upstream, scope))
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        if self._files is None:
            return None
        shared = self._files.read(_file_key(upstream, scope))
        if shared is None:
            return None
        token, expires = shared
        left = expires - self._wall_clock()
        if left <= 0:
            return None
        self._tokens[(upstream, scope)] = (token, self._clock() + left)
        return token

    def put(self, upstream: str, scope: str, token: str, expires_in: float) -> None:
        # Short-lived tokens are still cached for at least half their life.
        keep = max(expires_in - self._margin, expires_in / 2)
        self._tokens[(upstream, scope)] = (token, self._clock() + keep)
        if self._files is not None:
            self._files.write(_file_key(upstream, scope), token, self._wall_clock() + keep)

    def invalidate(self, upstream: str, scope: str) -> None:
        entry = self._tokens.pop((upstream, scope), None)
        if entry is not None and self._files is not None:
            self._files.remove(_file_key(upstream, scope), entry[0])

    @contextlib.contextmanager
    def lock(self, upstream: str, scope: str) -> Iterator[None]:
        """One negotiation at a time per key: concurrent pulls wait for the first one's token
        instead of each asking the realm; in this process (threading is gevent's under
        gunicorn), and across the worker processes sharing the token files."""
        with self._guard:
            in_process = self._locks.setdefault((upstream, scope), threading.Lock())
        with in_process:
            if self._files is None:
                yield
                return
            with self._files.lock(_file_key(upstream, scope)):
                yield


def _file_key(upstream: str, scope: str) -> str:
    # A fixed-length name that says nothing about the upstream to someone listing the directory.
    return hashlib.sha256(f"{upstream}\n{scope}".encode()).hexdigest()


class RealmTransport(Protocol):
    """What fetch_token needs from the upstream's client (client.py)."""

    registry: UpstreamRegistry

    def realm_request(
        self, method: str, url: str, headers: dict[str, str], body: str | None = None
    ) -> urllib3.BaseHTTPResponse: ...

    def read_small(self, response: urllib3.BaseHTTPResponse) -> bytes: ...

    def discard(self, response: urllib3.BaseHTTPResponse) -> None: ...


def fetch_token(transport: RealmTransport, challenge: Challenge, scope: str) -> tuple[str, float]:
    """Ask the challenge's realm for a token for `scope`; returns (token, expires_in). The
    answer is read only up to 64 KiB and within its deadline (a realm is the upstream's to
    name, so it is no more trusted than the upstream)."""
    registry = transport.registry
    realm = challenge.params.get("realm", "")
    realm_parts = urlsplit(realm)
    if realm_parts.scheme not in ("http", "https") or not realm_parts.hostname:
        raise UpstreamAuthError(f"{registry.url}: bearer challenge has no usable realm: {realm!r}")
    if registry.scheme == "https" and realm_parts.scheme != "https":
        # Never send the password in clear because an upstream's challenge said so.
        raise UpstreamAuthError(f"{registry.url}: refusing a plain-http token realm {realm!r}")
    service = challenge.params.get("service", "")
    response = None
    if registry.username is not None:
        form = {"grant_type": "password", "username": registry.username, "password": registry.password}
        form.update(client_id=CLIENT_ID, scope=scope, service=service)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        response = transport.realm_request("POST", realm, headers, urlencode(form))
        if response.status != 200:
            # Realms that only speak the older GET form answer 404/405/400 here.
            log.debug("upstream %s: token POST answered %s, trying GET", registry.url, response.status)
            transport.discard(response)
            response = None
    if response is None:
        query = {"service": service, "scope": scope, "client_id": CLIENT_ID}
        headers = {}
        if registry.username is not None:
            headers["Authorization"] = basic_header(registry.username, registry.password or "")
        separator = "&" if realm_parts.query else "?"
        response = transport.realm_request("GET", realm + separator + urlencode(query), headers)
    if response.status != 200:
        transport.discard(response)
        raise UpstreamAuthError(f"{registry.url}: token realm answered {response.status}")
    try:
        doc = json.loads(transport.read_small(response))
        token = doc.get("token") or doc.get("access_token")
        expires_in = float(doc.get("expires_in") or DEFAULT_EXPIRES_IN)
    except (ValueError, TypeError, AttributeError):
        raise UpstreamAuthError(f"{registry.url}: token realm answered malformed JSON") from None
    if not isinstance(token, str) or not token:
        raise UpstreamAuthError(f"{registry.url}: token realm answered no token")
    return token, max(expires_in, 1.0)
