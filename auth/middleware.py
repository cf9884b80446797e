"""Authorization on every route, in one place. Each resource declares a `scope`; a route
without one is refused (fail closed). The HTTP method decides the action."""

from __future__ import annotations

from auth.access import AccessController
from auth.identity import PULL, PUSH
from errors import Denied

# DELETE needs push: whoever may write a repository may also remove from it.
METHOD_ACTIONS = {"GET": PULL, "HEAD": PULL, "POST": PUSH, "PUT": PUSH, "PATCH": PUSH, "DELETE": PUSH}


class AuthMiddleware:
    def __init__(self, access: AccessController) -> None:
        self._access = access

    def process_resource(self, req, resp, resource, params) -> None:
        authorization = req.get_header("Authorization")
        scope = getattr(resource, "scope", None)
        action = METHOD_ACTIONS.get(req.method, PUSH)
        if resource is None or scope == "base":
            # Unknown routes and the version check only need a valid identity.
            req.context.identity = self._access.authenticate(authorization)
            return
        if scope == "catalog":
            needs = [(None, PULL)]
        elif scope == "repository":
            needs = [(params["name"], action)]
            source = req.get_param("from") if req.method == "POST" else None
            if source:
                needs.append((source, PULL))  # a mount reads from another repository
        else:
            raise Denied("route has no access scope")
        req.context.identity = self._access.authorize(authorization, needs)
