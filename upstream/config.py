"""Upstream registries from `REGISTRIES_JSON`, parsed and validated once at start.

The format is serverless-registry's, so a configuration moves over unchanged:

    [{"registry": "https://registry.example.com/some/prefix",
      "username": "puller", "password_env": "EXAMPLE_REGISTRY_TOKEN"},
     {"registry": "https://index.docker.io"}]

Credentials never appear in the JSON itself: `password_env` names the variable that holds the
password or token, so the JSON can sit in a config file or a process listing without leaking.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Docker Hub answers the API on registry-1.docker.io whatever name users know it by.
DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
DOCKER_HUB_API = "registry-1.docker.io"
_KEYS = frozenset({"registry", "username", "password_env"})


class UpstreamConfigError(ValueError):
    """REGISTRIES_JSON or an upstream setting is malformed (settings.py reports it)."""


@dataclass(frozen=True)
class UpstreamRegistry:
    """One upstream: where its API lives and how to log in to it."""

    url: str  # as configured, for logs and messages (never holds credentials)
    scheme: str
    host: str  # host[:port] of the API
    prefix: str  # path prefix kept in front of repository names ("" or "some/prefix")
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed: settings may be logged

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def is_docker_hub(self) -> bool:
        return self.host == DOCKER_HUB_API

    def remote_name(self, name: str) -> str:
        """The repository name upstream for local `name`: prefix kept, and Docker Hub's
        official images live under `library/`."""
        if self.is_docker_hub and not self.prefix and "/" not in name:
            name = f"library/{name}"
        return f"{self.prefix}/{name}" if self.prefix else name


@dataclass(frozen=True)
class UpstreamSettings:
    registries: tuple[UpstreamRegistry, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UpstreamSettings:
        return cls(
            registries=parse_registries(env.get("REGISTRIES_JSON", ""), env),
            connect_timeout=_seconds(env, "REGISTRY_UPSTREAM_CONNECT_TIMEOUT", 5.0),
            read_timeout=_seconds(env, "REGISTRY_UPSTREAM_READ_TIMEOUT", 30.0),
        )


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
    scheme, host, prefix = _split_url(url, where)
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
    return UpstreamRegistry(url, scheme, host, prefix, username, password)


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
