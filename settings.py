"""Settings, read from the environment once at start and validated there: a typo'd value is a
clear startup error, never a surprise at the first request."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ValueError):
    """A setting is missing, malformed or contradicts another."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {value}")
    return value


@dataclass(frozen=True)
class User:
    name: str
    password: str = field(repr=False)  # never printed: settings may be logged
    can_push: bool


MiB = 1024 * 1024


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    endpoint_url: str | None = None
    region: str = "auto"
    prefix: str = ""
    # 16 MiB parts: one part is the most an upload request buffers, and 10,000 parts of 16 MiB
    # allow blobs up to 156 GiB. Raise it for bigger layers (memory per upload grows with it).
    part_size: int = 16 * MiB
    redirect_downloads: bool = False
    max_pool_connections: int = 64

    @property
    def max_blob_size(self) -> int:
        return self.part_size * 10_000


@dataclass(frozen=True)
class Settings:
    storage: str = "filesystem"
    data_dir: Path = Path("./data")
    s3: S3Settings | None = None
    users: tuple[User, ...] = ()
    anonymous_pull: bool = False
    delete_enabled: bool = True
    manifest_max_bytes: int = 4 * 1024 * 1024
    realm: str = "Berth"

    @property
    def auth_configured(self) -> bool:
        return bool(self.users) or self.anonymous_pull

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        storage = env.get("REGISTRY_STORAGE", "filesystem").strip().lower()
        if storage not in ("filesystem", "s3"):
            raise SettingsError(f"REGISTRY_STORAGE must be 'filesystem' or 's3', not {storage!r}")
        data_dir = Path(env.get("REGISTRY_DATA_DIR") or "./data")
        users = []
        for user_var, pass_var, can_push in (
            ("USERNAME", "PASSWORD", True),
            ("READONLY_USERNAME", "READONLY_PASSWORD", False),
        ):
            name, password = env.get(user_var, ""), env.get(pass_var, "")
            if bool(name) != bool(password):
                raise SettingsError(f"{user_var} and {pass_var} must be set together")
            if ":" in name:
                raise SettingsError(f"{user_var} must not contain ':' (Basic auth splits on it)")
            if name:
                users.append(User(name, password, can_push))
        if len(users) == 2 and users[0].name == users[1].name:
            raise SettingsError("USERNAME and READONLY_USERNAME must differ")
        return cls(
            storage=storage,
            data_dir=data_dir,
            s3=_s3_settings(env) if storage == "s3" else None,
            users=tuple(users),
            anonymous_pull=_bool(env, "ANONYMOUS_PULL", False),
            delete_enabled=_bool(env, "REGISTRY_DELETE_ENABLED", True),
            manifest_max_bytes=_int(env, "REGISTRY_MANIFEST_MAX_BYTES", 4 * 1024 * 1024, 4 * 1024 * 1024),
            realm=env.get("REGISTRY_AUTH_REALM", "Berth") or "Berth",
        )


def _s3_settings(env: Mapping[str, str]) -> S3Settings:
    bucket = env.get("REGISTRY_S3_BUCKET", "").strip()
    if not bucket:
        raise SettingsError("REGISTRY_STORAGE=s3 needs REGISTRY_S3_BUCKET")
    endpoint = env.get("REGISTRY_S3_ENDPOINT_URL", "").strip() or None
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise SettingsError(f"REGISTRY_S3_ENDPOINT_URL must be an http(s) URL, not {endpoint!r}")
    prefix = env.get("REGISTRY_S3_PREFIX", "").strip().strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise SettingsError(f"REGISTRY_S3_PREFIX is not a valid key prefix: {prefix!r}")
    part_size = _int(env, "REGISTRY_S3_PART_SIZE", 16 * MiB, 5 * MiB)
    if part_size > 5 * 1024 * MiB - 5 * MiB:
        raise SettingsError("REGISTRY_S3_PART_SIZE must be at most 5 GiB - 5 MiB (R2's part limit)")
    return S3Settings(
        bucket=bucket,
        endpoint_url=endpoint,
        region=env.get("REGISTRY_S3_REGION", "").strip() or "auto",
        prefix=prefix,
        part_size=part_size,
        redirect_downloads=_bool(env, "REGISTRY_S3_REDIRECT", False),
        max_pool_connections=_int(env, "REGISTRY_S3_MAX_CONNECTIONS", 64, 1),
    )
