"""Bearer-JWT authentication of the web app's users (claims, follow and import endpoints).

The token is verified with the configured key and algorithm only (``alg`` in the token's
header is never trusted, so ``alg=none`` and algorithm confusion fail), and its issuer,
audience and expiry are checked. The user id is the token's ``sub`` (an id, as every event's user id: a token whose
subject is none is invalid); roles are in ``roles``;
``orcid``, when present, is the ORCID iD the identity provider authenticated the user with
(the web app vouches for it as claim evidence: ``Evidence.orcid_authenticated``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from contracts.events.common import ID_PATTERN
from service_runtime.settings import RuntimeSettings

REVIEWER = "reviewer"
IMPORTER = "importer"


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    # The ORCID iD the user signed in with, when the identity provider authenticated one.
    orcid: str | None = None

    def has(self, role: str) -> bool:
        return role in self.roles


class JwtVerifier:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.key = settings.jwt_key
        self.algorithm = settings.jwt_algorithm
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience

    def verify(self, token: str) -> Principal:
        """Raise jwt.InvalidTokenError on anything short of a valid token."""
        claims = jwt.decode(
            token,
            self.key,
            algorithms=[self.algorithm],
            issuer=self.issuer,
            audience=self.audience,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            leeway=5,
        )
        if not re.fullmatch(ID_PATTERN, str(claims["sub"])):
            raise jwt.InvalidTokenError("sub must be an id")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise jwt.InvalidTokenError("roles must be a list of strings")
        orcid = claims.get("orcid")
        if orcid is not None and not isinstance(orcid, str):
            raise jwt.InvalidTokenError("orcid must be a string")
        return Principal(user_id=str(claims["sub"]), roles=frozenset(roles), orcid=orcid)


def mint_token(
    settings: RuntimeSettings,
    user_id: str,
    roles: list[str] | None = None,
    ttl_s: int = 3600,
    *,
    orcid: str | None = None,
) -> str:
    """A token as the web app's identity provider would issue it (HS256 keys only: for
    local runs and tests with the development key). ``orcid``: the ORCID iD the provider
    authenticated the user with, if any."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,
        "roles": roles or [],
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_s,
    }
    if orcid is not None:
        claims["orcid"] = orcid
    return jwt.encode(claims, settings.jwt_key, algorithm=settings.jwt_algorithm)


_bearer = HTTPBearer(auto_error=False)
_UNAUTHORIZED = HTTPException(
    status.HTTP_401_UNAUTHORIZED, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
)


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """FastAPI dependency; the app's state holds the verifier (``Service`` puts it there)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _UNAUTHORIZED
    verifier: JwtVerifier = request.app.state.jwt_verifier
    try:
        return verifier.verify(credentials.credentials)
    except jwt.InvalidTokenError:
        raise _UNAUTHORIZED from None


CurrentUser = Annotated[Principal, Depends(current_principal)]


def require_role(principal: Principal, role: str) -> None:
    if not principal.has(role):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"the {role} role is required")
