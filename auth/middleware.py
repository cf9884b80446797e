"""Authorization on every route, in one place. Each resource declares a `scope`; a route
without one is refused (fail closed). The HTTP method decides the action."""

from __future__ import annotations

import re
from functools import partial

from auth.access import AccessController
from auth.client_address import DEFAULT_TRUSTED_PROXIES, TrustedProxies
from auth.identity import CATALOG, PULL, PUSH
from errors import Denied

# DELETE needs push: whoever may write a repository may also remove from it.
METHOD_ACTIONS = {"GET": PULL, "HEAD": PULL, "POST": PUSH, "PUT": PUSH, "PATCH": PUSH, "DELETE": PUSH}
_SAFE_PREFIX = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")


def token_realm(req, explicit: str | None) -> str:
    """The token endpoint's absolute URL as this client reached the registry. The scheme is the
    WSGI one, which gunicorn takes from X-Forwarded-Proto only when the peer is in
    forwarded_allow_ips; the host is the Host header (a proxy passes the client's on). A Host
    that could break the quoted challenge falls back to the server's own address."""
    if explicit:
        return explicit
    prefix = req.prefix
    if not _SAFE_PREFIX.fullmatch(prefix):
        env = req.env
        prefix = f"{req.scheme}://{env.get('SERVER_NAME', 'localhost')}:{env.get('SERVER_PORT', '80')}"
    return f"{prefix.rstrip('/')}/v2/token"


class AuthMiddleware:
    def __init__(
        self,
        access: AccessController,
        realm_url: str | None = None,
        proxies: TrustedProxies = DEFAULT_TRUSTED_PROXIES,
    ) -> None:
        self._access = access
        self._realm_url = realm_url
        self._proxies = proxies

    def process_resource(self, req, resp, resource, params) -> None:
        authorization = req.get_header("Authorization")
        # Failed logins are counted per client address, worked out only when needed.
        client = partial(self._proxies.client_address, req.env)
        scope = getattr(resource, "scope", None)
        action = METHOD_ACTIONS.get(req.method, PUSH)
        realm = token_realm(req, self._realm_url) if self._access.token_flow else ""
        if scope == "public":
            return  # health endpoints: nothing to protect, and probes carry no credentials
        if scope in ("token", "browser"):
            # The token endpoint authenticates its own way (Basic, or anonymous). So do the web
            # pages (ui/): browsers answer only Basic challenges, and each page checks the rights
            # it needs itself.
            req.context.identity = self._access.authenticate_for_token(authorization, client)
            return
        if resource is None or scope == "base":
            # Unknown routes and the version check only need a valid identity.
            req.context.identity = self._access.authenticate(authorization, realm, client=client)
            return
        if scope == "catalog":
            needs = [(None, CATALOG)]
        elif scope == "repository":
            needs = [(params["name"], action)]
            source = req.get_param("from") if req.method == "POST" else None
            if source:
                needs.append((source, PULL))  # a mount reads from another repository
        else:
            raise Denied("route has no access scope")
        req.context.identity = self._access.authorize(authorization, needs, realm, client)
