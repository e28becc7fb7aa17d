"""JWT verification as every service's HTTP writes use it."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from pydantic import ValidationError

from service_runtime.auth import JwtVerifier, mint_token
from service_runtime.settings import DEV_JWT_SECRET, RuntimeSettings

SETTINGS = RuntimeSettings(environment="test")
VERIFIER = JwtVerifier(SETTINGS)


def _claims(**overrides) -> dict:
    now = int(time.time())
    base = {
        "sub": "u1",
        "roles": ["reviewer"],
        "iss": SETTINGS.jwt_issuer,
        "aud": SETTINGS.jwt_audience,
        "iat": now,
        "exp": now + 60,
    }
    base.update(overrides)
    return base


def test_valid_token_gives_user_and_roles() -> None:
    principal = VERIFIER.verify(mint_token(SETTINGS, "user-7", ["reviewer"]))
    assert principal.user_id == "user-7" and principal.has("reviewer") and principal.orcid is None


def test_token_carries_the_authenticated_orcid() -> None:
    principal = VERIFIER.verify(mint_token(SETTINGS, "user-7", orcid="0000-0002-1825-0097"))
    assert principal.orcid == "0000-0002-1825-0097" and not principal.roles
    with pytest.raises(jwt.InvalidTokenError):
        VERIFIER.verify(jwt.encode(_claims(orcid=42), SETTINGS.jwt_key, algorithm="HS256"))


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(_claims(), "another-key-entirely-another-key!", algorithm="HS256"),
        jwt.encode(_claims(exp=int(time.time()) - 60), SETTINGS.jwt_key, algorithm="HS256"),
        jwt.encode(_claims(iss="someone-else"), SETTINGS.jwt_key, algorithm="HS256"),
        jwt.encode(_claims(aud="other-audience"), SETTINGS.jwt_key, algorithm="HS256"),
        jwt.encode({k: v for k, v in _claims().items() if k != "exp"}, SETTINGS.jwt_key, algorithm="HS256"),
        jwt.encode(_claims(roles="reviewer"), SETTINGS.jwt_key, algorithm="HS256"),
    ],
    ids=["other-key", "expired", "wrong-issuer", "wrong-audience", "no-expiry", "roles-not-a-list"],
)
def test_invalid_tokens_are_refused(token: str) -> None:
    with pytest.raises(jwt.InvalidTokenError):
        VERIFIER.verify(token)


def test_alg_none_is_refused() -> None:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(_claims())}."
    with pytest.raises(jwt.InvalidTokenError):
        VERIFIER.verify(unsigned)


def test_production_refuses_the_development_key() -> None:
    with pytest.raises(ValidationError, match="development JWT key"):
        RuntimeSettings(environment="production", jwt_key=DEV_JWT_SECRET)
    assert RuntimeSettings(environment="production", jwt_key="a-real-secret-from-the-environment").jwt_key
