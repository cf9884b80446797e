"""Content discovery: tags of a repository, the catalog, and referrers of a manifest."""

from __future__ import annotations

import json

import falcon

from resources.http import take_page
from storage.digests import Digest, validate_name
from storage.manifest_format import OCI_INDEX
from storage.registry import Registry


def _json(resp: falcon.Response, doc: dict, content_type: str = "application/json") -> None:
    resp.content_type = content_type
    resp.data = json.dumps(doc).encode()


class Tags:
    scope = "repository"

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        tags = self._registry.manifests.tags(validate_name(name))
        page, link = take_page(tags, req, f"/v2/{name}/tags/list")
        if link:
            resp.set_header("Link", link)
        _json(resp, {"name": name, "tags": page})


class Catalog:
    scope = "catalog"

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        repositories = self._registry.repositories(after=req.get_param("last") or None)
        page, link = take_page(repositories, req, "/v2/_catalog")
        if link:
            resp.set_header("Link", link)
        _json(resp, {"repositories": page})


class Referrers:
    scope = "repository"

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        subject = Digest.parse(digest)
        artifact_type = req.get_param("artifactType")
        manifests = self._registry.manifests.referrers(validate_name(name), subject, artifact_type)
        if artifact_type is not None:
            resp.set_header("OCI-Filters-Applied", "artifactType")
        _json(resp, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, OCI_INDEX)
