"""Asking one upstream about a manifest: its digest for a tag (HEAD), or its bytes (GET), read
within REGISTRY_MANIFEST_MAX_BYTES and a deadline and verified against the digest asked for
(or, for a tag, the upstream's Docker-Content-Digest when it sends one)."""

from __future__ import annotations

import logging

import urllib3
from urllib3.exceptions import HTTPError

from errors import DigestInvalid
from storage.digests import Digest
from storage.manifest_format import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from upstream.bodies import declared_length, read_capped
from upstream.client import UpstreamClient, UpstreamUnavailable
from upstream.config import UpstreamSettings
from upstream.routing import Route

log = logging.getLogger("berth.upstream")

# The same Accept for HEAD and GET: a registry may answer other types (and digests) to others.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


class ManifestFetcher:
    def __init__(self, settings: UpstreamSettings, manifest_max_bytes: int) -> None:
        self._settings = settings
        self._max_bytes = manifest_max_bytes

    def digest_of_tag(self, route: Route, tag: str) -> tuple[bool, Digest | None]:
        """(found, digest): whether the upstream has `tag`, and the digest it names for it (None
        when its answer carries no usable Docker-Content-Digest). A HEAD: no body to bound."""
        client = route.client
        response = client.request("HEAD", route.name, f"manifests/{tag}", {"Accept": MANIFEST_ACCEPT})
        client.discard(response)
        if not found(client, response, f"manifest {route.name}:{tag}"):
            return False, None
        return True, header_digest(response.headers.get("Docker-Content-Digest"))

    def manifest(
        self, route: Route, reference: str, wanted: Digest | None
    ) -> tuple[bytes, str | None] | None:
        """(body, content type) of `reference` upstream, None if the upstream does not have it;
        UpstreamUnavailable if it could not answer or sent bytes that fail verification."""
        client, name = route.client, route.name
        response = client.request("GET", name, f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT})
        try:
            if not found(client, response, f"manifest {name}:{reference}"):
                client.discard(response)
                return None
            limit = min(declared_length(response) or self._max_bytes, self._max_bytes)
            body = read_capped(response, self._max_bytes, self._settings.body_seconds(limit))
        except HTTPError as exc:
            response.close()
            raise UpstreamUnavailable(
                f"{client.registry.url}: manifest {type(exc).__name__}: {exc}"
            ) from None
        except UpstreamUnavailable:
            response.close()
            raise
        claimed = wanted or header_digest(response.headers.get("Docker-Content-Digest"))
        if claimed is not None and Digest.of(body, claimed.algorithm) != claimed:
            log.error(
                "upstream %s sent manifest %s:%s whose bytes do not match %s: refused",
                client.registry.url, name, reference, claimed,
            )  # fmt: skip
            raise UpstreamUnavailable(f"{client.registry.url}: manifest digest mismatch")
        return body, response.headers.get("Content-Type")


def found(client: UpstreamClient, response: urllib3.BaseHTTPResponse, what: str) -> bool:
    """True on 200; False when the upstream does not have it (404) or will not show it to us
    (401/403: Docker Hub answers those for repositories that do not exist); raises otherwise."""
    if response.status == 200:
        return True
    if response.status in (401, 403):
        log.warning("upstream %s refused %s with %s", client.registry.url, what, response.status)
    if response.status in (401, 403, 404):
        return False
    raise UpstreamUnavailable(f"{client.registry.url}: {what} answered {response.status}")


def header_digest(value: str | None) -> Digest | None:
    try:
        return Digest.parse(value.strip()) if value else None
    except DigestInvalid:
        return None
