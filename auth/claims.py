"""What a verified JWT's claims grant, and the scopes of Docker's token flow. Framework-free and
crypto-free: auth/tokens.py verifies, this module interprets.

Claims understood:
- `capabilities`: ["pull"], ["push"], ["pull", "push"], as serverless-registry mints them: the
  actions the token allows on every repository.
- `access`: distribution's list, `[{"type": "repository", "name": "team/*", "actions": ["pull"]}]`;
  names may end in `*`; `{"type": "registry", "name": "catalog", "actions": ["*"]}` allows the
  catalog. With `access`, the token reaches only the repositories it names.
With both, an action must be in `capabilities` and granted by `access`; with neither, the token
authenticates but allows nothing.
- Who the token is (its principal, which owns its uploads; see auth/identity.py): its `sub`
  under its `iss`, else serverless-registry's `account_id` under its `iss`, else the token
  itself. A token our token endpoint issued (`issued_here`) carries its holder's principal in
  `principal`. The Basic username a token comes with is only a label."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from auth.identity import (
    ALL_ACTIONS,
    CATALOG,
    MAX_PRINCIPAL,
    PULL,
    PUSH,
    Grant,
    Identity,
    account_principal,
    subject_principal,
    token_principal,
)
from auth.token_shape import InvalidToken, VerifiedToken

KNOWN_ACTIONS = frozenset({PULL, PUSH})
_SAFE_NAME = re.compile(r"[a-z0-9._/-]{1,255}")


def _actions(raw: Any, where: str) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise InvalidToken(f"token claim {where!r} must be a list of strings")
    if "*" in raw:
        return ALL_ACTIONS
    return frozenset(raw) & KNOWN_ACTIONS  # unknown actions (e.g. "delete") grant nothing


# The claim in which the token endpoint records whom it issued a token to.
PRINCIPAL_CLAIM = "principal"


def _text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    return value if isinstance(value, str) else ""


def principal_of(token: VerifiedToken) -> str:
    claims = token.claims
    if token.issued_here and PRINCIPAL_CLAIM in claims:
        principal = claims[PRINCIPAL_CLAIM]
        if not isinstance(principal, str) or not 0 < len(principal) <= MAX_PRINCIPAL:
            raise InvalidToken(f"token claim {PRINCIPAL_CLAIM!r} is not acceptable")
        return principal
    issuer = claims.get("iss", "")
    if not isinstance(issuer, str):
        raise InvalidToken("token claim 'iss' must be a string")
    if _text(claims, "sub"):
        return subject_principal(issuer, claims["sub"])
    if _text(claims, "account_id"):
        return account_principal(issuer, claims["account_id"])
    return token_principal(token.digest)


def identity_from_claims(token: VerifiedToken) -> Identity:
    claims = token.claims
    name = _text(claims, "sub") or _text(claims, "account_id") or "jwt"
    has_caps, has_access = "capabilities" in claims, "access" in claims
    capabilities = _actions(claims["capabilities"], "capabilities") if has_caps else None
    grants: tuple[Grant, ...] | None = None
    catalog = False
    if has_access:
        entries = claims["access"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidToken("token claim 'access' must be a list of objects")
        found = []
        for entry in entries:
            kind, resource = entry.get("type"), entry.get("name")
            if not isinstance(resource, str) or not resource:
                raise InvalidToken("every 'access' entry needs a name")
            actions = _actions(entry.get("actions", []), "access.actions")
            if kind == "repository":
                found.append(Grant(resource, actions))
            elif kind == "registry" and resource == "catalog" and "*" in entry.get("actions", []):
                catalog = True
            # Other types (distribution's plugins) grant nothing here.
        grants = tuple(found)
    if capabilities is None:
        capabilities = ALL_ACTIONS if has_access else frozenset()
    if catalog and PULL not in capabilities:
        catalog = False
    expires_at = int(claims["exp"]) if isinstance(claims.get("exp"), (int, float)) else None
    return Identity(principal_of(token), name, capabilities, grants, catalog, expires_at)


# ------------------------------------------------------------------------------------- scopes


@dataclass(frozen=True)
class Scope:
    """One `type:name:actions` of the token flow (`repository:team/app:pull,push`)."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Scopes from `scope` query parameters (each may hold several, space-separated). The
    name may itself contain ':' (`repository:host:5000/app:pull`): type is before the first
    colon, actions after the last. Malformed ones raise ValueError."""
    scopes = []
    for value in values:
        for item in value.split():
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            if not kind or not name or not actions:
                raise ValueError("scope must be type:name:actions")
            scopes.append(Scope(kind, name, tuple(a for a in actions.split(",") if a)))
    return scopes


def granted_access(identity: Identity, scopes: Iterable[Scope]) -> list[dict[str, Any]]:
    """The `access` claim of a token for `identity` asking for `scopes`: each requested action
    the identity may do, and nothing else. Wildcards cannot be requested (a token names exactly
    the repositories it was asked for)."""
    access: list[dict[str, Any]] = []
    for scope in scopes:
        if scope.type == "repository" and "*" not in scope.name:
            wanted = ALL_ACTIONS if "*" in scope.actions else set(scope.actions) & KNOWN_ACTIONS
            actions = sorted(a for a in wanted if identity.may(scope.name, a))
            access.append({"type": "repository", "name": scope.name, "actions": actions})
        elif scope.type == "registry" and scope.name == "catalog" and "*" in scope.actions:
            actions = ["*"] if identity.may(None, CATALOG) else []
            access.append({"type": "registry", "name": "catalog", "actions": actions})
    return access


def challenge_scopes(needs: Iterable[tuple[str | None, str]]) -> list[Scope]:
    """What a client must ask the token endpoint for to do `needs`: `repository:<name>:pull`, or
    `pull,push` for a write (clients read what they write, and ask so themselves)."""
    wanted: dict[str, set[str]] = {}
    for repository, action in needs:
        if repository is None:
            if action == CATALOG:
                wanted.setdefault("registry:catalog", {"*"})
            continue
        if not _SAFE_NAME.fullmatch(repository):
            continue  # refused later as NAME_INVALID; never copied into a header
        acts = wanted.setdefault(f"repository:{repository}", set())
        acts.update({PULL, PUSH} if action == PUSH else {action})
    scopes = []
    for key, acts in wanted.items():
        kind, _, name = key.partition(":")
        scopes.append(Scope(kind, name, tuple(sorted(acts))))
    return scopes
