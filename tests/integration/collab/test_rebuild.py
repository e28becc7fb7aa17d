"""A rebuild of the collab projection (folds of claims.events and profile.events, and the
invitations and slots from collab.events, nothing decided again) equals the live
projection, whatever order the live service read the partitions in: the same inputs are
fed in two interleavings, each rebuilt and compared with its own live copy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts import Envelope
from contracts.topics import TOPICS, Topic
from service_runtime.kafka import delete_topics
from service_runtime.offsets import group_progress
from service_runtime.replay import compare_databases, rebuild
from service_runtime.service import Service
from service_runtime.settings import RuntimeSettings
from service_runtime.store import Document
from service_runtime.topic_reader import read_topic
from services.collab.app import build_service
from services.collab.rules import Owner, Profile
from services.collab.settings import CollabSettings
from services.collab.store import CollabStore
from tests.conftest import Namespace, eventually
from tests.integration.collab.helpers import (
    TOPIC_OF,
    answer,
    claimed,
    collab_settings,
    invite,
    post,
    profile,
    revoked,
    withdraw,
)

Input = tuple[str, str, bytes]  # logical topic, key, value


def as_inputs(envelopes: list[Envelope]) -> list[Input]:
    return [(TOPIC_OF[e.producer], e.data["author_id"], e.to_bytes()) for e in envelopes]


def facts() -> list[Input]:
    """Records claimed and open (one not open, one never claimed)."""
    envelopes: list[Envelope] = []
    for n in (*range(1, 9), 10, 11, 12):
        envelopes += [profile(f"a{n}", open_=n != 7, revision=1), claimed(f"a{n}", f"o{n}")]
    return as_inputs([*envelopes, profile("a9")])


def inputs() -> list[Input]:
    """Invitations answered, withdrawn, refused for every reason, messages, a sender over
    the limit, a decline and the same sender again, a claim revoked and a record passed on
    to another owner (while commands on them still come), a stale fact read late, and a
    poison record."""
    envelopes: list[Envelope] = [
        invite("a1", "s1", "inv-1"),
        answer("a1", "inv-1", "o1"),
        post("a1", "inv-1", "s1", "Hello!", "m-1"),
        post("a1", "inv-1", "o1", "Hi, welcome.", "m-2"),
        post("a1", "inv-1", "stranger", "me too", "m-3"),
        invite("a1", "s2", "inv-2"),
        answer("a1", "inv-2", "o1", "decline"),
        invite("a1", "s2", "inv-3"),  # declined recently (when decided after the decline)
        invite("a2", "s1", "inv-4"),
        withdraw("a2", "inv-4", "s1"),
        invite("a2", "s2", "inv-5"),
        invite("a7", "s1", "inv-6"),  # not open
        invite("a9", "s1", "inv-7"),  # not claimed
        invite("a3", "o3", "inv-8"),  # self
        invite("a3", "s1", "inv-9"),
        answer("a3", "inv-9", "o3"),
        answer("a4", "inv-unknown", "o4"),
    ]
    envelopes += [invite(f"a{n}", "s3", f"inv-s3-{n}") for n in (1, 5, 6, 8, 10, 11, 12, 3)]  # over the limit
    envelopes += [
        revoked("a2", "o2"),  # closes a2's live invitations
        claimed("a3", "o3-new", revision=3),  # passes a3 on: closes inv-9
        profile("a4", open_=False, revision=2),
        profile("a4", open_=True, revision=1),  # stale, read late
        post("a3", "inv-9", "s1", "Still there?", "m-4"),
    ]
    items = as_inputs(envelopes)
    items.append((Topic.WEBAPP_COLLAB, "a1", b"poison"))
    return items


def interleaved(items: list[Input], *, reverse: bool) -> list[Input]:
    """Round-robin over the (topic, key) streams, in their order or reversed: each stream
    keeps its own order (as its partition does), the streams interleave differently."""
    streams: dict[tuple[str, str], list[Input]] = {}
    for item in items:
        streams.setdefault(item[:2], []).append(item)
    queues = list(streams.values())[::-1] if reverse else list(streams.values())
    out: list[Input] = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


async def caught_up(service: Service) -> bool:
    settings = service.settings
    for group, topics in service.inputs:
        for p in await group_progress(
            settings.kafka_bootstrap_servers, group, [settings.physical_topic(t) for t in topics]
        ):
            if p.committed < p.end:
                return False
    return await service.db.invitations.count_documents({"outbox.0": {"$exists": True}}) == 0


async def play_then_rebuild(ns: Namespace, known: list[Input], items: list[Input]) -> dict[str, dict[str, Document]]:
    """Live over ``known`` (folded before anything else is sent), then ``items`` (small
    batches, publishing while it consumes), then a rebuild compared with it; returns the
    live projection."""
    settings = collab_settings(ns, consumer_max_records=3)
    live = build_service(settings)
    async with live.running():
        producer = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"], enable_idempotence=True)
        await producer.start()
        try:
            for topic, key, value in known:
                await producer.send_and_wait(ns.topic(topic), value, key=key.encode())
            await eventually(lambda: caught_up(live), timeout=90, what="facts folded")
            for topic, key, value in items:
                await producer.send_and_wait(ns.topic(topic), value, key=key.encode())
        finally:
            await producer.stop()
        await eventually(lambda: caught_up(live), timeout=90, what="live caught up, outboxes empty")
        projection = {
            name: {d["_id"]: d async for d in live.db[name].find({}, {"outbox": 0})}
            for name in live.projection.collections
        }
    published = {
        t: len(await read_topic(ns.infra["kafka"], ns.topic(t)))
        for t in (Topic.COLLAB_EVENTS, Topic.NOTIFICATIONS_EVENTS)
    }

    def build(s: RuntimeSettings) -> Service:
        assert isinstance(s, CollabSettings)
        return build_service(s)

    rebuilt_db = settings.database_name + "_rebuilt"
    ns.databases.append(rebuilt_db)
    result = await rebuild(build, settings, database=rebuilt_db)
    assert result.projection.collections.keys() == {"invitations", "authors", "senders"}
    differences = await compare_databases(ns.infra["mongodb"], settings.database_name, rebuilt_db, result.projection)
    assert differences == []
    for topic, count in published.items():
        assert len(await read_topic(ns.infra["kafka"], ns.topic(topic))) == count, "a rebuild publishes nothing"
    return projection


@pytest.fixture
async def other_ns(infra: dict[str, str], kafka_ready: None) -> AsyncIterator[Namespace]:
    namespace = Namespace(infra)
    yield namespace
    await delete_topics(infra["kafka"], [namespace.topic(t) for t in TOPICS])
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra["mongodb"])
    try:
        for db in set(namespace.databases):
            await client.drop_database(db)
    finally:
        await client.close()


def statuses(projection: dict[str, dict[str, Document]]) -> dict[str, tuple[str, str | None]]:
    return {i: (d["status"], d["reason"]) for i, d in projection["invitations"].items()}


async def test_both_interleavings_rebuild_to_their_live_copies(ns: Namespace, other_ns: Namespace) -> None:
    items = inputs()
    first = await play_then_rebuild(ns, facts(), interleaved(items, reverse=False))
    second = await play_then_rebuild(other_ns, facts(), interleaved(items, reverse=True))
    for live in (first, second):
        invitations = live["invitations"]
        # Whatever the interleaving, the facts the projection folds end the same...
        assert live["authors"] == first["authors"]
        assert live["authors"]["a4"]["profile"]["open_to_collaborate"] is False
        assert live["authors"]["a3"]["owner"]["owner_user_id"] == "o3-new"
        # ...and so do the decisions on records whose facts did not move meanwhile.
        decided = statuses(live)
        assert decided["inv-1"] == ("accepted", None) and invitations["inv-1"]["message_count"] == 2
        assert [m["text"] for m in invitations["inv-1"]["thread"]] == ["Hello!", "Hi, welcome."]
        assert decided["inv-2"] == ("declined", None) and decided["inv-3"] == ("rejected", "declined_recently")
        assert decided["inv-6"] == ("rejected", "not_open_to_collaborate")
        assert decided["inv-7"] == ("rejected", "not_claimed")
        # Where the claim moved while commands came, either order is a decision of its own.
        assert decided["inv-5"] in (("closed", "claim_revoked"), ("rejected", "not_claimed"))
        assert decided["inv-8"] in (("rejected", "self_invitation"), ("pending", None))
        assert decided["inv-9"][0] in ("closed", "rejected", "pending")
        limited = {i: d for i, d in decided.items() if i.startswith("inv-s3-")}
        pending = sorted(i for i, d in limited.items() if d[0] == "pending")
        # At most 5 open at once: an invitation closed (a3 passed on) frees its slot for another.
        closed = [d for d in limited.values() if d[0] == "closed"]
        over = [d for d in limited.values() if d == ("rejected", "too_many_open_invitations")]
        assert len(pending) <= 5 and len(over) >= len(limited) - 5 - len(closed) > 0
        assert live["senders"]["s3"]["pending"] == pending


async def test_the_folds_take_several_changes_of_one_new_document_in_one_write(ns: Namespace) -> None:
    database = f"t{ns.id}_collab_folds"
    ns.databases.append(database)
    client: AsyncMongoClient[Document] = AsyncMongoClient(ns.infra["mongodb"], tz_aware=True)
    try:
        store = CollabStore(client[database])
        await store.hold_slots([("s1", "inv-b"), ("s1", "inv-a"), ("s2", "inv-c")])
        await store.hold_slots([("s1", "inv-0"), ("s1", "inv-a")])
        assert await store.held_slots(["s1", "s2"]) == {"s1": ["inv-0", "inv-a", "inv-b"], "s2": ["inv-c"]}
        await store.fold_authors({"a1": Owner(True, "o1", 2)}, {"a1": Profile("Ada", True, 5)})
        await store.fold_authors({"a1": Owner(False, None, 1)}, {"a1": Profile("Ada L.", False, 6)})
        assert await store.authors.find_one({"_id": "a1"}) == {
            "_id": "a1",
            "owner": {"claimed": True, "owner_user_id": "o1", "revision": 2},
            "profile": {"display_name": "Ada L.", "open_to_collaborate": False, "revision": 6},
        }
    finally:
        await client.close()
