"""Upstream registries from `REGISTRIES_JSON`, parsed and validated once at start.

The format is serverless-registry's, so a configuration moves over unchanged:

    [{"registry": "https://registry.example.com/some/prefix",
      "username": "puller", "password_env": "EXAMPLE_REGISTRY_TOKEN",
      "redirect_hosts": ["*.r2.cloudflarestorage.com"]},
     {"registry": "https://index.docker.io"}]

Credentials never appear in the JSON itself: `password_env` names the variable that holds the
password or token, so the JSON can sit in a config file or a process listing without leaking.

Berth's own optional keys: `prefix`, a namespace in Berth that belongs to this upstream
(`"prefix": "dockerhub"` serves Berth's `dockerhub/library/alpine` from the upstream's
`library/alpine`, and only names under it go there); `redirect_hosts`, the hosts besides the
upstream's own origin that its redirects may lead to (object stores, CDNs); and
`allow_private_redirects`, which lets those hosts (and a token realm on another origin) be on
loopback, link-local or private addresses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# Docker Hub answers the API on registry-1.docker.io whatever name users know it by.
DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
DOCKER_HUB_API = "registry-1.docker.io"
# Where Docker Hub sends blob GETs (its CDNs and its R2 bucket): the redirect hosts of a Docker
# Hub entry that does not list its own, so the usual `{"registry": "https://index.docker.io"}`
# keeps working.
DOCKER_HUB_REDIRECT_HOSTS = (
    "*.docker.com",
    "docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com",
)
_KEYS = frozenset(
    {"registry", "username", "password_env", "prefix", "redirect_hosts", "allow_private_redirects"}
)
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
# A repository name's components (storage/digests.py): a prefix is one or more of them.
_NAMESPACE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
MiB = 1024 * 1024
GiB = 1024 * MiB


class UpstreamConfigError(ValueError):
    """REGISTRIES_JSON or an upstream setting is malformed (settings.py reports it)."""


@dataclass(frozen=True)
class HostPattern:
    """One `redirect_hosts` entry: `cdn.example.com`, `*.example.com` (any name below it, at any
    depth, not the name itself), an IP literal, each with an optional `:port`. Without a port
    it allows only the target scheme's default port (443 for https), as an origin would."""

    host: str  # lower-case; for a wildcard, the suffix after "*."; IPv6 without brackets
    port: int | None
    wildcard: bool = False

    def matches(self, scheme: str, host: str, port: int) -> bool:
        default = 443 if scheme == "https" else 80
        if port != (self.port if self.port is not None else default):
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def __str__(self) -> str:
        host = f"*.{self.host}" if self.wildcard else f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True)
class UpstreamRegistry:
    """One upstream: where its API lives and how to log in to it."""

    url: str  # as configured, for logs and messages (never holds credentials)
    scheme: str
    host: str  # host[:port] of the API
    path_prefix: str  # the URL's path, kept in front of names upstream ("" or "some/prefix")
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed: settings may be logged
    redirect_hosts: tuple[HostPattern, ...] = ()  # besides the upstream's own origin
    allow_private_redirects: bool = False  # those hosts may be on loopback/private addresses
    namespace: str = ""  # the entry's `prefix`: Berth's names under it, and only those, go here

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def is_docker_hub(self) -> bool:
        return self.host == DOCKER_HUB_API

    def remote_name(self, name: str) -> str:
        """The repository name upstream for `name` (a local name with the entry's namespace
        already taken off, see routing.py): the URL's path kept in front, and Docker Hub's
        official images live under `library/`."""
        if self.is_docker_hub and not self.path_prefix and "/" not in name:
            name = f"library/{name}"
        return f"{self.path_prefix}/{name}" if self.path_prefix else name


def default_token_dir() -> Path:
    """Where the workers of this machine's Berths (of one OS user) share upstream tokens."""
    return Path(tempfile.gettempdir()) / f"berth-{os.getuid()}-upstream-tokens"


@dataclass(frozen=True)
class UpstreamSettings:
    registries: tuple[UpstreamRegistry, ...] = ()
    connect_timeout: float = 5.0  # REGISTRY_UPSTREAM_CONNECT_TIMEOUT
    read_timeout: float = 30.0  # REGISTRY_UPSTREAM_READ_TIMEOUT: each read; see body_seconds
    min_rate: int = 128 * 1024  # REGISTRY_UPSTREAM_MIN_RATE: bytes per second, on average
    max_blob_bytes: int = 16 * GiB  # REGISTRY_UPSTREAM_MAX_BLOB_BYTES
    tag_ttl: float = 300.0  # REGISTRY_UPSTREAM_TAG_TTL: seconds a pulled tag is served unchecked
    max_concurrency: int = 32  # REGISTRY_UPSTREAM_MAX_CONCURRENCY: upstream requests per worker
    # REGISTRY_UPSTREAM_TOKEN_DIR: tokens shared by worker processes; None keeps them in memory
    # (what tests that build settings by hand get).
    token_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UpstreamSettings:
        return cls(
            registries=parse_registries(env.get("REGISTRIES_JSON", ""), env),
            connect_timeout=_seconds(env, "REGISTRY_UPSTREAM_CONNECT_TIMEOUT", 5.0),
            read_timeout=_seconds(env, "REGISTRY_UPSTREAM_READ_TIMEOUT", 30.0),
            min_rate=_count(env, "REGISTRY_UPSTREAM_MIN_RATE", 128 * 1024, 1024, GiB),
            max_blob_bytes=_count(env, "REGISTRY_UPSTREAM_MAX_BLOB_BYTES", 16 * GiB, MiB, 1 << 50),
            tag_ttl=float(_count(env, "REGISTRY_UPSTREAM_TAG_TTL", 300, 0, 366 * 86400)),
            max_concurrency=_count(env, "REGISTRY_UPSTREAM_MAX_CONCURRENCY", 32, 1, 10_000),
            token_dir=_token_dir(env),
        )

    def body_seconds(self, size: int) -> float:
        """The whole time a body of at most `size` bytes may take once the answer's headers are
        in: urllib3's read timeout bounds each read, not a body that trickles a byte per read."""
        return self.read_timeout + size / self.min_rate


def _count(env: Mapping[str, str], name: str, default: int, lowest: int, highest: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not lowest <= int(raw) <= highest:
        raise UpstreamConfigError(f"{name} must be a whole number from {lowest} to {highest}, not {raw!r}")
    return int(raw)


def _token_dir(env: Mapping[str, str]) -> Path:
    raw = env.get("REGISTRY_UPSTREAM_TOKEN_DIR", "").strip()
    if not raw:
        return default_token_dir()
    if not os.path.isabs(raw):
        raise UpstreamConfigError(f"REGISTRY_UPSTREAM_TOKEN_DIR must be an absolute path, not {raw!r}")
    return Path(raw)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UpstreamConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 < value <= 3600:
        raise UpstreamConfigError(f"{name} must be more than 0 and at most 3600 seconds, not {raw!r}")
    return value


def parse_registries(raw: str, env: Mapping[str, str]) -> tuple[UpstreamRegistry, ...]:
    """The upstreams in `raw` (REGISTRIES_JSON), in the order they are tried."""
    if not raw.strip():
        return ()
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise UpstreamConfigError(f"REGISTRIES_JSON is not valid JSON: {exc}") from None
    if not isinstance(doc, list):
        raise UpstreamConfigError("REGISTRIES_JSON must be a JSON list of {registry, ...} objects")
    return tuple(_registry(entry, i, env) for i, entry in enumerate(doc))


def _registry(entry: object, index: int, env: Mapping[str, str]) -> UpstreamRegistry:
    where = f"REGISTRIES_JSON[{index}]"
    if not isinstance(entry, dict):
        raise UpstreamConfigError(f"{where} must be an object with a 'registry' URL")
    unknown = set(entry) - _KEYS
    if unknown:
        raise UpstreamConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    url = entry.get("registry")
    if not isinstance(url, str) or not url.strip():
        raise UpstreamConfigError(f"{where} needs a 'registry' URL")
    url = url.strip()
    scheme, host, path_prefix = _split_url(url, where)
    username, password_env = entry.get("username"), entry.get("password_env")
    if (username is None) != (password_env is None):
        raise UpstreamConfigError(f"{where}: 'username' and 'password_env' must be given together")
    password = None
    if username is not None:
        if not isinstance(username, str) or not username or ":" in username:
            raise UpstreamConfigError(f"{where}: 'username' must be a non-empty string without ':'")
        if not isinstance(password_env, str) or not password_env:
            raise UpstreamConfigError(f"{where}: 'password_env' must name an environment variable")
        password = env.get(password_env)
        if not password:
            raise UpstreamConfigError(
                f"{where}: environment variable {password_env} (its password_env) is not set or empty"
            )
    redirect_hosts = _redirect_hosts(entry.get("redirect_hosts"), where)
    if redirect_hosts is None:
        redirect_hosts = tuple(_host_pattern(h, where) for h in DOCKER_HUB_REDIRECT_HOSTS)
        redirect_hosts = redirect_hosts if host == DOCKER_HUB_API else ()
    allow_private = entry.get("allow_private_redirects", False)
    if not isinstance(allow_private, bool):
        raise UpstreamConfigError(f"{where}: 'allow_private_redirects' must be true or false")
    namespace = _namespace(entry.get("prefix"), where)
    return UpstreamRegistry(
        url, scheme, host, path_prefix, username, password, redirect_hosts, allow_private, namespace
    )


def _namespace(value: object, where: str) -> str:
    """An entry's `prefix`: one or more repository name components (`dockerhub`, `mirror/ghcr`)."""
    if value is None:
        return ""
    text = value.strip().strip("/") if isinstance(value, str) else None
    if not text or not _NAMESPACE.fullmatch(text) or len(text) > 200:
        raise UpstreamConfigError(
            f"{where}: 'prefix' must be the start of repository names, like 'dockerhub' or "
            f"'mirror/ghcr' (lower-case letters, digits, '.', '_', '-', and '/' between parts), not {value!r}"
        )
    return text


def _redirect_hosts(value: object, where: str) -> tuple[HostPattern, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise UpstreamConfigError(f"{where}: 'redirect_hosts' must be a list of host names")
    return tuple(_host_pattern(item, where) for item in value)


def _host_pattern(item: object, where: str) -> HostPattern:
    """`name`, `*.name`, an IP literal (IPv6 in brackets), each with an optional `:port`."""
    bad = UpstreamConfigError(
        f"{where}: redirect_hosts entries are host names like 'cdn.example.com', '*.example.com' "
        f"or '10.0.0.5:9000' (no scheme or path), not {item!r}"
    )
    if not isinstance(item, str) or not item.strip():
        raise bad
    text = item.strip().lower()
    try:
        parts = urlsplit(f"//{text}")
        port = parts.port
    except ValueError:
        raise bad from None
    host = parts.hostname or ""
    if parts.path or parts.query or parts.fragment or parts.username is not None or port == 0:
        raise bad
    if text.startswith("["):  # an IPv6 literal
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
        return HostPattern(host, port)
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels) or (wildcard and len(labels) < 2):
        raise bad  # "*.com" would be most of the internet
    return HostPattern(name, port, wildcard)


def _split_url(url: str, where: str) -> tuple[str, str, str]:
    try:
        parts = urlsplit(url)
        port = parts.port  # validates the port
    except ValueError as exc:
        raise UpstreamConfigError(f"{where}: bad registry URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamConfigError(f"{where}: registry must be an http(s) URL with a host, not {url!r}")
    if parts.username is not None or parts.password is not None:
        raise UpstreamConfigError(f"{where}: put credentials in username/password_env, not in the URL")
    if parts.query or parts.fragment:
        raise UpstreamConfigError(f"{where}: registry URL must not have a query or fragment")
    host = parts.hostname.lower()
    if host in DOCKER_HUB_HOSTS:
        host = DOCKER_HUB_API
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if port is not None:
        host = f"{host}:{port}"
    path = parts.path.strip("/")
    if path.startswith("v2") and (path == "v2" or path.startswith("v2/")):
        path = path[2:].strip("/")  # "https://host/v2/" is a common way to write the API root
    if any(p in ("", ".", "..") for p in path.split("/")) and path:
        raise UpstreamConfigError(f"{where}: registry URL has an invalid path {parts.path!r}")
    return parts.scheme, host, path
