"""Crash safety of the follow service's outboxes, against the real broker and store: a
decision written with its events, and the process gone before its edges were written or
its events published, is carried out exactly once (by the next batch of the author, or by
the runtime's sweeper and the edge healer); a chunk that died after deciding its
notifications writes and publishes exactly those; two writers deciding for one author
at once keep the count exact."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import AsyncMongoClient

from contracts.envelope import Envelope, deterministic_event_id
from contracts.events.follows import AuthorFollowed, FollowerCountChanged
from contracts.events.notifications import fanout_id
from contracts.registry import decode
from contracts.topics import Topic
from service_runtime import outbox
from service_runtime.delivery import Incoming
from service_runtime.outbox import Outbox
from service_runtime.service import Service
from services.follow.app import build_service
from services.follow.commands import FollowCommands
from services.follow.store import FollowStore
from tests.conftest import Namespace, eventually, throughout
from tests.integration.follow.conftest import (
    author_doc,
    events,
    follow_cmd,
    follow_settings,
    known,
    later,
    plan_of,
    publish,
    registered,
    store_of,
    unfollow_cmd,
    work_added,
)
from tests.integration.follow.test_follows import edges_in_store, settled_count


async def crashed_decision(service: Service, author: str, user: str) -> Envelope:
    """What a process that died right after deciding a follow leaves: the author document
    with the count, revision and the events in its outbox; no edge, nothing published."""
    cause = follow_cmd(user, author, at=datetime.now(UTC) - timedelta(minutes=1))
    followed = service.publisher.outgoing(
        AuthorFollowed(author_id=author, user_id=user, count=1, followed_at=cause.occurred_at, revision=1),
        cause=cause,
        event_id=deterministic_event_id(cause.event_id, "AuthorFollowed"),
    )
    counted = service.publisher.outgoing(
        FollowerCountChanged(author_id=author, count=1, revision=1),
        cause=cause,
        event_id=deterministic_event_id(cause.event_id, "FollowerCountChanged", 1),
    )
    update = {"$set": {"follower_count": 1, "revision": 1, "count_revision": 1, "version": 1}}
    await store_of(service).authors.update_one({"_id": author}, outbox.push(update, [followed, counted]))
    return cause


async def test_a_decision_whose_process_died_is_carried_out_by_the_next_batch(ns, producer) -> None:
    service = build_service(follow_settings(ns, outbox_grace_s=3600))  # no sweeper in this test
    async with service.running():
        await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
        await known(service, "a1")
        await crashed_decision(service, "a1", "u2")
        await publish(producer, ns, [follow_cmd("u3", "a1"), follow_cmd("u2", "a1")], Topic.WEBAPP_FOLLOWS)
        await settled_count(ns, service, "a1", 2)
        assert await edges_in_store(service, "a1") == 2
        followed = await events(ns, Topic.FOLLOWS_EVENTS, "AuthorFollowed")
        assert sorted(e["data"]["user_id"] for e in followed) == ["u2", "u3"], "u2 once, from the left-behind outbox"
        assert [e["data"]["revision"] for e in followed] == [1, 2], "published in the order decided"


async def test_a_decision_nobody_comes_back_for_is_swept_and_its_edges_healed(ns, producer) -> None:
    service = build_service(follow_settings(ns, outbox_grace_s=0.5, outbox_sweep_interval_s=0.2))
    async with service.running():
        await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
        await known(service, "a1")
        await crashed_decision(service, "a1", "u1")
        # The runtime's sweeper publishes the events; the edge healer writes the edge.
        await eventually(lambda: edges_in_store(service, "a1"), until=lambda n: n == 1, what="edge healed")
        doc = await eventually(
            lambda: author_doc(service, "a1"),
            until=lambda d: not d.get("outbox") and d.get("edges_revision") == 1,
            what="swept, edges written up to revision 1",
        )
        assert doc["follower_count"] == 1
        # The same follow again, and a new one: decided against the healed edge.
        await publish(producer, ns, [follow_cmd("u1", "a1"), follow_cmd("u5", "a1")], Topic.WEBAPP_FOLLOWS)
        await settled_count(ns, service, "a1", 2)
        followed = Counter(e["data"]["user_id"] for e in await events(ns, Topic.FOLLOWS_EVENTS, "AuthorFollowed"))
        assert followed == {"u1": 1, "u5": 1}


async def test_a_decision_waits_for_edges_a_crash_left_behind(ns, producer) -> None:
    """The sweeper published a dead process's decision, but its edges are not written yet
    (the healer is behind): a new command of that author waits for them, then decides."""
    service = build_service(follow_settings(ns, outbox_grace_s=3600))
    store = store_of(service)
    async with service.running():
        await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
        await known(service, "a1")
        cause = await crashed_decision(service, "a1", "u1")
        swept = outbox.pending(await store.author("a1"))
        await store.authors.update_one({"_id": "a1"}, {"$set": {"outbox": []}})  # gone, unpublished for now
        await publish(producer, ns, [follow_cmd("u1", "a1")], Topic.WEBAPP_FOLLOWS)  # the same follow
        await throughout(
            lambda: edges_in_store(service, "a1"),
            holds=lambda n: n == 0,
            seconds=1.0,
            interval=0.1,
            what="nothing decided meanwhile",
        )
        await service.publisher.publish(swept)  # the sweeper's publish, late
        await settled_count(ns, service, "a1", 1)
        followed = await events(ns, Topic.FOLLOWS_EVENTS, "AuthorFollowed")
        assert [e["event_id"] for e in followed] == [str(deterministic_event_id(cause.event_id, "AuthorFollowed"))]


async def test_a_batch_that_died_between_its_decision_and_publishing_publishes_it_once(
    ns, producer, monkeypatch
) -> None:
    service = build_service(follow_settings(ns, outbox_grace_s=3600))
    deliver = service.outbox.deliver
    died: list[bool] = []

    async def dies_once(collection: Any, evts: Any) -> int:
        if collection.name == "authors" and not died and any(evts.values()):
            died.append(True)
            raise RuntimeError("process died after the decision was written")
        return await deliver(collection, evts)

    monkeypatch.setattr(service.outbox, "deliver", dies_once)
    async with service.running():
        await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
        await known(service, "a1")
        batch = [follow_cmd(f"u{i}", "a1") for i in range(5)] + [unfollow_cmd("u0", "a1")]
        await publish(producer, ns, batch, Topic.WEBAPP_FOLLOWS)
        await settled_count(ns, service, "a1", 4)
        assert died and await edges_in_store(service, "a1") == 4
        sent = await events(ns, Topic.FOLLOWS_EVENTS)
        assert len({e["event_id"] for e in sent}) == len(sent), "each event published once"
        kinds = Counter(e["event_type"] for e in sent)
        assert kinds["AuthorFollowed"] == 5 and kinds["AuthorUnfollowed"] == 1
        assert [e["data"]["count"] for e in sent if e["event_type"] == "FollowerCountChanged"][-1] == 4


async def test_a_chunk_that_died_after_deciding_notifies_exactly_its_followers(ns, producer, monkeypatch) -> None:
    service = build_service(follow_settings(ns))
    store = store_of(service)
    insert = store.insert_notifications
    died: list[bool] = []

    async def dies_once(notes: Any) -> None:
        notes = list(notes)
        if notes and not died:
            died.append(True)
            raise RuntimeError("process died after the chunk was decided")
        await insert(notes)

    monkeypatch.setattr(store, "insert_notifications", dies_once)
    async with service.running():
        users = [f"f{i:02d}" for i in range(10)]
        await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
        await known(service, "a1")
        await publish(producer, ns, [follow_cmd(u, "a1") for u in users], Topic.WEBAPP_FOLLOWS)
        await settled_count(ns, service, "a1", 10)
        work = work_added("a1", at=later())
        await publish(producer, ns, [work], Topic.PROFILE_EVENTS)
        plan = await eventually(
            lambda: plan_of(store, str(fanout_id(work.event_id))),
            until=lambda p: bool(p.get("published")) and len(p["done"]) == len(p["chunks"]),
            what="every chunk done",
        )
        assert died and len(plan["chunks"]) == 2
        assert sorted(d["user_id"] for d in await store.inbox.find({}).to_list(None)) == users
        notes = Counter(e["data"]["user_id"] for e in await events(ns, Topic.NOTIFICATIONS_EVENTS))
        assert set(notes) == set(users)


def as_batch(envelopes: list[Envelope], first_offset: int = 0) -> list[Incoming[Any]]:
    out: list[Incoming[Any]] = []
    for offset, e in enumerate(envelopes, start=first_offset):
        envelope, payload = decode(Topic.WEBAPP_FOLLOWS, e.to_bytes())
        out.append(Incoming(envelope, payload, Topic.WEBAPP_FOLLOWS, partition=0, offset=offset))
    return out


async def test_two_writers_deciding_for_one_author_at_once_keep_the_count_exact(ns: Namespace, producer) -> None:
    """Two replicas given overlapping batches of the same partition (a rebalance): each
    decision is written against the version it read, so every command counts once."""
    service = build_service(follow_settings(ns))
    async with service.running():
        await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
        await known(service, "a1")
        commands = [follow_cmd(f"u{i:03d}", "a1") for i in range(120)]
        commands += [unfollow_cmd(f"u{i:03d}", "a1") for i in range(0, 120, 4)]
        batch = as_batch(commands)
        settings = follow_settings(ns)
        clients: list[AsyncMongoClient[dict[str, Any]]] = [
            AsyncMongoClient(ns.infra["mongodb"], tz_aware=True) for _ in range(2)
        ]
        try:
            replicas = [
                FollowCommands(
                    FollowStore(c[settings.database_name]), service.publisher, Outbox(service.publisher), settings
                )
                for c in clients
            ]

            async def consume(replica: FollowCommands, batches: list[list[Incoming[Any]]]) -> None:
                for b in batches:  # a consumer handles its partition's batches in order
                    await replica.handle(b)

            # The old owner goes on with what it fetched; the new one starts again from the
            # last committed offset (none was committed), with other batch boundaries.
            await asyncio.gather(
                consume(replicas[0], [batch[:50], batch[50:120]]),
                consume(replicas[1], [batch[:90], batch[90:]]),
            )
        finally:
            for c in clients:
                await c.close()
        await settled_count(ns, service, "a1", 90)
        assert await edges_in_store(service, "a1") == 90
        followed = {e["event_id"] for e in await events(ns, Topic.FOLLOWS_EVENTS, "AuthorFollowed")}
        assert len(followed) == 120
