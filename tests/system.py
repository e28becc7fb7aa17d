"""The whole system in one test: the four services built from their own composition roots
(``services.<name>.app.build_service``) in one namespace of the real broker and store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from bzpeer_cli.demo import Story
from bzpeer_cli.services import SERVICE_NAMES, build, settings_class
from service_runtime.auth import mint_token
from service_runtime.publishing import EventPublisher
from tests.conftest import Namespace


class System:
    def __init__(self, ns: Namespace, **overrides: dict[str, Any]) -> None:
        self.ns = ns
        self.settings = {n: ns.settings(n, cls=settings_class(n), **overrides.get(n, {})) for n in SERVICE_NAMES}
        self.services = {n: build(n, s) for n, s in self.settings.items()}

    def http(self, name: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(self.services[name].http), base_url=f"http://{name}")

    def token(self, user_id: str, *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.settings['claims'], user_id, list(roles))}"}

    @contextlib.asynccontextmanager
    async def story(
        self, webapp: EventPublisher, out: Callable[[str], None] = lambda line: None
    ) -> AsyncIterator[Story]:
        """The seed story (``bzpeer_cli.demo``) played against this system's HTTP apps."""
        clients = {name: self.http(name) for name in SERVICE_NAMES}
        try:
            yield Story(
                webapp, clients, token=lambda user, roles: mint_token(self.settings["claims"], user, roles), out=out
            )
        finally:
            for client in clients.values():
                await client.aclose()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[System]:
        async with contextlib.AsyncExitStack() as stack:
            for service in self.services.values():
                await stack.enter_async_context(service.running())
            yield self
