"""A 10,000-follower fan-out with the follow service running as real OS processes:
exactly 10,000 notifications, shared by two replicas, and surviving a SIGKILL mid-way; and
a fan-out large enough to share inbox entries, killed mid-way on one of two replicas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from contracts.events.notifications import fanout_id, notification_id
from contracts.topics import Topic
from service_runtime.topic_reader import read_topic
from services.follow.store import FollowStore
from tests.conftest import Namespace, eventually
from tests.integration.follow.conftest import follow_settings, later, plan_of, publish, work_added
from tests.integration.follow.crash import fanout_killed_midway
from tests.service_process import ServiceProcess, wait_for_group

FOLLOWERS = 10_000
AUTHOR = "openalex:A5017898742"


@pytest.fixture
async def seeded(ns: Namespace) -> AsyncIterator[tuple[FollowStore, list[str]]]:
    settings = follow_settings(ns)
    client: AsyncMongoClient = AsyncMongoClient(ns.infra["mongodb"], tz_aware=True)
    store = FollowStore(client[settings.database_name])
    users = [f"user-{i:05d}" for i in range(FOLLOWERS)]
    # Written straight into the projection in bulk: this test is about the fan-out.
    await store.seed_followers(AUTHOR, "Quoc V. Le", users, datetime.now(UTC) - timedelta(hours=1))
    yield store, users
    await client.close()


async def fanout_finished(store: FollowStore, fid: str) -> dict[str, Any]:
    return await eventually(
        lambda: plan_of(store, fid),
        timeout=120,
        what="every chunk done",
        until=lambda p: bool(p.get("published")) and len(p["done"]) == len(p["chunks"]),
    )


async def assert_exactly_once(ns: Namespace, store: FollowStore, users: list[str], source_id) -> None:
    assert await store.inbox.count_documents({}) == FOLLOWERS
    inbox_users = {d["user_id"] for d in await store.inbox.find({}, {"user_id": 1}).to_list(None)}
    assert inbox_users == set(users), "one notification per follower, nobody twice"
    records = await read_topic(ns.infra["kafka"], ns.topic(Topic.NOTIFICATIONS_EVENTS))
    ids = {json.loads(r.value)["data"]["notification_id"] for r in records}
    assert ids == {str(notification_id(source_id, u)) for u in users}


async def test_two_replicas_share_the_chunks_of_a_10000_follower_fanout(ns, producer, seeded) -> None:
    store, users = seeded
    settings = follow_settings(ns, fanout_chunk_size=250)
    replicas = [ServiceProcess("follow", settings), ServiceProcess("follow", settings)]
    try:
        for r in replicas:
            await r.start()
        await wait_for_group(ns.infra["kafka"], f"{settings.consumer_group}.fanout", members=2)
        work = work_added(AUTHOR, at=later())
        await publish(producer, ns, [work], Topic.PROFILE_EVENTS)
        plan = await fanout_finished(store, str(fanout_id(work.event_id)))
        assert len(plan["chunks"]) == 40
        await assert_exactly_once(ns, store, users, work.event_id)
        handled = [r.log_text().count("fanout_chunks_done") for r in replicas]
        assert all(n > 0 for n in handled), f"both replicas took chunks: {handled}"
    finally:
        for r in replicas:
            await r.stop()


async def test_a_fanout_killed_midway_resumes_to_exactly_10000(ns, producer, seeded) -> None:
    store, users = seeded
    # One chunk per batch, so the kill lands between chunks and inside one.
    settings = follow_settings(ns, fanout_chunk_size=100, consumer_max_records=1)
    service = ServiceProcess("follow", settings)
    try:
        await service.start()
        work = work_added(AUTHOR, at=later())
        fid = str(fanout_id(work.event_id))
        await publish(producer, ns, [work], Topic.PROFILE_EVENTS)
        before = await eventually(
            lambda: plan_of(store, fid),
            timeout=60,
            what="some chunks done",
            until=lambda p: len(p.get("done") or []) >= 10,
        )
        service.kill()
        assert len(before["done"]) < len(before["chunks"]), "killed in the middle of the fan-out"
        partial = await store.inbox.count_documents({})
        assert 0 < partial < FOLLOWERS
        await service.start()
        await fanout_finished(store, fid)
        await assert_exactly_once(ns, store, users, work.event_id)
    finally:
        await service.stop()


async def test_a_shared_fanout_of_20000_killed_midway_on_one_of_two_replicas_notifies_each_follower_once(
    ns, producer
) -> None:
    await fanout_killed_midway(ns, producer, 20_000, chunk=500, timeout_s=180)
