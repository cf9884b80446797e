"""The web pages under /ui/: one small resource per page. They authenticate like the API (the
`browser` scope in auth/middleware.py: Basic, a JWT as the password, anonymous pull), check the
caller's rights on each repository with the same Identity.may the API uses, read through the
registry's services (ui/browse.py), and render Jinja2 templates with autoescaping on."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode

import falcon
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from auth.client_address import TrustedProxies
from auth.identity import PULL, PUSH, Identity
from errors import Denied, ManifestUnknown, Unauthorized, Unsupported
from resources.http import read_small_body
from storage.digests import Digest, is_valid_tag, validate_name
from storage.registry import Registry
from storage.usage import human_size
from ui import browse
from ui.assets import Assets
from ui.present import safe_link, short_digest
from ui.security import check_same_origin, request_host

TEMPLATES = Path(__file__).parent / "templates"
MAX_FORM_BYTES = 256 * 1024  # a delete form names at most a page of tags
MAX_TAGS_PER_DELETE = browse.TAGS_PER_PAGE
MAX_NAMED_IN_NOTICE = 20  # tags named in "deleted ..." after a delete; the rest are counted
MAX_SHOWN_TEXT = 4096  # longer values (labels, annotations, env) are cut on the page


def redirect(resp: falcon.Response, status: str, location: str) -> None:
    resp.status = status
    resp.location = location
    resp.content_length = 0


def repo_url(name: str) -> str:
    return "/ui/r/" + quote(name, safe="/")


def image_url(name: str, reference: str, **params: str) -> str:
    url = f"{repo_url(name)}/-/image/{quote(reference, safe=':')}"
    return url + ("?" + urlencode(params) if params else "")


def raw_url(name: str, digest: object) -> str:
    return f"{repo_url(name)}/-/raw/{quote(str(digest), safe=':')}"


def _cut(value: object, limit: int = MAX_SHOWN_TEXT) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def _json_text(value: object) -> str:
    # Readable JSON (Jinja's tojson writes \u003c for "<"); autoescaping makes it safe.
    return json.dumps(value, ensure_ascii=False)


def make_templates(assets: Assets) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is escaped, whatever the template's name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(size=human_size, short=short_digest, cut=_cut, link=safe_link, json_text=_json_text)
    env.globals.update(static=assets.url, repo_url=repo_url, image_url=image_url, raw_url=raw_url)
    return env


class Pages:
    """What every page needs: the registry, settings that shape the pages, the templates."""

    def __init__(
        self, registry: Registry, delete_enabled: bool, realm: str, proxies: TrustedProxies, assets: Assets
    ) -> None:
        self.registry = registry
        self.delete_enabled = delete_enabled
        self.proxies = proxies
        self.templates = make_templates(assets)
        self._challenge = f'Basic realm="{realm}", charset="UTF-8"'

    def render(self, req: falcon.Request, resp: falcon.Response, template: str, **context: object) -> None:
        resp.content_type = "text/html; charset=utf-8"
        # Pages depend on who asks: never stored by a browser or a shared cache.
        resp.set_header("Cache-Control", "no-store")
        identity = getattr(req.context, "identity", None)
        resp.text = self.templates.get_template(template).render(identity=identity, **context)

    def render_error(self, status: int, code: str, message: str) -> str:
        return self.templates.get_template("error.html").render(
            identity=None, status=status, code=code, message=message
        )

    def require(self, req: falcon.Request, name: str, action: str) -> Identity:
        """The caller, if they may do `action` on `name`. Without credentials the browser is
        asked for them (401 with a Basic challenge); with, a missing right is 403."""
        identity: Identity = req.context.identity
        if not identity.may(name, action):
            if identity.anonymous:
                raise Unauthorized(headers={"WWW-Authenticate": self._challenge})
            raise Denied(detail={"repository": name, "action": action})
        return identity

    def challenge(self) -> Unauthorized:
        return Unauthorized("sign in to continue", headers={"WWW-Authenticate": self._challenge})

    def may_delete(self, identity: Identity, name: str) -> bool:
        # DELETE needs push in the API too (auth/middleware.py); and deletes must be enabled.
        return self.delete_enabled and identity.may(name, PUSH)


class _Page:
    scope = "browser"

    def __init__(self, pages: Pages) -> None:
        self.pages = pages


class Home:
    """`/` and `/ui`: to the repository list. Behind credentials like every other route (an
    unknown route included), so a browser opening `/` is asked once for the whole site."""

    scope = "browser"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        redirect(resp, falcon.HTTP_302, "/ui/")

    on_head = on_get


class Login(_Page):
    """`/ui/login`: makes the browser ask for a username and password (a registry with anonymous
    pull never asks by itself), then goes back to the list."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.context.identity.anonymous:
            raise self.pages.challenge()
        redirect(resp, falcon.HTTP_303, "/ui/")


class RepositoryList(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = (req.get_param("q") or "").strip()[: browse.MAX_FILTER]
        after = (req.get_param("after") or "")[:256] or None
        listing = browse.repository_listing(self.pages.registry, req.context.identity, query, after)
        next_url = None
        if listing.next_after:
            next_url = "/ui/?" + urlencode(
                {k: v for k, v in (("q", query), ("after", listing.next_after)) if v}
            )
        self.pages.render(
            req, resp, "repositories.html", listing=listing, query=query, after=after, next_url=next_url
        )


class RepositoryPage(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        name = validate_name(name)
        identity = self.pages.require(req, name, PULL)
        query = (req.get_param("q") or "").strip()[: browse.MAX_FILTER]
        newest = req.get_param("sort") == "newest"
        page = req.get_param_as_int("page", min_value=1, max_value=1_000_000) or 1
        view = browse.repository_view(self.pages.registry, name, query, newest, page)
        deleted = [t for t in req.get_param_as_list("deleted") or [] if is_valid_tag(t)][:MAX_NAMED_IN_NOTICE]
        deleted_more = req.get_param_as_int("more", min_value=0, max_value=MAX_TAGS_PER_DELETE) or 0

        def page_url(number: int) -> str:
            params = {"q": query, "sort": "newest" if newest else "", "page": str(number)}
            return repo_url(name) + "?" + urlencode({k: v for k, v in params.items() if v})

        self.pages.render(
            req,
            resp,
            "repository.html",
            view=view,
            query=query,
            newest=newest,
            host=request_host(req, self.pages.proxies),
            can_delete=self.pages.may_delete(identity, name),
            deleted=deleted,
            deleted_more=deleted_more,
            page_url=page_url,
        )


class ImagePage(_Page):
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, reference: str) -> None:
        name = validate_name(name)
        self.pages.require(req, name, PULL)
        registry = self.pages.registry
        info = browse.resolve(registry, name, reference)
        view = browse.manifest_view(registry, name, info.digest, info.media_type)
        selected = None
        if view.children:
            wanted = req.get_param("platform")
            stored = [c for c in view.children if c.stored]
            choice = next((c for c in stored if c.digest == wanted), None) or next(
                (c for c in stored if not c.attestation), stored[0] if stored else None
            )
            if choice is not None:
                child = registry.manifests.resolve(name, choice.digest)
                selected = browse.manifest_view(registry, name, child.digest, child.media_type)
        by_tag = not reference.startswith(("sha256:", "sha512:")) and ":" not in reference
        self.pages.render(
            req,
            resp,
            "image.html",
            name=name,
            reference=reference,
            by_tag=by_tag,
            view=view,
            selected=selected,
            tags=browse.tags_pointing_at(registry, name, info.digest),
            host=request_host(req, self.pages.proxies),
        )


class RawDocument(_Page):
    """A manifest or config of the repository as pretty-printed JSON."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        name = validate_name(name)
        self.pages.require(req, name, PULL)
        parsed = Digest.parse(digest)
        inventory = self.pages.registry.inventory
        if not inventory.holds_blob(name, parsed):
            raise ManifestUnknown(detail={"digest": digest})
        document = inventory.json_document(parsed)
        text = json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False)
        self.pages.render(req, resp, "raw.html", name=name, digest=str(parsed), text=text)


class DeleteTags(_Page):
    """`POST /ui/r/<name>/-/delete`: the first POST shows what will go and asks to confirm; the
    second (`confirm=yes`) deletes through the manifest store, as `DELETE /v2/<name>/manifests/
    <tag>` does, and goes back to the repository."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        check_same_origin(req, self.pages.proxies)
        name = validate_name(name)
        self.pages.require(req, name, PUSH)
        if not self.pages.delete_enabled:
            raise Unsupported("deletes are disabled on this registry", status=405)
        form = parse_qs(read_small_body(req, MAX_FORM_BYTES).decode("utf-8", "replace"))
        only = form.get("only", [])
        tags = list(dict.fromkeys(only[:1] or form.get("tag", [])))
        tags = [t for t in tags if is_valid_tag(t)][:MAX_TAGS_PER_DELETE]
        if not tags:
            redirect(resp, falcon.HTTP_303, repo_url(name))
            return
        if form.get("confirm") != ["yes"]:
            entries = {e.tag: e for e in self.pages.registry.inventory.tags(name)}
            rows = [(t, entries[t].digest if t in entries else None) for t in tags]
            self.pages.render(req, resp, "confirm_delete.html", name=name, rows=rows)
            return
        deleted = []
        for tag in tags:
            try:
                self.pages.registry.manifests.delete(name, tag)
                deleted.append(tag)
            except ManifestUnknown:
                continue  # already gone
        # The next page names what went (a few; the count of the rest).
        shown = [("deleted", t) for t in deleted[:MAX_NAMED_IN_NOTICE]]
        if len(deleted) > MAX_NAMED_IN_NOTICE:
            shown.append(("more", str(len(deleted) - MAX_NAMED_IN_NOTICE)))
        redirect(resp, falcon.HTTP_303, repo_url(name) + "?" + urlencode(shown))
