"""Which upstreams a repository name goes to.

- An entry with a `prefix` owns that namespace: Berth's `dockerhub/library/alpine` goes to the
  entry with `"prefix": "dockerhub"` as `library/alpine`, and to no other entry. When prefixes
  nest (`mirror` and `mirror/ghcr`), the longest one that matches wins. Several entries may share
  a prefix (mirrors of one registry): they are tried in order.
- A name under no prefix goes to the entries without one, in order (serverless-registry's
  behaviour, so its configurations work unchanged). With only prefixed entries, such names are
  never looked up upstream.

Which repositories may be filled is decided by the caller (pullthrough.py): a prefixed
namespace always (it is the upstream's), a name under no prefix only while no client has pushed
a manifest to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from upstream.client import UpstreamClient


@dataclass(frozen=True)
class Route:
    client: UpstreamClient
    name: str  # the name the upstream entry sees: the local name without the entry's prefix

    @property
    def prefixed(self) -> bool:
        """Whether the name is in a namespace that belongs to upstreams (an entry's `prefix`)."""
        return bool(self.client.registry.namespace)

    @property
    def source(self) -> str:
        """For logs: the upstream and the name asked there."""
        return f"{self.client.registry.url} ({self.client.registry.remote_name(self.name)})"


class Routes:
    def __init__(self, clients: list[UpstreamClient]) -> None:
        self._clients = clients
        # Longest first, so `mirror/ghcr/x` is matched by `mirror/ghcr` before `mirror`.
        self._namespaces = sorted(
            {c.registry.namespace for c in clients if c.registry.namespace}, key=len, reverse=True
        )

    def for_name(self, name: str) -> list[Route]:
        """The upstreams to ask for local repository `name`, in order ([] for none)."""
        for namespace in self._namespaces:
            if name.startswith(namespace + "/"):
                rest = name[len(namespace) + 1 :]
                return [Route(c, rest) for c in self._clients if c.registry.namespace == namespace]
        return [Route(c, name) for c in self._clients if not c.registry.namespace]
