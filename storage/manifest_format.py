"""What a manifest says: parsing and validating the JSON of image manifests and indexes (OCI
and Docker schema 2), before anything is stored."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from errors import DigestInvalid, ManifestInvalid
from storage.digests import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
# Far beyond any real image (docker caps layers at 127) or index (a few dozen platforms and
# attestations), and small enough that checking every reference stays quick.
MAX_DESCRIPTORS = 4096
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    external: bool  # has `urls`: a non-distributable layer the registry need not hold


@dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    is_index: bool
    blobs: list[Descriptor] = field(default_factory=list)  # config and layers
    children: list[Descriptor] = field(default_factory=list)  # an index's manifests
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where} is not a descriptor")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where} has an invalid size")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where} has no digest")
    try:
        parsed = Digest.parse(digest)
    except DigestInvalid:
        raise ManifestInvalid(f"{where} has an invalid digest", detail={"digest": digest}) from None
    urls = value.get("urls")
    if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
        raise ManifestInvalid(f"{where} has invalid urls")
    return Descriptor(media_type, parsed, size, bool(urls))


def _media_type(doc: dict[str, Any], content_type: str | None) -> str:
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    header = (content_type or "").split(";")[0].strip().lower() or None
    if declared and header in MANIFEST_TYPES and declared != header:
        raise ManifestInvalid(
            "Content-Type does not match the manifest's mediaType",
            detail={"contentType": header, "mediaType": declared},
        )
    media_type = declared or (header if header in MANIFEST_TYPES else None)
    if media_type is None:
        # OCI lets mediaType be omitted; fall back on the document's shape.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type in DOCKER_SCHEMA1 or header in DOCKER_SCHEMA1:
        raise ManifestInvalid("Docker schema 1 manifests are not supported; push schema 2 or OCI")
    if media_type not in MANIFEST_TYPES:
        raise ManifestInvalid("unsupported manifest media type", detail={"mediaType": media_type})
    return media_type


def _check_count(count: int, what: str) -> None:
    if count > MAX_DESCRIPTORS:
        raise ManifestInvalid(
            f"too many {what}: at most {MAX_DESCRIPTORS} are accepted",
            detail={what: count, "limit": MAX_DESCRIPTORS},
        )


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ManifestInvalid("manifest is not valid JSON") from None
    except RecursionError:
        # Nesting deeper than the interpreter's recursion limit: no real manifest does that.
        raise ManifestInvalid("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest is not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise ManifestInvalid("schemaVersion must be 2")
    media_type = _media_type(doc, content_type)
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    annotations = doc.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        raise ManifestInvalid("annotations must be an object of strings")

    if media_type in INDEX_TYPES:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise ManifestInvalid("an index needs a manifests list")
        _check_count(len(manifests), "manifests")
        if "config" in doc or "layers" in doc:
            raise ManifestInvalid("an index has no config or layers")
        children = [_descriptor(m, f"manifests[{i}]") for i, m in enumerate(manifests)]
        return ParsedManifest(
            media_type,
            True,
            children=children,
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )

    if "manifests" in doc:
        raise ManifestInvalid("an image manifest has no manifests list")
    config = _descriptor(doc.get("config"), "config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ManifestInvalid("an image manifest needs a layers list")
    _check_count(len(layers), "layers")
    blobs = [config] + [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers)]
    return ParsedManifest(
        media_type,
        False,
        blobs=blobs,
        subject=subject,
        # The referrers API reports an image's artifactType, else its config's media type.
        artifact_type=artifact_type or config.media_type,
        annotations=annotations,
    )
