"""`/v2/<name>/manifests/<reference>`: manifests by tag or digest."""

from __future__ import annotations

import falcon

from errors import ManifestUnknown, Unsupported
from observability import metrics
from resources.http import read_small_body
from storage.digests import validate_name
from storage.manifests import ManifestInfo
from storage.registry import Registry
from upstream.pullthrough import PullThrough


def _headers(resp: falcon.Response, info: ManifestInfo) -> None:
    resp.content_type = info.media_type
    resp.set_header("Docker-Content-Digest", str(info.digest))
    resp.set_header("ETag", f'"{info.digest}"')


class Manifest:
    scope = "repository"

    def __init__(
        self,
        registry: Registry,
        max_bytes: int,
        delete_enabled: bool,
        pull_through: PullThrough | None = None,
    ) -> None:
        self._registry = registry
        self._max_bytes = max_bytes
        self._delete_enabled = delete_enabled
        self._pull_through = pull_through

    def on_head(self, req: falcon.Request, resp: falcon.Response, name: str, reference: str) -> None:
        info, _ = self._resolve(validate_name(name), reference)
        _headers(resp, info)
        resp.content_length = info.size

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, reference: str) -> None:
        info, body = self._resolve(validate_name(name), reference)
        _headers(resp, info)
        resp.data = body if body is not None else self._registry.manifests.read(info)

    def _resolve(self, name: str, reference: str) -> tuple[ManifestInfo, bytes | None]:
        try:
            info = self._registry.manifests.resolve(name, reference)
        except ManifestUnknown:
            if self._pull_through is None:
                raise
            # Missing here: fetched upstream and stored (HEAD too, so the GET after is local).
            return self._pull_through.manifest(name, reference)
        if self._pull_through is not None:
            metrics.pullthrough("manifest", "hit")
        return info, None

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str, reference: str) -> None:
        validate_name(name)
        body = read_small_body(req, self._max_bytes)
        extra_tags = req.get_param_as_list("tag") or []
        result = self._registry.manifests.put(name, reference, body, req.content_type, extra_tags)
        resp.status = falcon.HTTP_201
        resp.set_header("Location", f"/v2/{name}/manifests/{result.digest}")
        resp.set_header("Docker-Content-Digest", str(result.digest))
        if result.subject is not None:
            # Tells the client this registry keeps a referrers index for the subject.
            resp.set_header("OCI-Subject", str(result.subject))
        for tag in result.tags:
            if tag != reference:
                resp.append_header("OCI-Tag", tag)
        resp.content_length = 0

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, reference: str) -> None:
        if not self._delete_enabled:
            raise Unsupported("deletes are disabled on this registry")
        self._registry.manifests.delete(validate_name(name), reference)
        resp.status = falcon.HTTP_202
        resp.content_length = 0
