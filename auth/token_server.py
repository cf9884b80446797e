"""Docker's token flow, the issuing side: `GET /v2/token?service=&scope=` answers a client that
authenticated with Basic credentials (or none, with anonymous pull) with a short-lived JWT
holding the requested scopes it may have, and only those. Framework-free."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from auth.claims import PRINCIPAL_CLAIM, granted_access, parse_scopes
from auth.identity import Identity
from errors import Unsupported
from settings import TokenSettings

if TYPE_CHECKING:  # auth.tokens loads the JOSE library: only when the token flow is on
    from auth.tokens import TokenSigner


class TokenServer:
    def __init__(
        self, signer: TokenSigner, settings: TokenSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self._signer = signer
        self._service = settings.service
        self._issuer = settings.own_issuer
        self._audience = settings.own_audience
        self._lifetime = settings.lifetime
        self._clock = clock

    def issue(self, identity: Identity, service: str | None, scope_values: Iterable[str]) -> dict[str, Any]:
        if service is not None and service != self._service:
            raise Unsupported("unknown service", status=400, detail={"service": service})
        try:
            scopes = parse_scopes(scope_values)
        except ValueError:
            raise Unsupported("malformed scope: expected type:name:actions", status=400) from None
        now = int(self._clock())
        # Never outlive the credential presented: a token exchanged for a token (renewal)
        # keeps the first one's end, however often it is exchanged.
        exp = now + self._lifetime
        if identity.expires_at is not None:
            exp = min(exp, identity.expires_at)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": uuid.uuid4().hex,
            "access": granted_access(identity, scopes),
            # Whom it is for: uploads it opens belong to the holder, whatever token renews it.
            PRINCIPAL_CLAIM: identity.principal,
        }
        if identity.name:
            claims["sub"] = identity.name
        token = self._signer.sign(claims)
        issued_at = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Both names: docker reads `token`, OAuth2 clients (podman, skopeo) `access_token`.
        expires_in = max(exp - now, 0)
        return {"token": token, "access_token": token, "expires_in": expires_in, "issued_at": issued_at}
