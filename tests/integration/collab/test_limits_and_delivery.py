"""The sender's limit across partitions (two consumers deciding at once), and exactly-once
effects over at-least-once delivery: a redelivered batch changes nothing twice, and a
crash between any two writes is healed by the redelivery (or, for events left in an
outbox, by the sweeper)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts import Envelope
from contracts.registry import decode
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from service_runtime.service import Service
from service_runtime.store import Document
from services.collab.processing import Decider
from services.collab.store import CollabStore
from tests.conftest import Namespace, eventually, throughout
from tests.integration.collab.helpers import (
    TOPIC_OF,
    answer,
    claimed,
    collab_service,
    events_until,
    invite,
    of,
    profile,
    published,
    send,
    status_of,
    withdraw,
)
from tests.service_process import wait_for_group

SENDER = "u-sender"


async def test_two_consumers_racing_for_a_senders_last_slots_give_out_five(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    first, second = collab_service(ns), collab_service(ns)
    async with first.running(), second.running():
        await wait_for_group(ns.infra["kafka"], first.settings.consumer_group, 2)
        authors = [f"a{n:02d}" for n in range(24)]
        await send(producer, ns, *(e for a in authors for e in (profile(a), claimed(a, f"owner-{a}"))))
        # Each folded by whichever consumer holds its partition (one database, shared).
        await eventually(
            lambda: first.db.authors.count_documents({"owner.claimed": True, "profile.revision": 1}),
            until=lambda n: n == len(authors),
            what="every record folded",
        )
        await send(producer, ns, *(invite(a, SENDER, f"inv-{a}") for a in authors))
        events = await events_until(
            ns, lambda ev: len(of(ev, "InvitationSent")) + len(of(ev, "InvitationRejected")) == 24, "all 24 decided"
        )
        sent = sorted(e["data"]["invitation_id"] for e in of(events, "InvitationSent"))
        assert len(sent) == 5
        assert {e["data"]["reason"] for e in of(events, "InvitationRejected")} == {"too_many_open_invitations"}
        senders = await first.db.senders.find({}).to_list()
        assert senders == [{"_id": SENDER, "pending": sent}]
        # One answered: its slot is free for the next invitation, and only for one.
        taken = sent[0]
        await send(producer, ns, answer(taken.removeprefix("inv-"), taken, f"owner-{taken.removeprefix('inv-')}"))
        await status_of(first, taken, "accepted")
        free = [a for a in authors if f"inv-{a}" not in sent]
        await send(producer, ns, invite(free[0], SENDER, "inv-next-1"), invite(free[1], SENDER, "inv-next-2"))
        events = await events_until(
            ns, lambda ev: {"inv-next-1", "inv-next-2"} <= {e["data"]["invitation_id"] for e in ev}, "both decided"
        )
        # The two race (two records, maybe two consumers) for the one slot: one of them wins.
        outcomes = sorted(e["event_type"] for e in events if e["data"]["invitation_id"] in ("inv-next-1", "inv-next-2"))
        assert outcomes == ["InvitationRejected", "InvitationSent"]
        assert len((await first.db.senders.find_one({"_id": SENDER}) or {})["pending"]) == 5


async def test_slots_taken_by_concurrent_writers_of_separate_clients_never_exceed_the_limit(ns: Namespace) -> None:
    database = f"t{ns.id}_collab_slots"
    ns.databases.append(database)
    clients: list[AsyncMongoClient[Document]] = [AsyncMongoClient(ns.infra["mongodb"]) for _ in range(2)]
    try:
        stores = [CollabStore(c[database]) for c in clients]
        # 20 writers at once, some asking for one slot, some for several; then the same again.
        asks = [[f"inv-{n:02d}"] for n in range(12)] + [[f"inv-{n:02d}", f"inv-{n + 1:02d}"] for n in range(12, 20, 2)]
        results = await asyncio.gather(
            *(stores[n % 2].take_slots(SENDER, ids, 5) for n, ids in enumerate(asks)),
            *(stores[n % 2].take_slots(SENDER, ids, 5) for n, ids in enumerate(asks[:3])),
        )
        doc = await stores[0].senders.find_one({"_id": SENDER})
        assert doc is not None and len(doc["pending"]) == 5 and doc["pending"] == sorted(doc["pending"])
        winners = {iid for outcome in results for iid, won in outcome.items() if won}
        assert winners == set(doc["pending"])
        assert all(len(outcome) == len(ids) for outcome, ids in zip(results, asks, strict=False))
        # A slot held by an invitation no longer pending is healed when the slots are full.
        stale = doc["pending"][0]
        await stores[0].invitations.insert_one({"_id": stale, "status": "declined"})
        assert await stores[1].take_slots(SENDER, ["inv-late", "inv-later"], 5) == {
            "inv-late": True,
            "inv-later": False,
        }
        doc = await stores[0].senders.find_one({"_id": SENDER})
        assert doc is not None and stale not in doc["pending"] and "inv-late" in doc["pending"]
        assert await stores[0].held_slots([SENDER, "nobody"]) == {SENDER: doc["pending"]}
        await stores[0].release_slots((SENDER, i) for i in doc["pending"])
        assert await stores[0].senders.count_documents({}) == 0
        # Room for some of several asked at once: the first ones, in the order asked.
        assert await stores[0].take_slots("u-2", ["x1", "x2", "x3"], 2) == {"x1": True, "x2": True, "x3": False}
    finally:
        for c in clients:
            await c.close()


async def test_two_writers_creating_a_senders_slots_at_once_both_hold_theirs(ns: Namespace) -> None:
    """The first invitations of a sender, taken at once by two replicas: the sender's
    document is created once and holds both writers' invitations."""
    database = f"t{ns.id}_collab_new_senders"
    ns.databases.append(database)
    clients: list[AsyncMongoClient[Document]] = [AsyncMongoClient(ns.infra["mongodb"]) for _ in range(2)]
    try:
        stores = [CollabStore(c[database]) for c in clients]
        senders = [f"s-{n:03d}" for n in range(150)]
        results = await asyncio.gather(
            *(stores[w].take_slots(s, [f"{s}-{w}a", f"{s}-{w}b"], 5) for s in senders for w in (0, 1))
        )
        assert all(all(outcome.values()) for outcome in results)
        held = await stores[0].held_slots(senders)
        lost = [s for s in senders if held.get(s) != sorted(f"{s}-{w}{x}" for w in (0, 1) for x in "ab")]
        assert lost == [], f"{len(lost)} of {len(senders)} senders lost a writer's slots: {held.get(lost[0])}"
    finally:
        for c in clients:
            await c.close()


# --- redelivery and crashes -----------------------------------------------------------------


def incoming(envelopes: Sequence[Envelope]) -> list[Incoming[Any]]:
    out: list[Incoming[Any]] = []
    for n, env in enumerate(envelopes):
        topic = TOPIC_OF[env.producer]
        envelope, payload = decode(topic, env.to_bytes())
        out.append(Incoming(envelope, payload, topic, 0, n))
    return out


async def snapshot(service: Service) -> dict[str, list[Document]]:
    """The projection's documents, without their outboxes: published entries leave an
    outbox a moment after publishing (``OUTBOX_CLEAR_AFTER_S``), whenever that falls."""
    return {
        name: await service.db[name].find({}, {"outbox": 0}).sort("_id").to_list()
        for name in ("invitations", "authors", "senders")
    }


class Crash(Exception):
    pass


def crash_once(obj: object, name: str) -> None:
    """The next call of ``obj.name`` dies (as a process killed at that point would stop)."""
    original = getattr(obj, name)

    async def dying(*args: Any, **kwargs: Any) -> Any:
        setattr(obj, name, original)
        raise Crash(name)

    setattr(obj, name, dying)


@pytest.fixture
async def decider(ns: Namespace) -> Any:
    service = collab_service(ns, outbox_grace_s=3600.0)  # no sweeper unless a test wants one
    async with service.running():
        yield service, service.http.state.collab_decider


FACTS = [profile("a1", name="Ada"), claimed("a1", "u-owner")]


async def test_a_redelivered_batch_changes_nothing_twice(ns: Namespace, decider: tuple[Service, Decider]) -> None:
    service, d = decider
    batch = incoming(
        [
            *FACTS,
            invite("a1", SENDER, "inv-1"),
            answer("a1", "inv-1", "u-owner"),
            invite("a1", "u-other", "inv-2"),
        ]
    )
    await d.handle(batch)
    before, events = await snapshot(service), await published(ns)
    notes = await published(ns, Topic.NOTIFICATIONS_EVENTS)
    await d.handle(batch)
    await d.handle(batch[2:])
    assert await snapshot(service) == before
    # One partition (one record): in order, and nothing more arrives.
    await throughout(
        lambda: published(ns), holds=lambda now: now == events, seconds=0.5, interval=0.1, what="no event twice"
    )
    for invitation_id, status in (("inv-1", "accepted"), ("inv-2", "pending")):
        await status_of(service, invitation_id, status)  # and the outbox emptied
    assert sorted(str(n) for n in await published(ns, Topic.NOTIFICATIONS_EVENTS)) == sorted(str(n) for n in notes)
    assert [e["event_type"] for e in events] == ["InvitationSent", "InvitationAccepted", "InvitationSent"]
    assert sorted(n["data"]["kind"] for n in notes) == [
        "invitation_answered",
        "invitation_received",
        "invitation_received",
    ]


@pytest.mark.parametrize(
    ("where", "what"),
    [
        ("store", "save"),  # after the slot was taken, before the invitation was written
        ("store", "release_slots"),  # after the write, before the slot was freed
        ("outbox", "deliver"),  # after the write, before anything was published
    ],
)
async def test_a_crash_between_two_writes_is_healed_by_the_redelivery(
    ns: Namespace, decider: tuple[Service, Decider], where: str, what: str
) -> None:
    service, d = decider
    await d.handle(incoming(FACTS))
    batch = incoming(
        [invite("a1", SENDER, "inv-1"), invite("a1", "u-other", "inv-2"), withdraw("a1", "inv-2", "u-other")]
    )
    crash_once(d.store if where == "store" else d.outbox, what)
    with pytest.raises(Crash):
        await d.handle(batch)
    await d.handle(batch)  # the redelivery
    events = await published(ns)
    assert sorted((e["event_type"], e["data"]["invitation_id"]) for e in events) == [
        ("InvitationSent", "inv-1"),
        ("InvitationSent", "inv-2"),
        ("InvitationWithdrawn", "inv-2"),
    ]
    assert len({e["event_id"] for e in events}) == 3
    notes = await published(ns, Topic.NOTIFICATIONS_EVENTS)
    assert len({n["data"]["notification_id"] for n in notes}) == 2 and len(notes) <= 4
    assert await service.db.senders.find({}).to_list() == [{"_id": SENDER, "pending": ["inv-1"]}]
    for invitation_id, status in (("inv-1", "pending"), ("inv-2", "withdrawn")):
        doc = await status_of(service, invitation_id, status)
        assert doc["outbox"] == []


async def test_events_left_in_an_outbox_are_published_by_the_sweeper(ns: Namespace, producer: AIOKafkaProducer) -> None:
    service = collab_service(ns, outbox_grace_s=0.5, outbox_sweep_interval_s=0.3)
    async with service.running():
        d: Decider = service.http.state.collab_decider
        await d.handle(incoming(FACTS))
        crash_once(d.outbox, "deliver")
        with pytest.raises(Crash):
            await d.handle(incoming([invite("a1", SENDER, "inv-1")]))  # and never redelivered
        events = await events_until(ns, lambda ev: of(ev, "InvitationSent", "inv-1"), "swept")
        notes = await events_until(
            ns, lambda ev: of(ev, "NotificationCreated"), "the owner's notification swept", Topic.NOTIFICATIONS_EVENTS
        )
        assert len(events) == 1 and notes[0]["data"]["user_id"] == "u-owner"
        await status_of(service, "inv-1", "pending")
