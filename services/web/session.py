"""Who is signed in: the identity provider's token, kept in an HttpOnly cookie.

The cookie holds the very token the services accept (verified here with the services'
own ``JwtVerifier``), and the web app sends it with the user's commands. Nothing is kept
on the server, so any web process can serve any request.

The development identity provider (``/sign-in``) mints such tokens with the configured
key for whoever asks: for local runs and tests only. It is not mounted when
``WebSettings.dev_sign_in_enabled`` is false, and turning it on with
``ENVIRONMENT=production`` stops the app at start (``WebSettings``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jwt
from fastapi import Request

from service_runtime.auth import JwtVerifier

COOKIE = "bzpeer_session"


@dataclass(frozen=True, slots=True)
class SignedIn:
    user_id: str
    orcid: str | None
    token: str


def signed_in(request: Request) -> SignedIn | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    verifier: JwtVerifier = request.app.state.jwt_verifier
    try:
        principal = verifier.verify(token)
    except jwt.InvalidTokenError:
        return None  # expired or not ours: signed out
    return SignedIn(principal.user_id, principal.orcid, token)


async def current_user(request: Request) -> SignedIn | None:
    """FastAPI dependency (async: see the profile service's routes)."""
    return signed_in(request)


_LOCAL_PATH = re.compile(r"^/(?![/\\])[^\s]*$")


def local_next(target: str | None, default: str = "/") -> str:
    """Where to go after signing in: only a path of this site (never another host)."""
    return target if target and _LOCAL_PATH.match(target) else default
