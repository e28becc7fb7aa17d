"""The follow projection rebuilt from the log (follows.events, notifications.events and the
identity events; nothing decided again) equals the live one: after follows, unfollows,
parked follows, fan-outs and read marks, and for the same inputs fed in two
interleavings across partitions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from functools import partial

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts import Envelope
from contracts.events.notifications import NotificationsRead
from contracts.topics import TOPICS, Topic
from service_runtime.kafka import delete_topics
from service_runtime.replay import compare_databases, rebuild
from service_runtime.service import Service
from service_runtime.settings import RuntimeSettings
from services.follow.app import build_service
from services.follow.settings import FollowSettings
from tests.conftest import Namespace, eventually
from tests.integration.follow.conftest import (
    author_doc,
    claim_approved,
    follow_cmd,
    follow_settings,
    later,
    publish,
    registered,
    store_of,
    trust_changed,
    unfollow_cmd,
    work_added,
    wrap,
)
from tests.integration.follow.test_follows import settled_count


def build(settings: RuntimeSettings) -> Service:
    return build_service(FollowSettings.model_validate(settings.model_dump()))


async def rebuilt_differences(ns: Namespace, live: FollowSettings) -> tuple[list[str], str]:
    rebuilt_db = live.database_name + "_rebuilt"
    ns.databases.append(rebuilt_db)
    result = await rebuild(build, live, database=rebuilt_db)
    return await compare_databases(live.mongodb_uri, live.database_name, rebuilt_db, result.projection), rebuilt_db


async def quiet(service: Service) -> None:
    """Every outbox delivered (nothing a rebuild could not see yet)."""
    db = store_of(service).db
    for name in ("authors", "fanouts", "fanout_chunks"):
        await eventually(
            partial(db[name].count_documents, {"outbox.0": {"$exists": True}}),
            until=lambda n: n == 0,
            what=f"{name} outboxes delivered",
        )


async def test_a_rebuild_equals_live_after_follows_unfollows_parked_follows_fanouts_and_read_marks(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    settings = follow_settings(ns)
    service = build_service(settings)
    store = store_of(service)
    async with service.running():
        await publish(producer, ns, [registered("a1"), registered("a2", name="Ada")], Topic.PROFILE_EVENTS)
        await publish(producer, ns, [claim_approved("a2", owner="ada")], Topic.CLAIMS_EVENTS)
        await eventually(lambda: store.author_facts(["a1", "a2"]), until=lambda d: all(f.known for f in d.values()))
        commands = [follow_cmd(f"u{i}", "a1") for i in range(1, 6)]
        commands += [unfollow_cmd("u1", "a1"), follow_cmd("u6", "a1"), follow_cmd("u6", "a1")]
        commands += [follow_cmd("ada", "a2"), follow_cmd("u1", "a2"), follow_cmd("u2", "a2")]
        # Parked: applied once "late" is registered; "pair" nets to nothing; "ghost" waits.
        commands += [follow_cmd("u1", "late"), follow_cmd("u2", "late"), unfollow_cmd("u1", "late")]
        commands += [follow_cmd("u1", "pair"), unfollow_cmd("u1", "pair"), follow_cmd("u9", "ghost")]
        await publish(producer, ns, commands, Topic.WEBAPP_FOLLOWS)
        await settled_count(ns, service, "a1", 5)
        await settled_count(ns, service, "a2", 2)
        await eventually(
            lambda: author_doc(service, "pair"), until=lambda d: len(d.get("parked") or []) == 1, what="pair parked"
        )
        await publish(producer, ns, [registered("late"), registered("pair")], Topic.PROFILE_EVENTS)
        await settled_count(ns, service, "late", 1)
        await eventually(lambda: author_doc(service, "pair"), until=lambda d: d.get("parked") == [], what="pair done")

        await publish(producer, ns, [work_added("a1", at=later())], Topic.PROFILE_EVENTS)
        await publish(producer, ns, [trust_changed("a2", "Trusted", "Emerging", at=later())], Topic.TRUST_EVENTS)
        await eventually(lambda: store.inbox.count_documents({}), until=lambda n: n == 5 + 2, what="inbox")
        u2 = await store.notifications("u2", unread_only=False, before=None, limit=10)
        marks = [
            wrap(NotificationsRead(user_id="u2", notification_ids=[u2[0]["_id"]])),
            wrap(NotificationsRead(user_id="u3")),
        ]
        await publish_marks(producer, ns, marks)
        await eventually(
            lambda: store.inbox.count_documents({"read": True}), until=lambda n: n == 2, what="read marks applied"
        )
        await quiet(service)

    differences, rebuilt_db = await rebuilt_differences(ns, settings)
    assert differences == []
    client: AsyncMongoClient = AsyncMongoClient(ns.infra["mongodb"])
    try:
        rebuilt = client[rebuilt_db]
        ghost = await rebuilt.authors.find_one({"_id": "ghost"}) or {}
        assert [p["user_id"] for p in ghost["parked"]] == ["u9"], "a follow still waiting is rebuilt waiting"
        pair = await rebuilt.authors.find_one({"_id": "pair"}) or {}
        assert pair["follower_count"] == 0 and "count_revision" not in pair, "no count was published for it"
        assert await rebuilt.inbox.count_documents({"read": True}) == 2
    finally:
        await client.close()


async def publish_marks(producer: AIOKafkaProducer, ns: Namespace, marks: Sequence[Envelope]) -> None:
    """On the user's partition of notifications.events, as the HTTP route publishes them."""
    for m in marks:
        await producer.send_and_wait(ns.topic(Topic.NOTIFICATIONS_EVENTS), m.to_bytes(), key=m.data["user_id"].encode())


@pytest.fixture
async def other_ns(ns: Namespace) -> AsyncIterator[Namespace]:
    """A second private slice of the infrastructure (topics, databases, groups)."""
    other = Namespace(ns.infra)
    yield other
    await delete_topics(ns.infra["kafka"], [other.topic(t) for t in TOPICS])
    client: AsyncMongoClient = AsyncMongoClient(ns.infra["mongodb"])
    try:
        for db in set(other.databases):
            await client.drop_database(db)
    finally:
        await client.close()


AUTHORS = ["p-a", "p-b", "p-c", "p-d", "p-e", "p-f"]


def the_commands() -> list[Envelope]:
    """Follows and unfollows of six authors (spread over the partitions), some of users
    who follow several of them."""
    out = []
    for i, author in enumerate(AUTHORS):
        users = [f"v{j}" for j in range(i + 2)]
        out += [follow_cmd(u, author) for u in users]
        out += [unfollow_cmd(users[0], author), follow_cmd("everyone", author)]
        if i % 2:
            out.append(follow_cmd(users[0], author))
    return out


def expected_counts() -> dict[str, int]:
    return {a: (i + 2) - 1 + 1 + (1 if i % 2 else 0) for i, a in enumerate(AUTHORS)}


async def run_interleaving(ns: Namespace, producer: AIOKafkaProducer, *, commands_first: bool) -> FollowSettings:
    """The same inputs, in one of two orders across topics and partitions: the authors'
    registrations before their commands (decided at once), or after them (every follow
    parked first, then applied by the sweeper or the next command)."""
    settings = follow_settings(ns)
    service = build_service(settings)
    commands = the_commands()
    registrations = [registered(a) for a in AUTHORS]
    async with service.running():
        if commands_first:
            early = commands[: len(commands) // 2]
            await publish(producer, ns, early, Topic.WEBAPP_FOLLOWS)
            await eventually(
                lambda: store_of(service).authors.count_documents({"parked.0": {"$exists": True}}),
                until=lambda n: n == len({c.data["author_id"] for c in early}),
                what="follows parked",
            )
            await publish(producer, ns, registrations, Topic.PROFILE_EVENTS)
            await publish(producer, ns, commands[len(commands) // 2 :], Topic.WEBAPP_FOLLOWS)
        else:
            await publish(producer, ns, registrations, Topic.PROFILE_EVENTS)
            await eventually(
                lambda: store_of(service).author_facts(AUTHORS), until=lambda d: all(f.known for f in d.values())
            )
            await publish(producer, ns, commands, Topic.WEBAPP_FOLLOWS)
        for author, count in expected_counts().items():
            await settled_count(ns, service, author, count)
        await publish(producer, ns, [work_added(a, at=later()) for a in AUTHORS[:3]], Topic.PROFILE_EVENTS)
        notified = sum(expected_counts()[a] for a in AUTHORS[:3])
        await eventually(lambda: store_of(service).inbox.count_documents({}), until=lambda n: n == notified)
        await quiet(service)
    return settings


async def test_the_same_inputs_in_two_interleavings_rebuild_to_their_live_copies(
    ns: Namespace, other_ns: Namespace, producer: AIOKafkaProducer
) -> None:
    first = await run_interleaving(ns, producer, commands_first=False)
    other_producer = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"], enable_idempotence=True, linger_ms=5)
    await other_producer.start()
    try:
        second = await run_interleaving(other_ns, other_producer, commands_first=True)
    finally:
        await other_producer.stop()
    assert (await rebuilt_differences(ns, first))[0] == []
    assert (await rebuilt_differences(other_ns, second))[0] == []
    # And the two orders came to the same facts: who follows whom, and the counts.
    client: AsyncMongoClient = AsyncMongoClient(ns.infra["mongodb"])
    try:
        facts = []
        for settings in (first, second):
            db = client[settings.database_name]
            edges = sorted([(d["author_id"], d["user_id"], d["active"]) async for d in db.edges.find({})])
            counts = {d["_id"]: d["follower_count"] async for d in db.authors.find({}, {"follower_count": 1})}
            facts.append((edges, counts))
        assert facts[0] == facts[1]
    finally:
        await client.close()
