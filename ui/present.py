"""Turning stored facts into what a page shows: natural tag order, sizes and times for people,
names for media types, an image config's details and its history as a Dockerfile-like list.
Framework-free; everything returned is plain data the templates escape."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_RUNS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: `1.9` < `1.10` < `v2` < `v10`."""
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in _RUNS.split(text) if p)
    return parts, text


def short_digest(digest: Any) -> str:
    text = str(digest)
    algorithm, _, hex_part = text.partition(":")
    return f"{algorithm}:{hex_part[:12]}" if hex_part else text[:19]


_ISO = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time as image configs write it (nanoseconds, `Z` or an offset)."""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str):
        return None
    match = _ISO.match(value.strip())
    if not match:
        return None
    date, clock, fraction, zone = match.groups()
    fraction = (fraction or ".0")[:7]  # Python parses microseconds at most
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        parsed = datetime.fromisoformat(f"{date}T{clock}{fraction}{zone}")
    except ValueError:
        return None
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class When:
    iso: str  # machine-readable, for <time datetime>
    text: str  # "2024-01-01 12:00 UTC"
    ago: str  # "3 days ago"


def when(value: Any, now: float | None = None) -> When | None:
    moment = parse_time(value)
    if moment is None:
        return None
    seconds = (now if now is not None else time.time()) - moment.timestamp()
    return When(moment.strftime("%Y-%m-%dT%H:%M:%SZ"), moment.strftime("%Y-%m-%d %H:%M UTC"), _ago(seconds))


_UNITS = (("year", 365 * 86400), ("month", 30 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60))


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    for unit, length in _UNITS:
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'' if count == 1 else 's'} ago"
    return "just now"


# -- what kind of thing a manifest is ---------------------------------------------------------

_ARTIFACT_NAMES = (
    ("application/vnd.cncf.helm.", "Helm chart"),
    ("application/spdx", "SBOM (SPDX)"),
    ("text/spdx", "SBOM (SPDX)"),
    ("application/vnd.cyclonedx", "SBOM (CycloneDX)"),
    ("application/vnd.syft", "SBOM (Syft)"),
    ("application/vnd.dev.cosign.artifact.sig", "Signature (cosign)"),
    ("application/vnd.dev.cosign.simplesigning", "Signature (cosign)"),
    ("application/vnd.dev.sigstore.bundle", "Signature (Sigstore bundle)"),
    ("application/vnd.cncf.notary.signature", "Signature (Notation)"),
    ("application/vnd.in-toto", "Attestation (in-toto)"),
    ("application/vnd.dsse.envelope", "Attestation (DSSE)"),
    ("application/vnd.dev.cosign.artifact.sbom", "SBOM (cosign)"),
    ("application/vnd.wasm", "WebAssembly module"),
    ("application/vnd.cncf.flux", "Flux artifact"),
    ("application/vnd.oci.image.config.v1+json", "Image"),
    ("application/vnd.oci.empty.v1+json", "Artifact"),
)


def artifact_name(artifact_type: str | None) -> str:
    """A person's name for an artifact type; the type itself when unknown."""
    if not artifact_type:
        return "Artifact"
    lowered = artifact_type.lower()
    for prefix, label in _ARTIFACT_NAMES:
        if lowered.startswith(prefix):
            return label
    if "sbom" in lowered or "spdx" in lowered or "cyclonedx" in lowered:
        return "SBOM"
    if "signature" in lowered or ".sig" in lowered:
        return "Signature"
    return "Artifact"


def kind_label(kind: str, artifact_type: str | None) -> str:
    if kind == "image":
        return "Image"
    if kind == "index":
        return "Index"
    return artifact_name(artifact_type)


# -- an image config and its history ----------------------------------------------------------


@dataclass
class HistoryStep:
    number: int
    instruction: str
    created: When | None
    comment: str
    layer: dict | None  # the layer's descriptor; None for a step that made no layer
    empty: bool


@dataclass
class ImageConfig:
    created: When | None = None
    platform: str = ""
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)
    exposed_ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    author: str = ""


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, list):
        return [v if isinstance(v, str) else str(v) for v in value]
    if isinstance(value, str):
        return [value]
    return None


def image_config(doc: Any) -> ImageConfig:
    if not isinstance(doc, dict):
        return ImageConfig()
    inner = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    platform = "/".join(
        str(doc[k]) for k in ("os", "architecture", "variant") if isinstance(doc.get(k), str) and doc[k]
    )
    if isinstance(doc.get("os.version"), str):
        platform += f" ({doc['os.version']})"
    labels = inner.get("Labels") if isinstance(inner.get("Labels"), dict) else {}
    return ImageConfig(
        created=when(doc.get("created")),
        platform=platform,
        entrypoint=_strings(inner.get("Entrypoint")),
        cmd=_strings(inner.get("Cmd")),
        env=_strings(inner.get("Env")) or [],
        exposed_ports=sorted(inner["ExposedPorts"]) if isinstance(inner.get("ExposedPorts"), dict) else [],
        volumes=sorted(inner["Volumes"]) if isinstance(inner.get("Volumes"), dict) else [],
        labels={str(k): str(v) for k, v in sorted(labels.items())},
        working_dir=str(inner.get("WorkingDir") or ""),
        user=str(inner.get("User") or ""),
        stop_signal=str(inner.get("StopSignal") or ""),
        author=str(doc.get("author") or ""),
    )


_NOP = re.compile(r"^/bin/sh -c #\(nop\)\s*")
_SHELL = re.compile(r"^/bin/sh -c\s+")


def instruction(created_by: str) -> str:
    """A history entry's `created_by` as the Dockerfile line it came from, as far as it can be
    told: docker's classic builder writes `/bin/sh -c #(nop) CMD [...]` for metadata steps and
    `/bin/sh -c <command>` for RUN; BuildKit writes `RUN /bin/sh -c ... # buildkit`."""
    text = created_by.strip()
    if text.endswith("# buildkit"):
        text = text[: -len("# buildkit")].rstrip()
    if _NOP.match(text):
        return _NOP.sub("", text)
    if _SHELL.match(text):
        return "RUN " + _SHELL.sub("", text)
    return text


def history(config_doc: Any, layers: list[dict]) -> list[HistoryStep]:
    """The config's history, numbered, each step that made a layer paired with it in order.
    Layers the history does not account for are listed after it, as steps of their own."""
    entries = config_doc.get("history") if isinstance(config_doc, dict) else None
    steps: list[HistoryStep] = []
    remaining = list(layers)
    for number, entry in enumerate(entries if isinstance(entries, list) else [], start=1):
        if not isinstance(entry, dict):
            continue
        empty = entry.get("empty_layer") is True
        layer = None if empty or not remaining else remaining.pop(0)
        steps.append(
            HistoryStep(
                number,
                instruction(str(entry.get("created_by") or "")),
                when(entry.get("created")),
                str(entry.get("comment") or ""),
                layer,
                empty,
            )
        )
    for layer in remaining:
        steps.append(HistoryStep(len(steps) + 1, "(no history entry)", None, "", layer, False))
    return steps


def safe_link(value: str) -> str | None:
    """`value` if it is a plain http(s) URL a page may link to; None otherwise (so a
    `javascript:` annotation is shown as text, never as a link)."""
    if len(value) > 2048 or not re.fullmatch(r"https?://[^\s\"'<>`]+", value):
        return None
    return value
