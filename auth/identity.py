"""Who is asking and what they may do. Framework-free."""

from __future__ import annotations

from dataclasses import dataclass

PULL, PUSH = "pull", "push"


@dataclass(frozen=True)
class Identity:
    name: str  # "" for an anonymous client
    actions: frozenset[str]  # actions granted on every repository

    @property
    def anonymous(self) -> bool:
        return not self.name

    def may(self, repository: str | None, action: str) -> bool:
        """Whether this identity may do `action` on `repository` (None: registry-wide, e.g.
        the catalog, which needs pull on everything)."""
        return action in self.actions


ANONYMOUS_READER = Identity("", frozenset({PULL}))
