"""`GET /v2/`: the API version check clients ping first (and `docker login` relies on)."""

from __future__ import annotations

import falcon


class ApiVersion:
    scope = "base"  # any authenticated identity (see auth/middleware.py)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/json"
        resp.data = b"{}"

    on_head = on_get


class UnknownRoute:
    """Every path no route matches: 404 with an OCI body, after authentication like any other
    request (so a registry with no credentials configured refuses even these)."""

    scope = "base"

    def _not_found(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise falcon.HTTPNotFound()

    on_get = on_head = on_post = on_put = on_patch = on_delete = on_options = _not_found
