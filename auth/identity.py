"""Who is asking and what they may do. Framework-free.

An identity holds `actions` it may do at all (a Basic user's rights, a JWT's `capabilities`) and,
for a JWT with an `access` list, `grants` that narrow those actions to some repositories. A
request's action must pass both.

Its `principal` says who it is, uniquely across kinds of credentials: upload sessions belong to
it. A name alone would let one kind of credential pass for another (a token without `sub` sent
with the Basic username "admin" would continue admin's upload), so each kind has its namespace:

    user:<name>                      a configured user (USERNAME, READONLY_USERNAME)
    jwt:<iss>:<sub>                  a token's subject, per issuer (`iss` "" when absent)
    jwt-account:<iss>:<account_id>   serverless-registry's `account_id` when there is no `sub`
    jwt-token:<sha256 of the token>  a token with neither: that token only
    anonymous                        clients without credentials (anonymous pull)

Tokens the token endpoint issues carry their holder's principal, so a renewed token continues
the uploads the earlier one started. ':' and '%' in the parts are escaped, so no two principals
collide; a principal longer than MAX_PRINCIPAL becomes `digest:<sha256 of it>`."""

from __future__ import annotations

import hashlib
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


ANONYMOUS = "anonymous"
MAX_PRINCIPAL = 256  # upload state stores it; a token's claims can be kilobytes


def _part(value: str) -> str:
    return value.replace("%", "%25").replace(":", "%3A")


def _bounded(principal: str) -> str:
    if len(principal) <= MAX_PRINCIPAL:
        return principal
    return "digest:" + hashlib.sha256(principal.encode()).hexdigest()


def user_principal(name: str) -> str:
    return _bounded(f"user:{_part(name)}")


def subject_principal(issuer: str, subject: str) -> str:
    return _bounded(f"jwt:{_part(issuer)}:{_part(subject)}")


def account_principal(issuer: str, account_id: str) -> str:
    return _bounded(f"jwt-account:{_part(issuer)}:{_part(account_id)}")


def token_principal(token_digest: str) -> str:
    return f"jwt-token:{token_digest}"


@dataclass(frozen=True)
class Identity:
    principal: str  # who this is (see above); upload sessions belong to it
    name: str  # a label (a user's name, a token's `sub`); "" only for a client without credentials
    actions: frozenset[str]  # the most this identity may do, on any repository
    grants: tuple[Grant, ...] | None = None  # None: `actions` on every repository
    catalog: bool = False  # an explicit catalog grant (a scoped token's `registry:catalog:*`)
    # When the credential stops being valid (a JWT's `exp`, Unix seconds); None for passwords.
    # A token issued for this identity never outlives it.
    expires_at: int | None = None

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


ANONYMOUS_READER = Identity(ANONYMOUS, "", frozenset({PULL}))
