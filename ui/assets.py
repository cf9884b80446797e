"""The pages' CSS and JavaScript, served by Berth itself (no CDN, no build step) under names that
carry a hash of their content (`ui.3f2a9c1b04.css`): a browser may keep them for a year, and a
new version is a new name. Loaded once at start; a few KiB."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

import falcon

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/ui/static/"
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    data: bytes
    content_type: str
    etag: str


class Assets:
    def __init__(self, directory: Path = STATIC_DIR) -> None:
        self._by_served_name: dict[str, Asset] = {}
        self._served_name: dict[str, str] = {}
        for path in sorted(directory.iterdir()):
            if not path.is_file():
                continue
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()[:10]
            served = f"{path.stem}.{digest}{path.suffix}"
            content_type = (
                _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            )
            self._by_served_name[served] = Asset(data, content_type, f'"{digest}"')
            self._served_name[path.name] = served

    def url(self, name: str) -> str:
        """The URL of the static file `name` (e.g. `ui.css`) as pages link it."""
        return PREFIX + self._served_name[name]

    def get(self, served_name: str) -> Asset | None:
        return self._by_served_name.get(served_name)


class StaticFile:
    """`/ui/static/<name>.<hash>.<ext>`. Public: it holds nothing secret, and the pages that
    load it are what require credentials."""

    scope = "public"

    def __init__(self, assets: Assets) -> None:
        self._assets = assets

    def on_get(self, req: falcon.Request, resp: falcon.Response, filename: str) -> None:
        asset = self._assets.get(filename)
        if asset is None:
            raise falcon.HTTPNotFound()
        resp.set_header("ETag", asset.etag)
        resp.set_header("Cache-Control", "public, max-age=31536000, immutable")
        if asset.etag in (req.get_header("If-None-Match") or ""):
            resp.status = falcon.HTTP_304
            resp.content_type = None  # a 304 has no body, so no type either
            return
        resp.content_type = asset.content_type
        resp.data = asset.data

    on_head = on_get
