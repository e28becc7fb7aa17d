"""Rescoring after a formula change (interrupted and resumed), the outbox healing a crash
between storing a score and publishing it, and leases keeping two replicas apart."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import UTC, datetime

import pytest

from services.trust import scoring
from services.trust.app import build_service
from services.trust.recompute import Recomputer
from services.trust.rescore import rescore_all
from services.trust.settings import TrustSettings
from tests.conftest import Namespace, eventually
from tests.integration.trust.helpers import approved, followers, registered, send, trust_events, work_added

# v2 counts works from 2022 on as recent and weighs the record more: most authors move.
V2 = dataclasses.replace(scoring.CURRENT, version=2, recent_since_year=2022, works=(20, 150), recent_works=(15, 40))


class CrashingPublisher:
    """Stands for a process that dies after storing scores, before the broker acknowledged."""

    def __init__(self, real) -> None:
        self.real = real
        self.producer_name = real.producer_name

    async def publish(self, messages) -> None:
        raise SystemExit("process killed before publishing")


async def scored_authors(ns: Namespace, producer, n: int):
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
        await eventually(lambda: service.trust_store.authors.count_documents({"dirty": True}), until=lambda c: c == 0)
    return build_service(settings), ids  # a fresh process on the same store and topics


async def test_rescore_interrupted_and_resumed_rescored_once_published_once(ns: Namespace, producer) -> None:
    service, ids = await scored_authors(ns, producer, 40)
    async with service.running():
        store = service.trust_store
        before = {d["_id"]: d["score"]["score"] for d in await store.authors_by_id(ids)}
        first_run = Recomputer(store, service.publisher, formula=V2)
        progress = await rescore_all(store, first_run, chunk=7, max_authors=15)  # stopped part way
        assert progress.rescored == 15 and await store.count_behind(2) == 25
        # The next run dies after storing a chunk's scores, before publishing them.
        crashing = Recomputer(store, CrashingPublisher(service.publisher), formula=V2)
        with pytest.raises(SystemExit):
            await rescore_all(store, crashing, chunk=7)
        resumed = Recomputer(store, service.publisher, formula=V2)
        lines: list[str] = []
        await rescore_all(store, resumed, chunk=7, on_progress=lambda p: lines.append(p.line()))
        assert await store.count_behind(2) == 0
        assert await store.pending_outboxes() == []
        docs = await store.authors_by_id(ids)
        after = {d["_id"]: d["score"]["score"] for d in docs}
        # A formula change continues each author's revisions: its history, read by key from
        # the score's revision down, is revisions n..1 and holds every entry recorded.
        histories = {
            d["_id"]: [h["revision"] for h in await store.history_page(d["_id"], d["score"]["revision"], None, 100)]
            for d in docs
        }
        recorded = await store.history.count_documents({})
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


async def test_two_replicas_never_hold_the_same_author(ns: Namespace, producer) -> None:
    service, ids = await scored_authors(ns, producer, 12)
    async with service.running():
        store = service.trust_store
        now = datetime.now(UTC)
        _, first = await store.claim(ids[:8], now, 30)
        _, second = await store.claim(ids, now, 30)
    assert {d["_id"] for d in first} == set(ids[:8])
    assert {d["_id"] for d in second} == set(ids[8:])


async def test_two_replicas_racing_for_the_same_authors_score_and_publish_each_change_once(
    ns: Namespace, producer
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
                until=lambda docs, revision=revision: (
                    sum(d.get("dirty") and d["profile"]["revision"] == revision for d in docs) == len(ids)
                ),
            )
            done = await asyncio.gather(
                first.recomputer.recompute(ids, only_dirty=True), second.recomputer.recompute(ids, only_dirty=True)
            )
            assert sum(done) == len(ids), f"round {revision}: {done} scores stored for {len(ids)} authors"
        assert await store.authors.count_documents({"dirty": True}) == 0
        assert await store.leases.count_documents({}) == 0
        events = await eventually(lambda: trust_events(ns), until=lambda e: len(e) >= 5 * len(ids))
    per_author = Counter(e["data"]["author_id"] for e in events)
    assert per_author == {a: 5 for a in ids}, "each author's change published once per round"
    assert len({e["event_id"] for e in events}) == len(events)
    assert all(
        sorted(e["data"]["revision"] for e in events if e["data"]["author_id"] == a) == [1, 2, 3, 4, 5] for a in ids
    )
