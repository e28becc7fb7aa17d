"""Building the claims service: production refuses the development signing key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.claims.app import build_service
from services.claims.settings import ClaimsSettings


def test_production_with_the_development_key_does_not_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.delenv("JWT_KEY", raising=False)
    with pytest.raises(ValidationError, match="development JWT key"):
        build_service()


def test_production_with_a_key_from_the_environment_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_KEY", "a-real-secret-from-the-identity-provider")
    service = build_service()
    assert service.settings.environment == "production" and service.settings.http_port == 8002


def test_limits_and_waiting_time_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_OPEN_CLAIMS_PER_USER", "5")
    monkeypatch.setenv("PENDING_AUTHOR_TIMEOUT_S", "2")
    settings = ClaimsSettings()
    assert settings.max_open_claims_per_user == 5 and settings.pending_author_timeout_s == 2
    assert settings.max_approved_claims_per_user == 1
