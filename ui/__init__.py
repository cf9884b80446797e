"""The web UI: server-rendered pages to browse the registry under /ui/ (REGISTRY_UI, on by
default). A client of the registry's services like the API resources, with the same accounts
and rights; see ui/pages.py for the pages and ui/security.py for what keeps them safe."""

from __future__ import annotations

import json

import falcon

from settings import Settings
from storage.registry import Registry
from ui.assets import Assets, StaticFile
from ui.pages import DeleteTags, Home, ImagePage, Login, Pages, RawDocument, RepositoryList, RepositoryPage
from ui.security import PAGE_HEADERS


def add_ui(app: falcon.App, registry: Registry, settings: Settings) -> None:
    """Routes for the pages, and the middleware that gives them their headers and HTML error
    pages. Added after the API routes: nothing here overlaps /v2/."""
    assets = Assets()
    pages = Pages(registry, settings.delete_enabled, settings.realm, settings.trusted_proxies, assets)
    app.add_route("/", Home())
    app.add_route("/ui", Home())
    app.add_route("/ui/", RepositoryList(pages))
    app.add_route("/ui/login", Login(pages))
    app.add_route("/ui/static/{filename}", StaticFile(assets))
    # `-` cannot start a repository name component, so `/-/` ends the name unambiguously; these
    # come before the repository page, whose `{name}` would take the rest of the path.
    app.add_route("/ui/r/{name}/-/image/{reference}", ImagePage(pages))
    app.add_route("/ui/r/{name}/-/raw/{digest}", RawDocument(pages))
    app.add_route("/ui/r/{name}/-/delete", DeleteTags(pages))
    app.add_route("/ui/r/{name}", RepositoryPage(pages))
    app.add_middleware(PageResponses(pages))


class PageResponses:
    """Every response under /ui/ (and `/`) carries the page headers (CSP...), and an error
    under /ui, which resources/errors.py rendered as an OCI JSON body like any other, is shown
    as an HTML page instead, keeping its status and headers (a 401's challenge)."""

    def __init__(self, pages: Pages) -> None:
        self._pages = pages

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        if not (req.path == "/" or req.path == "/ui" or req.path.startswith("/ui/")):
            return
        for header, value in PAGE_HEADERS.items():
            resp.set_header(header, value)
        if req.path == "/" or resp.status_code < 400:
            return  # `/` refuses as the API does (it was an unknown route before the UI)
        if not (resp.content_type or "").startswith("application/json"):
            return
        code, message = "UNKNOWN", "error"
        try:
            error = json.loads(resp.data or b"{}")["errors"][0]
            code, message = str(error.get("code")), str(error.get("message"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            pass
        resp.content_type = "text/html; charset=utf-8"
        resp.set_header("Cache-Control", "no-store")
        resp.text = self._pages.render_error(resp.status_code, code, message)
        resp.data = None
