"""Routing for OCI paths. Repository names contain '/', which Falcon's default router cannot
match in the middle of a path, so templates compile to regular expressions: `{name}` takes one
or more segments, every other field exactly one."""

from __future__ import annotations

import re
from typing import Any

from falcon.routing import map_http_methods, set_default_responders

_FIELD = re.compile(r"{(\w+)}")


def _compile(template: str) -> re.Pattern[str]:
    pattern, pos = "", 0
    for match in _FIELD.finditer(template):
        pattern += re.escape(template[pos : match.start()])
        field = match.group(1)
        pattern += f"(?P<{field}>.+)" if field == "name" else f"(?P<{field}>[^/]+)"
        pos = match.end()
    # DOTALL: a field holding a newline reaches validation (NAME_INVALID...), not "no route".
    return re.compile(f"{pattern}{re.escape(template[pos:])}", re.DOTALL)


class RegexRouter:
    """Tries routes in the order they were added; the first match wins. Paths no route
    matches go to `fallback`, so they pass through the same middleware (auth included)."""

    def __init__(self, fallback: object) -> None:
        self._routes: list[tuple[re.Pattern[str], object, dict, str]] = []
        self._fallback = fallback
        self._fallback_map = map_http_methods(fallback)
        set_default_responders(self._fallback_map)

    def add_route(self, uri_template: str, resource: object, **kwargs: Any) -> None:
        method_map = map_http_methods(resource, suffix=kwargs.get("suffix"))
        set_default_responders(method_map)
        self._routes.append((_compile(uri_template), resource, method_map, uri_template))

    def find(self, uri: str, req: object = None) -> tuple[object, dict, dict[str, str], str]:
        for pattern, resource, method_map, template in self._routes:
            match = pattern.fullmatch(uri)
            if match:
                return resource, method_map, match.groupdict(), template
        return self._fallback, self._fallback_map, {}, "{unknown}"
