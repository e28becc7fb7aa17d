"""Rescoring after a formula change (interrupted and resumed), the outbox healing a crash
between storing a score and publishing it, and leases keeping two replicas apart."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from service_runtime.outbox import Outbox
from service_runtime.publishing import EventPublisher, Outgoing
from services.trust import scoring
from services.trust.app import TrustService, build_service
from services.trust.recompute import Recomputer
from services.trust.rescore import rescore_all
from services.trust.settings import TrustSettings
from services.trust.store import Author
from tests.conftest import Namespace, eventually
from tests.integration.trust.helpers import approved, followers, registered, send, trust_events, work_added

# v2 counts works from 2022 on as recent and weighs the record more: most authors move.
V2 = dataclasses.replace(scoring.CURRENT, version=2, recent_since_year=2022, works=(20, 150), recent_works=(15, 40))


class CrashingPublisher(EventPublisher):
    """Stands for a process that dies after storing scores, before the broker acknowledged."""

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        raise SystemExit("process killed before publishing")


def crashing(service: TrustService) -> Outbox:
    return Outbox(CrashingPublisher(service.broker, service.publisher.producer_name, service.publisher.topic_prefix))


def unscored_at(revision: int, n: int, authors: list[Author]) -> bool:
    """All ``n`` authors hold this profile revision and wait for their score."""
    return bool(sum(a.dirty and a.signals["profile"]["revision"] == revision for a in authors) == n)


def score(author: Author) -> int:
    assert author.score is not None
    return author.score["score"]


def revision(author: Author) -> int:
    assert author.score is not None
    return author.score["revision"]


async def scored_authors(ns: Namespace, producer: AIOKafkaProducer, n: int) -> tuple[TrustService, list[str]]:
    settings = ns.settings("trust", cls=TrustSettings)
    service = build_service(settings)
    ids = [f"author-{i:03d}" for i in range(n)]
    async with service.running():
        await send(
            producer,
            ns,
            *[registered(a) for a in ids],
            *[followers(a, i * 7, 1) for i, a in enumerate(ids)],
            *[approved(a) for a in ids[::3]],
        )
        await eventually(lambda: trust_events(ns), until=lambda e: len(e) >= n, what="first scores")
        await eventually(service.trust_store.count_dirty, until=lambda c: c == 0)
        await eventually(service.trust_store.with_pending_events, until=lambda p: p == [])
    return build_service(settings), ids  # a fresh process on the same store and topics


async def test_rescore_interrupted_and_resumed_rescored_once_published_once(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    service, ids = await scored_authors(ns, producer, 40)
    async with service.running():
        store = service.trust_store
        before = {a.author_id: score(a) for a in await store.authors_by_id(ids)}
        first_run = Recomputer(store, service.outbox, formula=V2)
        progress = await rescore_all(store, first_run, chunk=7, max_authors=15)  # stopped part way
        assert progress.rescored == 15 and await store.count_behind(2) == 25
        # The next run dies after storing a chunk's scores, before publishing them.
        with pytest.raises(SystemExit):
            await rescore_all(store, Recomputer(store, crashing(service), formula=V2), chunk=7)
        resumed = Recomputer(store, service.outbox, formula=V2)
        lines: list[str] = []
        await rescore_all(store, resumed, chunk=7, on_progress=lambda p: lines.append(p.line()))
        assert await store.count_behind(2) == 0
        assert await store.with_pending_events() == []
        authors = await store.authors_by_id(ids)
        after = {a.author_id: score(a) for a in authors}
        revisions = {a.author_id: revision(a) for a in authors}
        # A formula change continues each author's revisions: its history (recorded from
        # trust.events) is revisions n..1 and holds every entry recorded.
        recorded = await eventually(
            lambda: store.history.count_documents({}),
            until=lambda n: n == sum(revisions.values()),
            what="every change recorded in the history",
        )
        histories = {a: [h["revision"] for h in await store.history_page(a, None, 100)] for a in ids}
        events = await eventually(
            lambda: trust_events(ns),
            until=lambda e: (
                sum(x["data"]["formula_version"] == 2 for x in e) >= sum(before[a] != after[a] for a in ids)
            ),
        )
    assert lines[-1].startswith("rescored 18/18 authors")  # 40 - 15 - 7 stored by the crashed run
    v2 = [e for e in events if e["data"]["formula_version"] == 2]
    changed = {a for a in ids if before[a] != after[a]}
    assert changed, "the new formula moves some scores"
    assert {e["data"]["author_id"] for e in v2} == changed
    counts = Counter(e["event_id"] for e in v2)
    assert len(counts) == len(changed)  # one change per author whose score moved
    assert all(e["data"]["previous_score"] == before[e["data"]["author_id"]] for e in v2)
    assert histories == {a: [2, 1] if a in changed else [1] for a in ids}
    assert recorded == sum(len(h) for h in histories.values())


async def test_two_replicas_never_hold_the_same_author(ns: Namespace, producer: AIOKafkaProducer) -> None:
    service, ids = await scored_authors(ns, producer, 12)
    async with service.running():
        store = service.trust_store
        now = datetime.now(UTC)
        _, first = await store.claim(ids[:8], now, 30)
        _, second = await store.claim(ids, now, 30)
        # A lease its pass never gave back (the pass died) is taken over once expired.
        _, third = await store.claim(ids[:2], now + timedelta(seconds=31), 30)
    assert {a.author_id for a in first} == set(ids[:8])
    assert {a.author_id for a in second} == set(ids[8:])
    assert {a.author_id for a in third} == set(ids[:2])


async def test_two_replicas_racing_for_the_same_authors_score_and_publish_each_change_once(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    # Two service instances (own store clients) on one consumer group; a long coalescing
    # window keeps their own loops idle, so the test itself makes both recompute the same
    # dirty authors at the same moment, round after round.
    settings = ns.settings("trust", cls=TrustSettings, recompute_window_ms=600_000, recompute_max_delay_ms=600_000)
    first, second = build_service(settings), build_service(settings)
    ids = [f"racer-{i:02d}" for i in range(40)]
    async with first.running(), second.running():
        store = first.trust_store
        for revision in range(1, 6):
            if revision == 1:
                await send(producer, ns, *[registered(a) for a in ids])
            else:
                await send(producer, ns, *[work_added(a, revision, extra_2024=2 * revision) for a in ids])
            await eventually(
                lambda: store.authors_by_id(ids),
                what=f"revision {revision} stored, unscored",
                until=functools.partial(unscored_at, revision, len(ids)),
            )
            done = await asyncio.gather(
                first.recomputer.recompute(ids, only_dirty=True), second.recomputer.recompute(ids, only_dirty=True)
            )
            assert sum(done) == len(ids), f"round {revision}: {done} scores stored for {len(ids)} authors"
        assert await store.count_dirty() == 0
        assert await store.leases.count_documents({}) == 0
        events = await eventually(lambda: trust_events(ns), until=lambda e: len(e) >= 5 * len(ids))
    per_author = Counter(e["data"]["author_id"] for e in events)
    assert per_author == {a: 5 for a in ids}, "each author's change published once per round"
    assert len({e["event_id"] for e in events}) == len(events)
    assert all(
        sorted(e["data"]["revision"] for e in events if e["data"]["author_id"] == a) == [1, 2, 3, 4, 5] for a in ids
    )
