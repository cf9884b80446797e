"""`GET /v2/token`: the token endpoint of Docker's token flow (on when REGISTRY_TOKEN_PRIVATE_KEY
is set). The auth middleware has already authenticated the caller (scope "token")."""

from __future__ import annotations

import json

import falcon

from auth.token_server import TokenServer


class Token:
    scope = "token"

    def __init__(self, server: TokenServer) -> None:
        self._server = server

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        scopes = req.get_param_as_list("scope") or []
        doc = self._server.issue(req.context.identity, req.get_param("service"), scopes)
        resp.content_type = "application/json"
        resp.set_header("Cache-Control", "no-store")  # a token is a credential (RFC 6749 5.1)
        resp.data = json.dumps(doc).encode()
