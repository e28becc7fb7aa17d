"""Trust rebuilt from the log equals the live projection: the signals are a fold of
profile, claims and follows events, the scores and the history a fold of trust's own
trust.events (nothing is scored again but the breakdowns of scores that did not move).
The same inputs sent in two interleavings across topics and partitions give two live
copies (their published revisions may differ), and each rebuild equals its own."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts.envelope import EventModel
from contracts.events.claims import AuthorClaimState, ClaimRevoked
from contracts.topics import TOPICS, Topic
from service_runtime.kafka import delete_topics
from service_runtime.offsets import group_progress
from service_runtime.replay import compare_databases, rebuild
from service_runtime.settings import RuntimeSettings
from services.trust.app import TrustService, build_service
from services.trust.settings import TrustSettings
from tests.conftest import Namespace, eventually
from tests.integration.trust.helpers import approved, followers, registered, send, trust_events, work_added

AUTHORS = [f"rb-{i:02d}" for i in range(24)]


def revoked(author_id: str, revision: int) -> ClaimRevoked:
    state = AuthorClaimState(claimed=False, revision=revision)
    return ClaimRevoked(claim_id="k1", author_id=author_id, user_id="u1", author_claim=state, reason="test")


def phases() -> list[list[EventModel]]:
    """Per phase, every author's events (the same set whatever the interleaving): works,
    claims won and lost, follower counts that move the score and some that do not (a
    breakdown that changed without a published change), stale states and duplicates."""
    first: list[EventModel] = []
    second: list[EventModel] = []
    for i, a in enumerate(AUTHORS):
        first += [registered(a), followers(a, 0, 1)]
        if i % 3 == 0:
            first.append(approved(a))
        second += [work_added(a, r, extra_2024=r - 1) for r in range(2, 2 + i % 4)]
        second += [followers(a, i * 40, 2), followers(a, 5, 1)]  # the second one is stale
        if i % 6 == 0:
            second.append(revoked(a, 2))
        if i % 4 == 1:
            second.append(followers(a, i * 40 + 1, 3))  # one more follower: usually no move
        second.append(registered(a))  # an old state, late
    return [first, second]


def interleaved(events: list[EventModel], order: str) -> list[EventModel]:
    """``by_topic``: profile's events first, then claims', then follows'; ``shuffled``:
    authors and topics mixed (each author's events of one topic keep their order)."""
    if order == "by_topic":
        rank = {Topic.PROFILE_EVENTS: 0, Topic.CLAIMS_EVENTS: 1, Topic.FOLLOWS_EVENTS: 2}
        return sorted(events, key=lambda e: rank[Topic(e.topic)])
    queues: dict[tuple[str, str], list[EventModel]] = {}
    for e in events:
        queues.setdefault((e.key(), str(e.topic)), []).append(e)
    rng = random.Random(11)
    out: list[EventModel] = []
    while queues:
        key = rng.choice(sorted(queues))
        out.append(queues[key].pop(0))
        if not queues[key]:
            del queues[key]
    return out


async def settled(service: TrustService) -> bool:
    """Every input and every published change consumed, every author scored from its
    latest signals, its changes published and recorded."""
    settings = service.settings
    for group, topics in service.inputs:
        progress = await group_progress(
            settings.kafka_bootstrap_servers, group, [settings.physical_topic(t) for t in topics]
        )
        if any(p.lag for p in progress):
            return False
    store = service.trust_store
    authors = await store.authors_by_id(AUTHORS)
    if len(authors) < len(AUTHORS) or any(a.dirty or a.pending or a.score is None for a in authors):
        return False
    revisions = sum(a.score["revision"] for a in authors if a.score is not None)
    return await store.history.count_documents({}) == revisions


async def live_then_rebuilt(ns: Namespace, order: str) -> dict[str, Any]:
    settings = ns.settings("trust", cls=TrustSettings)
    service = build_service(settings)
    producer = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"], enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        async with service.running():
            for events in phases():
                await send(producer, ns, *interleaved(events, order))
                await eventually(lambda: settled(service), timeout=60, what=f"live settled ({order})")
            live = {a.author_id: a for a in await service.trust_store.authors_by_id(AUTHORS)}
    finally:
        await producer.stop()
    published = len(await trust_events(ns))
    rebuilt_db = settings.database_name + "_rebuilt"
    ns.databases.append(rebuilt_db)
    result = await rebuild(build_service_from, settings, database=rebuilt_db)
    differences = await compare_databases(
        settings.mongodb_uri, settings.database_name, rebuilt_db, result.projection, limit=10
    )
    assert len(await trust_events(ns)) == published, "a rebuild publishes nothing"
    return {"differences": differences, "live": live, "published": published}


def build_service_from(settings: RuntimeSettings) -> TrustService:
    assert isinstance(settings, TrustSettings)
    return build_service(settings)


@pytest.fixture
async def other_ns(ns: Namespace) -> AsyncIterator[Namespace]:
    """A second private slice of the infrastructure, for the second interleaving."""
    other = Namespace(ns.infra)
    yield other
    await delete_topics(ns.infra["kafka"], [other.topic(t) for t in TOPICS])
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(ns.infra["mongodb"])
    try:
        for db in set(other.databases):
            await client.drop_database(db)
    finally:
        await client.close()


async def test_both_interleavings_rebuild_to_their_live_copies(ns: Namespace, other_ns: Namespace) -> None:
    by_topic = await live_then_rebuilt(ns, "by_topic")
    shuffled = await live_then_rebuilt(other_ns, "shuffled")
    assert by_topic["differences"] == [] and shuffled["differences"] == []
    # The same inputs: the same signals and the same final scores in both live copies.
    assert {a: x.signals for a, x in by_topic["live"].items()} == {a: x.signals for a, x in shuffled["live"].items()}
    assert {a: (x.score or {}).get("score") for a, x in by_topic["live"].items()} == {
        a: (x.score or {}).get("score") for a, x in shuffled["live"].items()
    }
    assert by_topic["published"] > len(AUTHORS)  # more than first scores: the rebuild folds real histories
