"""The runtime's transactional outbox against the real store and broker: events written in
the same update as the change, published, then pulled; what a dead writer left is
published by the next write or by the sweeper, never lost, and never pulled unpublished."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber
from pymongo import AsyncMongoClient

from contracts import Envelope, deterministic_event_id
from contracts.events.profile import AuthorRegistered, AuthorState
from contracts.topics import Topic
from service_runtime import outbox
from service_runtime.kafka import current_producer, ensure_topics, make_broker
from service_runtime.outbox import Outbox
from service_runtime.publishing import EventPublisher, Outgoing
from service_runtime.store import Client, Collection, Document
from service_runtime.topic_reader import read_topic
from tests.conftest import Namespace, eventually


def registered(publisher: EventPublisher, author_id: str, revision: int) -> Outgoing:
    state = AuthorState(
        author_id=author_id, display_name=author_id, works_count=0, record_verification_level="L0", revision=revision
    )
    return publisher.outgoing(
        AuthorRegistered(author_id=author_id, author=state), event_id=deterministic_event_id(author_id, revision)
    )


@pytest.fixture
async def parts(ns: Namespace) -> AsyncIterator[tuple[Collection, EventPublisher, Outbox]]:
    await ensure_topics(ns.infra["kafka"], prefix=ns.topic_prefix)
    broker = make_broker(ns.infra["kafka"], client_id="outbox-test")
    await broker.start()
    client: Client = AsyncMongoClient(ns.infra["mongodb"])
    name = f"t{ns.id}_outbox"
    ns.databases.append(name)
    publisher = EventPublisher(broker, "test", ns.topic_prefix)
    try:
        yield client[name]["docs"], publisher, Outbox(publisher)
    finally:
        await broker.stop()
        await client.close()


async def stored(docs: Collection, doc_id: str) -> Document:
    """The document a test wrote before reading it back."""
    document = await docs.find_one({"_id": doc_id})
    assert document is not None, f"{doc_id} not stored"
    return document


async def published(ns: Namespace) -> list[tuple[str, int]]:
    records = await read_topic(ns.infra["kafka"], ns.topic(Topic.PROFILE_EVENTS))
    return [(r.key.decode(), json.loads(r.value)["data"]["author"]["revision"]) for r in records]


async def test_write_deliver_clear(ns: Namespace, parts: tuple[Collection, EventPublisher, Outbox]) -> None:
    docs, publisher, box = parts
    first = registered(publisher, "a1", 1)
    await docs.update_one({"_id": "a1"}, outbox.push({"$set": {"revision": 1}}, [first]), upsert=True)
    document = await stored(docs, "a1")
    # Plain and readable: the envelope is a subdocument, its data too.
    assert document["outbox"][0]["envelope"]["data"]["author"]["revision"] == 1
    assert [o.envelope for o in outbox.pending(document)] == [first.envelope]
    # Another write pushes meanwhile: delivering the first must not pull the second.
    second = registered(publisher, "a1", 2)
    await docs.update_one({"_id": "a1"}, outbox.push({"$set": {"revision": 2}}, [second]))
    assert await box.deliver(docs, {"a1": [first]}) == 1
    left = outbox.pending(await docs.find_one({"_id": "a1"}))
    assert [o.envelope.event_id for o in left] == [second.envelope.event_id]
    await box.deliver(docs, {"a1": left})
    assert (await stored(docs, "a1"))["outbox"] == []
    assert await published(ns) == [("a1", 1), ("a1", 2)]


async def test_the_sweeper_publishes_what_a_dead_writer_left(
    ns: Namespace, parts: tuple[Collection, EventPublisher, Outbox]
) -> None:
    docs, publisher, box = parts
    # Three writers wrote and died before publishing; one document was delivered.
    for n in range(3):
        await docs.update_one(
            {"_id": f"a{n}"}, outbox.push({"$set": {"n": n}}, [registered(publisher, f"a{n}", 1)]), upsert=True
        )
    fresh = registered(publisher, "a9", 1)
    await docs.update_one({"_id": "a9"}, outbox.push({"$set": {"n": 9}}, [fresh]), upsert=True)
    # Entries younger than the grace period are left to their writer.
    assert await box.sweep(docs, older_than=timedelta(minutes=5)) == 0
    assert await box.sweep(docs, older_than=timedelta(0), limit=2) == 4
    assert await docs.count_documents({"outbox.0": {"$exists": True}}) == 0
    assert sorted(await published(ns)) == [("a0", 1), ("a1", 1), ("a2", 1), ("a9", 1)]
    assert await box.sweep(docs, older_than=timedelta(0)) == 0


async def test_nothing_is_pulled_while_publishing_is_off(
    ns: Namespace, parts: tuple[Collection, EventPublisher, Outbox]
) -> None:
    """A rebuild publishes nothing: what it would deliver stays in the outbox."""
    docs, publisher, box = parts
    publisher.enabled = False
    event = registered(publisher, "a1", 1)
    await docs.update_one({"_id": "a1"}, outbox.push({"$set": {"n": 1}}, [event]), upsert=True)
    await box.deliver(docs, {"a1": [event]})
    assert len((await stored(docs, "a1"))["outbox"]) == 1


def test_entries_round_trip() -> None:
    envelope = Envelope.wrap(
        AuthorRegistered(
            author_id="x",
            author=AuthorState(
                author_id="x", display_name="X", works_count=0, record_verification_level="L1", revision=3
            ),
        ),
        producer="p",
    )
    out = Outgoing(str(Topic.PROFILE_EVENTS), "x", envelope)

    assert outbox.outgoing(outbox.entry(out, datetime.now(UTC))) == out


async def test_removal_is_deferred_and_coalesced(
    ns: Namespace, parts: tuple[Collection, EventPublisher, Outbox]
) -> None:
    """Published entries go within ``clear_after_s``, many documents in one write, also
    those delivered while a removal is under way."""
    docs, publisher, _ = parts
    box = Outbox(publisher, clear_after_s=0.05)
    for n in range(30):
        event = registered(publisher, f"a{n}", 1)
        await docs.update_one({"_id": f"a{n}"}, outbox.push({"$set": {"revision": 1}}, [event]), upsert=True)
        await box.deliver(docs, {f"a{n}": [event]})
    await eventually(
        lambda: docs.count_documents({"outbox.0": {"$exists": True}}), until=lambda n: n == 0, what="all cleared"
    )
    assert len(await published(ns)) == 30


async def test_a_batch_that_read_entries_before_their_removal_does_not_send_them_again(
    ns: Namespace, parts: tuple[Collection, EventPublisher, Outbox]
) -> None:
    docs, publisher, _ = parts
    box = Outbox(publisher, clear_after_s=0.05)
    event = registered(publisher, "a1", 1)
    await docs.update_one({"_id": "a1"}, outbox.push({"$set": {"revision": 1}}, [event]), upsert=True)
    read_before = await docs.find_one({"_id": "a1"})  # another batch reads it now...
    await box.deliver(docs, {"a1": [event]})
    await eventually(lambda: stored(docs, "a1"), until=lambda d: d["outbox"] == [], what="removed")
    # ... and passes what it read as pending after the removal: not published twice.
    assert await box.deliver(docs, {"a1": outbox.pending(read_before)}) == 0
    assert await published(ns) == [("a1", 1)]


async def test_the_next_write_drops_published_entries_in_its_own_update(
    ns: Namespace, parts: tuple[Collection, EventPublisher, Outbox]
) -> None:
    """A document written again before its published entries are removed loses them in
    that write (``dropping`` + ``fold``); entries not published stay, the new ones
    are appended after them, and field values are stored as given, ``$`` text included."""
    docs, publisher, _ = parts
    box = Outbox(publisher, clear_after_s=3600)  # no background removal in this test
    first, second = registered(publisher, "a1", 1), registered(publisher, "a1", 2)
    await docs.update_one({"_id": "a1"}, outbox.push({"$set": {"revision": 1}}, [first, second]), upsert=True)
    await box.deliver(docs, {"a1": [first]})
    assert [o.envelope for o in outbox.pending(await stored(docs, "a1"))] == [first.envelope, second.envelope]

    third = registered(publisher, "a1", 3)
    fields = {"revision": 3, "name": "$not an operator", "nested": {"a.b": 1, "list": [1, {"$x": 2}]}}
    # A write that fails keeps them noted, for the next write or the later removal.
    with pytest.raises(RuntimeError):
        async with box.dropping(docs, ["a1"]) as taken:
            raise RuntimeError("the write failed")
    async with box.dropping(docs, ["a1", "a2"]) as taken:
        assert taken == {"a1": {str(first.envelope.event_id)}}
        result = await docs.update_one(
            {"_id": "a1", "revision": 1}, outbox.fold(fields, [third], datetime.now(UTC), taken["a1"])
        )
        assert result.modified_count == 1
    document = await stored(docs, "a1")
    assert {k: document[k] for k in fields} == fields
    assert [o.envelope for o in outbox.pending(document)] == [second.envelope, third.envelope]
    # Nothing left to remove for it, and a batch that read it before passes it again in vain.
    async with box.dropping(docs, ["a1"]) as taken:
        assert taken == {}
    assert await box.deliver(docs, {"a1": [first, second, third]}) == 2
    assert await published(ns) == [("a1", 1), ("a1", 2), ("a1", 3)]

    # A document without an outbox field gets one.
    await docs.insert_one({"_id": "bare"})
    await docs.update_one({"_id": "bare"}, outbox.fold({"revision": 1}, [], datetime.now(UTC), ()))
    assert (await stored(docs, "bare"))["outbox"] == []


async def test_a_producer_whose_state_the_broker_lost_is_replaced_and_the_events_sent_again(
    ns: Namespace, parts: tuple[Collection, EventPublisher, Outbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that restarted without the producer's last batches answers every send of
    that idempotent producer out of order, for good (aiokafka does not take a new producer
    id): the publisher takes a new producer and sends again; nothing is lost or doubled."""
    _, publisher, _ = parts
    broken = current_producer(publisher.broker)
    aiokafka_producer = broken.producer  # type: ignore[attr-defined]

    async def out_of_order(*_: object, **__: object) -> None:
        raise OutOfOrderSequenceNumber()

    monkeypatch.setattr(aiokafka_producer, "send", out_of_order)
    await publisher.publish([registered(publisher, "a1", 1), registered(publisher, "a2", 1)])
    assert current_producer(publisher.broker) is not broken
    await publisher.publish([registered(publisher, "a3", 1)])
    assert sorted(await published(ns)) == [("a1", 1), ("a2", 1), ("a3", 1)]
