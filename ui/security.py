"""What keeps the pages safe in a browser: the headers every page carries (a Content-Security-
Policy without inline scripts, no framing, no sniffing), the origin the browser came through,
and the same-origin check that every form POST must pass (CSRF).

Why a same-origin check rather than a token: browsers attach Basic credentials to any request
to this origin, whoever's page sends it, so a forged form POST from another site would carry
them. Every browser sends `Origin` with a POST (and `Sec-Fetch-Site` in the current ones), so
requiring it to be this very origin refuses those, and needs no secret shared between the
workers and instances. A POST with neither `Origin` nor `Referer` is refused too (strict)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import falcon

from auth.client_address import TrustedProxies
from errors import Denied

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Same-origin requests keep their Referer (the fallback of the origin check); others get none.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def request_host(req: falcon.Request, proxies: TrustedProxies) -> str:
    """The host (and port) the browser came through: the Host header, which the shipped nginx
    passes on as the client sent it, or X-Forwarded-Host from a trusted proxy (the last value:
    the one the nearest proxy wrote). Anything that is not a plain host falls back to the
    server's own address."""
    host = ""
    if proxies.trusts_peer(str(req.env.get("REMOTE_ADDR") or "")):
        forwarded = req.get_header("X-Forwarded-Host") or ""
        host = forwarded.split(",")[-1].strip()
    host = host or req.get_header("Host") or ""
    if not _HOST.fullmatch(host):
        host = f"{req.env.get('SERVER_NAME', 'localhost')}:{req.env.get('SERVER_PORT', '80')}"
    return _without_default_port(req.scheme, host.lower())


def _without_default_port(scheme: str, host: str) -> str:
    suffix = _DEFAULT_PORTS.get(scheme)
    return host[: -len(suffix)] if suffix and host.endswith(suffix) else host


def own_origin(req: falcon.Request, proxies: TrustedProxies) -> str:
    """This page's origin. The scheme is the WSGI one: gunicorn takes X-Forwarded-Proto only
    from FORWARDED_ALLOW_IPS."""
    return f"{req.scheme}://{request_host(req, proxies)}"


def _origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return None
    return f"{parts.scheme}://{_without_default_port(parts.scheme, parts.netloc.lower())}"


def check_same_origin(req: falcon.Request, proxies: TrustedProxies) -> None:
    """Refuse (403) a state-changing request that does not come from a page of this origin."""
    site = req.get_header("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        raise Denied("cross-site request refused", detail={"Sec-Fetch-Site": site[:64]})
    origin = req.get_header("Origin")
    if origin is None or origin == "null":
        referer = req.get_header("Referer")
        if not referer:
            raise Denied("request refused: it carries neither Origin nor Referer")
        origin = _origin_of(referer)
    else:
        origin = _origin_of(origin)
    if origin is None or origin != own_origin(req, proxies):
        raise Denied("cross-origin request refused")
