"""A score stored and its TrustScoreChanged not published (the process died in between):
the event stays in the author's outbox and is published later, under the same id, once
in effect: by the runtime's sweeper if nothing touches the author again, or by the next
pass over the author, before its own newer change. And signal writes racing from two
replicas keep the newest state of every source."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts.envelope import Envelope
from service_runtime.delivery import Incoming
from service_runtime.outbox import Outbox
from service_runtime.publishing import EventPublisher, Outgoing
from service_runtime.topic_reader import read_topic
from services.trust.app import TrustService, build_service
from services.trust.handlers import SignalHandler
from services.trust.recompute import Recomputer
from services.trust.settings import TrustSettings
from services.trust.store import Author, SignalWrite, TrustStore
from tests.conftest import Namespace, eventually, throughout
from tests.integration.trust.helpers import registered, send, work_added

QUIET: dict[str, Any] = {"recompute_window_ms": 600_000, "recompute_max_delay_ms": 600_000}


class CrashingPublisher(EventPublisher):
    """The process dies after the score was stored, before the broker acknowledged."""

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        raise SystemExit("process killed before publishing")


def trust(ns: Namespace, **overrides: Any) -> TrustService:
    return build_service(ns.settings("trust", cls=TrustSettings, **overrides))


async def published(ns: Namespace) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in await read_topic(ns.infra["kafka"], ns.topic("trust.events"))]


async def stored_not_published(ns: Namespace, producer: AIOKafkaProducer, author_id: str) -> Author:
    """Register the author and die between storing its first score and publishing it."""
    service = trust(ns, **QUIET)  # its own loop never gets to the author
    async with service.running():
        store = service.trust_store
        await send(producer, ns, registered(author_id))
        await eventually(lambda: store.author(author_id), until=lambda a: a is not None and a.dirty)
        publisher = service.publisher
        dying = Outbox(CrashingPublisher(service.broker, publisher.producer_name, publisher.topic_prefix))
        with pytest.raises(SystemExit):
            await Recomputer(store, dying).recompute([author_id], only_dirty=True)
        author = await store.author(author_id)
    assert author is not None and author.score is not None and not author.dirty
    assert [o.envelope.data["revision"] for o in author.pending] == [author.score["revision"]] == [1]
    assert await published(ns) == []
    return author


async def test_the_sweeper_publishes_an_event_left_by_a_crash_once_with_its_id(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    crashed = await stored_not_published(ns, producer, "swept")
    [left] = crashed.pending
    service = trust(ns, outbox_grace_s=0, outbox_sweep_interval_s=0.2)
    async with service.running():
        store = service.trust_store
        events = await eventually(lambda: published(ns), until=lambda e: len(e) >= 1, what="the left event")
        await eventually(lambda: store.history_page("swept", None, 10), until=lambda h: len(h) == 1)
        # Several more sweeps: the left event is not published again.
        await throughout(
            lambda: published(ns), holds=lambda now: now == events, seconds=1.0, interval=0.2, what="one publish"
        )
        author = await store.author("swept")
        history = await store.history_page("swept", None, 10)
        events = await published(ns)
    assert [e["event_id"] for e in events] == [str(left.envelope.event_id)]
    assert events[0] == json.loads(left.envelope.to_bytes())  # the stored envelope, unchanged
    assert author is not None and author.pending == () and author.score == crashed.score
    assert [(h["event_id"], h["revision"]) for h in history] == [(str(left.envelope.event_id), 1)]


async def test_the_next_pass_publishes_an_event_left_by_a_crash_before_its_own(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    crashed = await stored_not_published(ns, producer, "next")
    [left] = crashed.pending
    service = trust(ns)  # the sweeper's grace (30 s) keeps it away from the fresh entry
    async with service.running():
        store = service.trust_store
        await send(producer, ns, work_added("next", 2, extra_2024=1))
        events = await eventually(lambda: published(ns), until=lambda e: len(e) >= 2, what="both changes")
        await eventually(lambda: store.history_page("next", None, 10), until=lambda h: len(h) == 2)
        await throughout(
            lambda: published(ns), holds=lambda now: now == events, seconds=0.5, interval=0.1, what="no more events"
        )
        author = await store.author("next")
    assert [e["event_id"] for e in events][:1] == [str(left.envelope.event_id)]
    assert [(e["data"]["revision"], e["data"]["previous_score"]) for e in events] == [(1, None), (2, 21)]
    assert len({e["event_id"] for e in events}) == 2
    assert author is not None and author.pending == () and author.score is not None
    assert author.score["revision"] == 2


async def test_signal_writes_racing_from_two_replicas_keep_the_newest_state_of_each_source(ns: Namespace) -> None:
    """Two stores (own clients, as two processes), each writing the same authors' sources
    at shuffled revisions, several rounds at once: what remains is the highest revision of
    every source."""
    name = f"t{ns.id}_trust_race"
    ns.databases.append(name)
    clients: list[AsyncMongoClient[dict[str, Any]]] = [AsyncMongoClient(ns.infra["mongodb"]) for _ in range(2)]
    stores = [TrustStore(c[name]) for c in clients]
    authors = [f"r{i}" for i in range(30)]
    now = datetime.now(UTC)
    rng = random.Random(5)

    def write(author_id: str, source: str, revision: int, exists: bool) -> SignalWrite:
        state = {"revision": revision, "count": revision} if source == "followers" else {"revision": revision}
        return SignalWrite(author_id, {source: state}, exists, now, now, now + timedelta(seconds=1))

    async def replica(store: TrustStore, revisions: list[int]) -> None:
        for revision in revisions:
            held = await store.load(authors)
            writes = [
                write(a, source, revision, a in held) for a in authors for source in ("profile", "claim", "followers")
            ]
            await store.save_signals(writes)

    try:
        await asyncio.gather(*(replica(s, rng.sample(range(1, 13), 12)) for s in stores))
        final = await stores[0].authors_by_id(authors)
    finally:
        for c in clients:
            await c.close()
    assert len(final) == len(authors)
    for author in final:
        assert {s: author.signals[s]["revision"] for s in author.signals} == dict.fromkeys(
            ("profile", "claim", "followers"), 12
        )
        assert author.signals["followers"]["count"] == 12


async def test_a_batch_delivered_again_after_its_signals_were_stored_schedules_them(ns: Namespace) -> None:
    """The first delivery stored the author's signals and was cut off before scheduling
    it (the process died, or the batch failed after the write): the redelivery finds
    nothing newer to write, and schedules the author anyway, since it is still unscored."""
    name = f"t{ns.id}_trust_redelivery"
    ns.databases.append(name)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(ns.infra["mongodb"])
    scheduled: dict[str, datetime] = {}

    def cut_off(due: dict[str, datetime]) -> None:
        raise RuntimeError("process died before scheduling")

    try:
        store = TrustStore(client[name])
        payload = registered("redelivered")
        batch = [Incoming(Envelope.wrap(payload, producer="test"), payload, "profile.events", 0, 7)]
        with pytest.raises(RuntimeError):
            await SignalHandler(store, window_ms=50, max_delay_ms=200, burst_span_ms=2000, on_due=cut_off)(batch)
        handler = SignalHandler(store, window_ms=50, max_delay_ms=200, burst_span_ms=2000, on_due=scheduled.update)
        await handler(batch)
        author = await store.author("redelivered")
    finally:
        await client.close()
    assert author is not None and author.dirty and author.signals["profile"]["revision"] == 1
    assert list(scheduled) == ["redelivered"]
