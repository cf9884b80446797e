"""HTTP resources, one class per endpoint, and the route table."""

from __future__ import annotations

import falcon

from auth.token_server import TokenServer
from resources.base import ApiVersion
from resources.blobs import Blob
from resources.gc import RepositoryGc
from resources.health import Liveness, Readiness
from resources.listing import Catalog, Referrers, Tags
from resources.manifests import Manifest
from resources.metrics import Metrics
from resources.token import Token
from resources.uploads import Upload, UploadStart
from settings import Settings
from storage.gc import GarbageCollector
from storage.registry import Registry
from upstream.pullthrough import PullThrough


def add_routes(
    app: falcon.App,
    registry: Registry,
    settings: Settings,
    pull_through: PullThrough | None,
    collector: GarbageCollector,
) -> None:
    # Order matters: the first match wins, and `blobs/uploads` must not be read as a digest.
    app.add_route("/healthz", Liveness())
    app.add_route("/readyz", Readiness(registry.driver))
    app.add_route("/v2", ApiVersion())
    app.add_route("/v2/", ApiVersion())
    app.add_route("/v2/_catalog", Catalog(registry))
    app.add_route("/v2/{name}/tags/list", Tags(registry))
    app.add_route(
        "/v2/{name}/manifests/{reference}",
        Manifest(registry, settings.manifest_max_bytes, settings.delete_enabled, pull_through),
    )
    app.add_route("/v2/{name}/blobs/uploads/", UploadStart(registry))
    app.add_route("/v2/{name}/blobs/uploads", UploadStart(registry))
    app.add_route("/v2/{name}/blobs/uploads/{upload_id}", Upload(registry))
    app.add_route("/v2/{name}/blobs/{digest}", Blob(registry, settings.delete_enabled, pull_through))
    app.add_route("/v2/{name}/referrers/{digest}", Referrers(registry))
    # Last: only a path ending in /gc that no route above took.
    app.add_route("/v2/{name}/gc", RepositoryGc(collector, settings.delete_enabled))


def add_token_route(app: falcon.App, token_server: TokenServer) -> None:
    """The token flow's endpoint (only with a signing key). No repository route matches
    `/v2/token` exactly, so where it sits in the table does not matter."""
    app.add_route("/v2/token", Token(token_server))


def add_metrics_route(app: falcon.App, metrics: Metrics) -> None:
    """`/metrics` (only when someone may read it). Outside /v2/, like the health endpoints."""
    app.add_route("/metrics", metrics)


class ApiVersionHeader:
    """`Docker-Distribution-API-Version` on every response: docker's ping looks for it."""

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        resp.set_header("Docker-Distribution-API-Version", "registry/2.0")
