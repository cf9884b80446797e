"""Who is asking and what they may do. Framework-free.

An identity holds `actions` it may do at all (a Basic user's rights, a JWT's `capabilities`) and,
for a JWT with an `access` list, `grants` that narrow those actions to some repositories. A
request's action must pass both."""

from __future__ import annotations

from dataclasses import dataclass

PULL, PUSH = "pull", "push"
# Listing every repository name (`GET /v2/_catalog`): held by whoever may pull every repository,
# or by a token granted distribution's `registry:catalog:*` scope.
CATALOG = "catalog"
ALL_ACTIONS = frozenset({PULL, PUSH})


@dataclass(frozen=True)
class Grant:
    """Actions on the repositories `pattern` names: an exact name, or a prefix ending in `*`
    (`team/*` covers `team/app` and `team/x/y`, `*` covers every repository)."""

    pattern: str
    actions: frozenset[str]

    def covers(self, repository: str | None) -> bool:
        if self.pattern.endswith("*"):
            prefix = self.pattern[:-1]
            # None is "every repository": only a bare `*` covers that.
            return repository.startswith(prefix) if repository is not None else prefix == ""
        return repository == self.pattern


@dataclass(frozen=True)
class Identity:
    name: str  # "" for an anonymous client; uploads belong to this name
    actions: frozenset[str]  # the most this identity may do, on any repository
    grants: tuple[Grant, ...] | None = None  # None: `actions` on every repository
    catalog: bool = False  # an explicit catalog grant (a scoped token's `registry:catalog:*`)

    @property
    def anonymous(self) -> bool:
        return not self.name

    def may(self, repository: str | None, action: str) -> bool:
        """Whether this identity may do `action` on `repository` (None: on every repository,
        e.g. a mount without `from`, which may take a blob from anywhere)."""
        if action == CATALOG:
            return self.catalog or self.may(None, PULL)
        if action not in self.actions:
            return False
        if self.grants is None:
            return True
        return any(action in g.actions and g.covers(repository) for g in self.grants)


ANONYMOUS_READER = Identity("", frozenset({PULL}))
