"""Documents the web UI tests push: an image whose config and annotations are hostile (markup,
quotes, `javascript:` URLs, very long strings), and oras-style artifacts (a signature, an SBOM)
that refer to a subject. Each is a list of blobs plus a manifest, pushed by the caller."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM_TYPE = "application/spdx+json"

# Script that would leave a mark if it ever ran (the browser test looks for the mark).
SCRIPT = "<script>document.documentElement.setAttribute('data-xss','1');alert(1)</script>"
IMG = "\"'><img src=x onerror=\"document.documentElement.setAttribute('data-xss','2')\">"
JS_URL = "javascript:document.documentElement.setAttribute('data-xss','3')"
LONG = "L" * 20_000


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Pushable:
    blobs: list[bytes]
    manifest: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def _descriptor(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def hostile_image(salt: str = "") -> Pushable:
    layer = b"\x1f\x8b" + b"hostile layer bytes" * 10
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-05-06T07:08:09.123456789Z",
            "config": {
                "Env": [f"EVIL={SCRIPT}", f"QUOTES={IMG}"],
                "Cmd": ["/bin/sh", "-c", f"echo '{SCRIPT}'"],
                "Entrypoint": [f"</code>{SCRIPT}"],
                "Labels": {
                    "org.opencontainers.image.source": JS_URL,
                    "org.opencontainers.image.url": "https://example.com/docs?a=1&b=2",
                    "evil": SCRIPT,
                    "quotes": IMG,
                    f"key{SCRIPT}": "value",
                    "long": LONG,
                },
                "WorkingDir": f"/{SCRIPT}",
                "User": IMG,
                "ExposedPorts": {f"80/tcp{SCRIPT}": {}},
            },
            "rootfs": {"type": "layers", "diff_ids": [digest_of(b"diff")]},
            "history": [
                {
                    "created": "2024-05-06T07:08:09Z",
                    "created_by": f"/bin/sh -c #(nop) LABEL x={SCRIPT}",
                    "empty_layer": True,
                },
                {
                    "created": "2024-05-06T07:08:09Z",
                    "created_by": f"/bin/sh -c echo {IMG}",
                    "comment": SCRIPT,
                },
            ],
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config),
            "layers": [_descriptor(OCI_LAYER, layer, annotations={"org.opencontainers.image.title": SCRIPT})],
            "annotations": {
                "org.opencontainers.image.description": SCRIPT,
                "org.opencontainers.image.documentation": JS_URL,
                "quotes": IMG,
                "long": LONG,
                **({"salt": salt} if salt else {}),
            },
        }
    ).encode()
    return Pushable([config, layer], manifest)


def artifact(subject: dict, artifact_type: str, payload: bytes, payload_type: str, title: str) -> Pushable:
    """An oras-style artifact: `artifactType`, the empty config, one layer, and a `subject`."""
    empty = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": _descriptor(OCI_EMPTY, empty),
            "layers": [
                _descriptor(payload_type, payload, annotations={"org.opencontainers.image.title": title})
            ],
            "subject": subject,
            "annotations": {"org.opencontainers.image.created": "2024-06-01T00:00:00Z"},
        }
    ).encode()
    return Pushable([empty, payload], manifest)


def signature_for(subject: dict) -> Pushable:
    return artifact(
        subject,
        SIGNATURE_TYPE,
        b'{"critical": {"type": "cosign container image signature"}}',
        "application/vnd.dev.cosign.simplesigning.v1+json",
        "signature.json",
    )


def sbom_for(subject: dict) -> Pushable:
    return artifact(
        subject, SBOM_TYPE, b'{"spdxVersion": "SPDX-2.3", "name": "berth-test"}', SBOM_TYPE, "sbom.spdx.json"
    )
