"""The whole system as a person meets it: the four services as OS processes in one
namespace of the real broker and store (``Pipeline``), and the web app as a fifth process
(``bzpeer run web``) pointed at them.

    system = WebSystem(ns)
    await system.start()          # four services /ready, then the web app /ready
    await system.load_seed()      # the seed record, scored 21 on the profile page
    system.web_url                # http://127.0.0.1:<port>
    await system.stop()
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from service_runtime.kafka import make_broker
from service_runtime.publishing import EventPublisher
from services.profile.seed import SEED_AUTHOR_ID, load_seed
from services.web.settings import WebSettings
from tests.pipeline import Pipeline
from tests.service_process import ServiceProcess


class WebSystem:
    def __init__(self, ns: Any, **web_overrides: Any) -> None:
        self.ns = ns
        self.pipe = Pipeline(ns)
        urls = {f"{name}_url": proc.url for name, proc in self.pipe.procs.items()}
        # No collaboration service yet: its address answers nothing.
        urls["collab_url"] = "http://127.0.0.1:9"
        self.web_settings = ns.settings("web", cls=WebSettings, **{**urls, **web_overrides})
        self.web = ServiceProcess("web", self.web_settings)

    @property
    def web_url(self) -> str:
        return self.web.url

    def url(self, name: str) -> str:
        return self.pipe.procs[name].url

    async def start(self) -> WebSystem:
        await self.pipe.start()
        await self.web.start()
        return self

    async def stop(self) -> None:
        await self.web.stop()
        await self.pipe.stop()

    async def publish_seed(self, author_id: str = SEED_AUTHOR_ID, *, demo_copy: bool = False) -> None:
        broker = make_broker(self.ns.infra["kafka"], client_id="webapp")
        await broker.connect()
        try:
            await load_seed(
                EventPublisher(broker, "webapp", self.ns.topic_prefix), author_id=author_id, demo_copy=demo_copy
            )
        finally:
            await broker.stop()

    async def page_json(self, author_id: str) -> dict[str, Any] | None:
        async with httpx.AsyncClient(base_url=self.url("profile"), timeout=5) as http:
            r = await http.get(f"/authors/{author_id}")
        return r.json() if r.status_code == 200 else None

    async def wait_page(self, author_id: str, *, score: int | None = None, timeout: float = 120.0) -> dict[str, Any]:
        """Until the profile page has all 28 works and a trust score (``score``, if given)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        page = None
        while loop.time() < deadline:
            page = await self.page_json(author_id)
            scored = page and page["counts"]["works"] == 28 and page["trust_snapshot"]["score"] is not None
            if page and scored and (score is None or page["trust_snapshot"]["score"] == score):
                return page
            await asyncio.sleep(0.2)
        raise AssertionError(f"{author_id}: page not ready within {timeout}s; last: {page!r}"[:1500])
