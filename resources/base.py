"""`GET /v2/`: the API version check clients ping first (and `docker login` relies on)."""

from __future__ import annotations

import falcon


class ApiVersion:
    scope = "base"  # any authenticated identity (see auth/middleware.py)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/json"
        resp.data = b"{}"

    on_head = on_get
