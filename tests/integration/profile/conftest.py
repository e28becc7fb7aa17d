"""The profile service running for real on the test's namespace, and an HTTP client of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from service_runtime.service import Service
from services.profile.app import build_service
from services.profile.settings import ProfileSettings
from tests.conftest import Namespace


@pytest.fixture
async def profile(ns: Namespace) -> AsyncIterator[Service]:
    service = build_service(ns.settings("profile", cls=ProfileSettings))
    async with service.running():
        yield service


@pytest.fixture
async def http(profile: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=profile.http), base_url="http://profile") as client:
        yield client
