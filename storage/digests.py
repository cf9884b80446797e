"""Digests, repository names and tags: parsing and validation per the OCI grammar."""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from errors import DigestInvalid, ManifestInvalid, NameInvalid

# Registered algorithms and the length of their hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}

_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*")
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_NAME_LENGTH = 255


class Digest(NamedTuple):
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """A digest the registry can verify; DIGEST_INVALID (400) otherwise."""
        match = _DIGEST_RE.fullmatch(value or "")
        if not match:
            raise DigestInvalid("invalid digest format", detail={"digest": value})
        algorithm, encoded = match.groups()
        expected = ALGORITHMS.get(algorithm)
        if expected is None:
            raise DigestInvalid("unsupported digest algorithm", detail={"digest": value})
        if len(encoded) != expected or not re.fullmatch(r"[a-f0-9]+", encoded):
            raise DigestInvalid("invalid digest encoding", detail={"digest": value})
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def looks_like_digest(reference: str) -> bool:
    return ":" in reference


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise NameInvalid(detail={"name": name})
    return name


def validate_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag):
        raise ManifestInvalid("invalid tag", detail={"tag": tag})
    return tag


def is_valid_tag(tag: str) -> bool:
    return bool(_TAG_RE.fullmatch(tag))
