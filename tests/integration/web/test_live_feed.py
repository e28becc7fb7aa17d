"""The web app's live feed on the real broker: several web processes each see every change
(no consumer group splits the partitions between them), from the end of the topics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer

from contracts.topics import Topic
from service_runtime.kafka import ensure_topics
from services.web.live import ChangeFeed, Hub
from services.web.settings import WebSettings
from tests.conftest import Namespace, eventually


@contextlib.asynccontextmanager
async def tailing(ns: Namespace) -> AsyncIterator[tuple[ChangeFeed, Hub]]:
    hub = Hub()
    feed = ChangeFeed(ns.settings("web", cls=WebSettings), hub)
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.ready.wait(), 60)
        yield feed, hub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_every_web_process_sees_every_change_of_its_pages(ns: Namespace, producer: AIOKafkaProducer) -> None:
    await ensure_topics(ns.infra["kafka"], prefix=ns.topic_prefix)
    # Before any web process tails: not a change any open page needs.
    await producer.send_and_wait(ns.topic(Topic.TRUST_EVENTS), b"{}", key=b"author-1")
    async with tailing(ns) as (feed_a, hub_a), tailing(ns) as (feed_b, hub_b):
        page_a, page_b = hub_a.subscribe("author-1"), hub_b.subscribe("author-1")
        elsewhere = hub_a.subscribe("author-2")
        # Records of several partitions (keys spread over them), three topics.
        for n in range(12):
            await producer.send(ns.topic(Topic.PROFILE_EVENTS), b"{}", key=f"other-{n}".encode())
        await producer.send(ns.topic(Topic.FOLLOWS_EVENTS), b"{}", key=b"author-1")
        await producer.send_and_wait(ns.topic(Topic.CLAIMS_EVENTS), b"{}", key=b"author-1")

        async def told() -> tuple[set[str], set[str]]:
            return page_a.pending, page_b.pending

        everything = {"snapshot", "follow", "claim", "collab"}
        await eventually(told, until=lambda p: p == (everything, everything), what="both processes told the page")
        assert elsewhere.pending == set()

        async def read() -> tuple[int, int]:
            return feed_a.records, feed_b.records

        await eventually(
            read,
            until=lambda counts: counts == (14, 14),
            what="each process read every record from where it started, and none before",
        )
