"""Build small test images on disk, with no network access.

Three shapes are produced:

* an OCI image layout (``oci:DIR:TAG`` for skopeo) holding one image manifest,
* a Docker schema2 image in the containers/image ``dir:`` format
  (``dir:DIR`` for skopeo: ``manifest.json``, ``version`` and blobs named by hex),
* an OCI image layout whose ``index.json`` points at a multi-arch image index
  (amd64 + arm64 children).

Layers are tars holding one file of random (incompressible) bytes, gzip'd at
level 0, so building is fast and every image is unique.  ``layer_size`` sets the
size of each layer's payload in bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

DEFAULT_LAYER_SIZE = 1 << 20  # 1 MiB of random payload per layer


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, "amd64")


@dataclass
class Blob:
    digest: str
    data: bytes
    media_type: str

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        d.update(extra)
        return d


@dataclass
class Image:
    """One image manifest with its config and layers (all bytes kept in memory)."""

    manifest: Blob
    config: Blob
    layers: list[Blob]
    diff_ids: list[str]
    arch: str
    os: str = "linux"

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def config_digest(self) -> str:
        """Docker's image ID."""
        return self.config.digest

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]


@dataclass
class Index:
    """A multi-arch OCI image index and its children."""

    manifest: Blob
    children: list[Image] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def child(self, arch: str) -> Image:
        for img in self.children:
            if img.arch == arch:
                return img
        raise KeyError(arch)


def make_layer(size: int = DEFAULT_LAYER_SIZE, media_type: str = OCI_LAYER_GZIP) -> tuple[Blob, str]:
    """A gzip'd (level 0) tar holding ``size`` random bytes. Returns (blob, diff_id)."""
    payload = os.urandom(size)
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name=f"data/{payload[:8].hex()}.bin")
        info.size = size
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
        readme = f"berth e2e layer {payload[:8].hex()}\n".encode()
        info = tarfile.TarInfo(name="README")
        info.size = len(readme)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(readme))
    tar_bytes = tar_buf.getvalue()
    gz = gzip.compress(tar_bytes, compresslevel=0, mtime=0)
    return Blob(sha256_digest(gz), gz, media_type), sha256_digest(tar_bytes)


def make_image(
    layer_size: int = DEFAULT_LAYER_SIZE,
    n_layers: int = 2,
    arch: str | None = None,
    docker: bool = False,
) -> Image:
    """Build an image (OCI media types, or Docker schema2 ones if ``docker``)."""
    arch = arch or host_arch()
    layer_type = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
    layers, diff_ids = [], []
    for i in range(n_layers):
        # Vary sizes a little so layers are easy to tell apart in logs.
        blob, diff_id = make_layer(layer_size + i * 4099, layer_type)
        layers.append(blob)
        diff_ids.append(diff_id)
    config_doc = {
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/true"],
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"berth e2e layer {i}"} for i in range(n_layers)
        ],
    }
    if arch == "arm64":
        config_doc["variant"] = "v8"
    config_bytes = json.dumps(config_doc, indent=2).encode()
    config = Blob(sha256_digest(config_bytes), config_bytes, DOCKER_CONFIG if docker else OCI_CONFIG)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    manifest_bytes = json.dumps(manifest_doc, indent=3).encode()
    manifest = Blob(sha256_digest(manifest_bytes), manifest_bytes, manifest_doc["mediaType"])
    return Image(manifest, config, layers, diff_ids, arch)


def _platform(img: Image) -> dict:
    p = {"architecture": img.arch, "os": img.os}
    if img.arch == "arm64":
        p["variant"] = "v8"
    return p


def make_index(layer_size: int = DEFAULT_LAYER_SIZE, arches=("amd64", "arm64"), n_layers: int = 1) -> Index:
    children = [make_image(layer_size, n_layers=n_layers, arch=a) for a in arches]
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [c.manifest.descriptor(platform=_platform(c)) for c in children],
    }
    data = json.dumps(doc, indent=3).encode()
    return Index(Blob(sha256_digest(data), data, OCI_INDEX), children)


# --------------------------------------------------------------------------- writers


def _write_oci_blob(root: Path, blob: Blob) -> None:
    algo, hexd = blob.digest.split(":", 1)
    path = root / "blobs" / algo / hexd
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(blob.data)


def _write_oci_layout(root: Path, top: Blob, tag: str, blobs: list[Blob]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for b in blobs:
        _write_oci_blob(root, b)
    _write_oci_blob(root, top)
    index_path = root / "index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    index["manifests"].append(top.descriptor(annotations={"org.opencontainers.image.ref.name": tag}))
    index_path.write_text(json.dumps(index))


def write_oci_layout(root: Path, image: Image, tag: str = "latest") -> str:
    """Write ``image`` into an OCI layout at ``root``; returns ``oci:ROOT:TAG``."""
    _write_oci_layout(Path(root), image.manifest, tag, image.blobs())
    return f"oci:{root}:{tag}"


def write_oci_index_layout(root: Path, index: Index, tag: str = "latest") -> str:
    blobs: list[Blob] = []
    for child in index.children:
        blobs += [child.manifest, *child.blobs()]
    _write_oci_layout(Path(root), index.manifest, tag, blobs)
    return f"oci:{root}:{tag}"


def write_dir_image(root: Path, image: Image) -> str:
    """Write ``image`` in the containers/image ``dir:`` format; returns ``dir:ROOT``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "version").write_text("Directory Transport Version: 1.1\n")
    (root / "manifest.json").write_bytes(image.manifest.data)
    for b in image.blobs():
        (root / b.digest.split(":", 1)[1]).write_bytes(b.data)
    return f"dir:{root}"


# --------------------------------------------------------------------------- readers


def read_oci_layout(root: Path, tag: str | None = None) -> tuple[dict, bytes]:
    """Return (descriptor, manifest bytes) of ``tag`` (or the only entry) in an OCI layout."""
    root = Path(root)
    index = json.loads((root / "index.json").read_text())
    entries = index["manifests"]
    if tag is not None:
        entries = [
            m for m in entries if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        ]
    assert len(entries) == 1, f"expected one manifest for tag {tag!r} in {root}: {index}"
    desc = entries[0]
    return desc, read_oci_blob(root, desc["digest"])


def read_oci_blob(root: Path, digest: str) -> bytes:
    algo, hexd = digest.split(":", 1)
    data = (Path(root) / "blobs" / algo / hexd).read_bytes()
    assert sha256_digest(data) == digest, f"blob {digest} in {root} is corrupt"
    return data
