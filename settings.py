"""Settings, read from the environment once at start and validated there: a typo'd value is a
clear startup error, never a surprise at the first request."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auth.client_address import DEFAULT_FORWARDED_ALLOW_IPS, DEFAULT_TRUSTED_PROXIES, TrustedProxies
from upstream.config import UpstreamConfigError, UpstreamSettings


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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `1.5h` or `7d`; ValueError otherwise."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:]) if value else None
    number = value[:-1] if unit else value
    seconds = float(number) * (unit or 1)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"not a duration: {text!r}")
    return seconds


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except ValueError:
        raise SettingsError(
            f"{name} must be a duration such as 90, 90s, 15m, 1h or 7d, not {raw!r}"
        ) from None


GC_MODES = ("unreferenced", "untagged")  # storage/gc.py's MODES


@dataclass(frozen=True)
class GcSettings:
    """Garbage collection (storage/gc.py)."""

    grace: float = 3600.0  # REGISTRY_GC_GRACE: nothing younger is collected
    upload_ttl: float = 86400.0  # REGISTRY_UPLOAD_TTL: idle upload sessions older are purged
    interval: float = 0.0  # REGISTRY_GC_INTERVAL: scheduled collection in the server; 0 = off
    mode: str = "unreferenced"  # REGISTRY_GC_MODE: what the scheduled collection collects


def _gc_settings(env: Mapping[str, str]) -> GcSettings:
    mode = env.get("REGISTRY_GC_MODE", "unreferenced").strip().lower() or "unreferenced"
    if mode not in GC_MODES:
        raise SettingsError(f"REGISTRY_GC_MODE must be 'unreferenced' or 'untagged', not {mode!r}")
    interval = _duration(env, "REGISTRY_GC_INTERVAL", 0.0)
    if 0 < interval < 60:
        raise SettingsError("REGISTRY_GC_INTERVAL must be 0 (off) or at least 60 seconds")
    return GcSettings(
        grace=_duration(env, "REGISTRY_GC_GRACE", 3600.0),
        upload_ttl=_duration(env, "REGISTRY_UPLOAD_TTL", 86400.0),
        interval=interval,
        mode=mode,
    )


@dataclass(frozen=True)
class User:
    name: str
    password: str = field(repr=False)  # never printed: settings may be logged
    can_push: bool


# ------------------------------------------------------------------------------------------------
# Auth: JWT verification and the token flow. Only the shape of each key is checked here, so this
# module stays standard-library only (the gunicorn master validates settings before gevent
# patches anything); auth/tokens.py loads the keys and fails the start if one is not usable.

# Each key signs and verifies with one algorithm fixed by its type, never taken from a token's
# header: so neither `alg: none` nor an HMAC keyed with the public key can pass.
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_OKP_ALGORITHMS = ("EdDSA", "Ed25519")  # RFC 8037's name and RFC 9864's for the same signature
_KEY_MEMBERS = {"EC": ("crv", "x", "y"), "RSA": ("n", "e"), "OKP": ("crv", "x")}
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class TokenSettings:
    """Everything off by default: Basic auth only."""

    # JWT_REGISTRY_TOKENS_PUBLIC_KEY: verifies JWTs minted elsewhere (serverless-registry style).
    public_key: dict[str, Any] | None = None
    # REGISTRY_TOKEN_PRIVATE_KEY: turns on Docker's token flow (Bearer challenges, /v2/token).
    signing_key: dict[str, Any] | None = field(default=None, repr=False)
    audience: str | None = None  # REGISTRY_AUTH_AUDIENCE: `aud` a token must carry
    issuer: str | None = None  # REGISTRY_AUTH_ISSUER: `iss` a token must carry
    service: str = "berth"  # REGISTRY_TOKEN_SERVICE: `service` in challenges
    lifetime: int = 300  # REGISTRY_TOKEN_LIFETIME: seconds an issued token is valid
    realm_url: str | None = None  # REGISTRY_TOKEN_REALM: else derived from each request

    @property
    def token_flow(self) -> bool:
        return self.signing_key is not None

    # What the token endpoint writes in `aud` and `iss`, and what the token flow's own key
    # requires of every token it verifies (auth/tokens.py).
    @property
    def own_audience(self) -> str:
        return self.audience or self.service

    @property
    def own_issuer(self) -> str:
        return self.issuer or self.service

    @property
    def verifies_jwts(self) -> bool:
        return self.public_key is not None or self.signing_key is not None


def jwk_algorithm(jwk: Mapping[str, Any]) -> str:
    """The one JWS algorithm a (shape-checked) key is used with."""
    kty, alg = jwk.get("kty"), jwk.get("alg")
    if kty == "EC":
        expected = _EC_ALGORITHMS[jwk["crv"]]
        if alg not in (None, expected):
            raise SettingsError(f"an EC {jwk['crv']} key signs with {expected}, not {alg!r}")
        return expected
    if kty == "OKP":
        if alg not in (None, *_OKP_ALGORITHMS):
            raise SettingsError(f"an Ed25519 key signs with EdDSA, not {alg!r}")
        return "EdDSA"
    if alg not in (None, *_RSA_ALGORITHMS):
        raise SettingsError(f"an RSA key signs with one of {', '.join(_RSA_ALGORITHMS)}, not {alg!r}")
    return alg or "RS256"


def _jwk(env: Mapping[str, str], name: str, private: bool) -> dict[str, Any] | None:
    """A JSON Web Key given as base64 of its JSON (as serverless-registry takes it) or as JSON.
    Messages never quote the value: it may be a private key."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    text = raw
    if not raw.startswith("{"):
        try:
            padded = raw.replace("-", "+").replace("_", "/") + "=" * (-len(raw) % 4)
            text = base64.b64decode(padded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise SettingsError(f"{name} must be a base64-encoded JSON Web Key (it is not base64)") from None
    try:
        jwk = json.loads(text)
    except ValueError:
        raise SettingsError(f"{name} must be a base64-encoded JSON Web Key (it is not JSON)") from None
    if not isinstance(jwk, dict):
        raise SettingsError(f"{name} must be a JSON Web Key (a JSON object)")
    kty = jwk.get("kty")
    if kty == "oct":
        raise SettingsError(f"{name} is a symmetric (oct) key: use an EC P-256, RSA or Ed25519 key pair")
    if kty not in _KEY_MEMBERS:
        raise SettingsError(f"{name} has key type {kty!r}: use EC (P-256/384/521), RSA or OKP (Ed25519)")
    for member in (*_KEY_MEMBERS[kty], *(("d",) if private else ())):
        value = jwk.get(member)
        if not isinstance(value, str) or not value:
            raise SettingsError(f"{name}: the {kty} key has no {member!r} member")
        if member != "crv" and not set(value) <= _B64URL:
            raise SettingsError(f"{name}: the {member!r} member is not base64url")
    if kty == "EC" and jwk["crv"] not in _EC_ALGORITHMS:
        raise SettingsError(f"{name}: EC curve {jwk['crv']!r} is not one of P-256, P-384, P-521")
    if kty == "OKP" and jwk["crv"] != "Ed25519":
        raise SettingsError(f"{name}: OKP curve {jwk['crv']!r} is not Ed25519")
    if not private and "d" in jwk:
        raise SettingsError(f"{name} holds a private key (it has 'd'): give the public key only")
    if jwk.get("use") not in (None, "sig"):
        raise SettingsError(f"{name} is not a signing key (use={jwk.get('use')!r})")
    try:
        jwk_algorithm(jwk)
    except SettingsError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return jwk


def _token_settings(env: Mapping[str, str]) -> TokenSettings:
    signing_key = _jwk(env, "REGISTRY_TOKEN_PRIVATE_KEY", private=True)
    if signing_key is None:
        flow_vars = ("REGISTRY_TOKEN_SERVICE", "REGISTRY_TOKEN_REALM", "REGISTRY_TOKEN_LIFETIME")
        flow_only = [n for n in flow_vars if env.get(n, "").strip()]
        if flow_only:
            raise SettingsError(f"{', '.join(flow_only)}: only used with REGISTRY_TOKEN_PRIVATE_KEY")
    audience = env.get("REGISTRY_AUTH_AUDIENCE", "").strip() or None
    service = env.get("REGISTRY_TOKEN_SERVICE", "").strip() or audience or "berth"
    realm = env.get("REGISTRY_TOKEN_REALM", "").strip() or None
    # Both go inside a quoted WWW-Authenticate parameter.
    for var, value in (("REGISTRY_TOKEN_SERVICE", service), ("REGISTRY_TOKEN_REALM", realm or "")):
        if any(c in value for c in '"\\') or not value.isprintable():
            raise SettingsError(f"{var} must not contain quotes, backslashes or control characters")
    if realm and not realm.startswith(("http://", "https://")):
        raise SettingsError(f"REGISTRY_TOKEN_REALM must be an absolute http(s) URL, not {realm!r}")
    lifetime = _int(env, "REGISTRY_TOKEN_LIFETIME", 300, 60)
    if lifetime > 86400:
        raise SettingsError("REGISTRY_TOKEN_LIFETIME must be at most 86400 (one day)")
    return TokenSettings(
        public_key=_jwk(env, "JWT_REGISTRY_TOKENS_PUBLIC_KEY", private=False),
        signing_key=signing_key,
        audience=audience,
        issuer=env.get("REGISTRY_AUTH_ISSUER", "").strip() or None,
        service=service,
        lifetime=lifetime,
        realm_url=realm,
    )


@dataclass(frozen=True)
class FailedLoginSettings:
    """Slowing repeated failed logins (auth/failures.py)."""

    burst: int = 10  # REGISTRY_AUTH_FAILURE_BURST: failures before slowing down; 0 turns it off
    per_minute: int = 6  # REGISTRY_AUTH_FAILURE_RATE: failures a minute allowed after the burst


def _failed_login_settings(env: Mapping[str, str]) -> FailedLoginSettings:
    burst = _int(env, "REGISTRY_AUTH_FAILURE_BURST", 10, 0)
    per_minute = _int(env, "REGISTRY_AUTH_FAILURE_RATE", 6, 1)
    if burst > 10_000:
        raise SettingsError("REGISTRY_AUTH_FAILURE_BURST must be at most 10000 (0 turns the limit off)")
    if per_minute > 60_000:
        raise SettingsError("REGISTRY_AUTH_FAILURE_RATE must be at most 60000 (failures a minute)")
    return FailedLoginSettings(burst, per_minute)


def _trusted_proxies(env: Mapping[str, str]) -> TrustedProxies:
    # The same variable gunicorn.conf.py gives gunicorn, read the same way (auth/client_address.py).
    try:
        return TrustedProxies.parse(env.get("FORWARDED_ALLOW_IPS", DEFAULT_FORWARDED_ALLOW_IPS))
    except ValueError as exc:
        raise SettingsError(f"FORWARDED_ALLOW_IPS: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Observability: logs, the metrics endpoint and storage usage (observability/, resources/metrics.py).

LOG_FORMATS = ("text", "json")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def log_format_from_env(env: Mapping[str, str]) -> str:
    """REGISTRY_LOG_FORMAT. gunicorn.conf.py reads it too, to format the server's own lines."""
    value = env.get("REGISTRY_LOG_FORMAT", "").strip().lower() or "text"
    if value not in LOG_FORMATS:
        raise SettingsError(f"REGISTRY_LOG_FORMAT must be 'text' or 'json', not {value!r}")
    return value


@dataclass(frozen=True)
class ObservabilitySettings:
    log_format: str = "text"  # REGISTRY_LOG_FORMAT
    access_log: bool = True  # REGISTRY_ACCESS_LOG: one structured line per request
    # REGISTRY_METRICS_TOKEN: a scraper sending `Authorization: Bearer <it>` may read /metrics
    metrics_token: str | None = field(default=None, repr=False)
    # REGISTRY_METRICS_ALLOW: client addresses (through trusted proxies) that may read /metrics
    metrics_allow: tuple[_Network, ...] = (ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("::1"))
    usage_interval: int = 3600  # REGISTRY_USAGE_INTERVAL: seconds between usage walks; 0 = off
    usage_top_repositories: int = 50  # REGISTRY_USAGE_TOP_REPOSITORIES: labelled repositories

    @property
    def metrics_enabled(self) -> bool:
        """Anyone at all may read /metrics; otherwise the route does not exist."""
        return self.metrics_token is not None or bool(self.metrics_allow)


def _networks(env: Mapping[str, str], name: str, default: str) -> tuple[_Network, ...]:
    raw = env.get(name)
    entries = [e.strip() for e in (default if raw is None else raw).split(",") if e.strip()]
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError:
            raise SettingsError(
                f"{name}: {entry!r} is not an IP address or network (e.g. 10.0.0.0/8; "
                "0.0.0.0/0,::/0 for everyone)"
            ) from None
    return tuple(networks)


def _observability_settings(env: Mapping[str, str]) -> ObservabilitySettings:
    token = env.get("REGISTRY_METRICS_TOKEN", "").strip() or None
    if token is not None and (
        len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token
    ):
        # It travels as a Bearer token: printable ASCII without spaces, long enough not to guess.
        raise SettingsError(
            "REGISTRY_METRICS_TOKEN must be at least 16 printable ASCII characters without spaces"
        )
    interval = _int(env, "REGISTRY_USAGE_INTERVAL", 3600, 0)
    if 0 < interval < 10:
        raise SettingsError("REGISTRY_USAGE_INTERVAL must be 0 (off) or at least 10 seconds")
    top = _int(env, "REGISTRY_USAGE_TOP_REPOSITORIES", 50, 0)
    if top > 1000:
        raise SettingsError("REGISTRY_USAGE_TOP_REPOSITORIES must be at most 1000 (one series each)")
    return ObservabilitySettings(
        log_format=log_format_from_env(env),
        access_log=_bool(env, "REGISTRY_ACCESS_LOG", True),
        metrics_token=token,
        metrics_allow=_networks(env, "REGISTRY_METRICS_ALLOW", "127.0.0.1,::1"),
        usage_interval=interval,
        usage_top_repositories=top,
    )


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
    allow_sparse_index: bool = False  # REGISTRY_ALLOW_SPARSE_INDEX: index children may be missing
    realm: str = "Berth"
    tokens: TokenSettings = field(default_factory=TokenSettings)
    failed_logins: FailedLoginSettings = field(default_factory=FailedLoginSettings)
    # FORWARDED_ALLOW_IPS: peers whose X-Forwarded-For names the client (auth/client_address.py)
    trusted_proxies: TrustedProxies = DEFAULT_TRUSTED_PROXIES
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)  # REGISTRIES_JSON
    gc: GcSettings = field(default_factory=GcSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    ui: bool = True  # REGISTRY_UI: the web pages under /ui/ (ui/)

    @property
    def auth_configured(self) -> bool:
        return bool(self.users) or self.anonymous_pull or self.tokens.public_key is not None

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
            allow_sparse_index=_bool(env, "REGISTRY_ALLOW_SPARSE_INDEX", False),
            realm=_realm(env.get("REGISTRY_AUTH_REALM", "Berth") or "Berth"),
            tokens=_token_settings(env),
            failed_logins=_failed_login_settings(env),
            trusted_proxies=_trusted_proxies(env),
            upstream=_upstream_settings(env),
            gc=_gc_settings(env),
            observability=_observability_settings(env),
            ui=_bool(env, "REGISTRY_UI", True),
        )


def _realm(value: str) -> str:
    # It is quoted inside WWW-Authenticate: a quote or a control character would break it.
    if any(c == '"' or c == "\\" or ord(c) < 32 or ord(c) == 127 for c in value):
        raise SettingsError("REGISTRY_AUTH_REALM must not contain quotes, backslashes or control characters")
    return value


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


def _upstream_settings(env: Mapping[str, str]) -> UpstreamSettings:
    # Pull-through upstreams (REGISTRIES_JSON and their timeouts); see upstream/config.py.
    try:
        return UpstreamSettings.from_env(env)
    except UpstreamConfigError as exc:
        raise SettingsError(str(exc)) from None
