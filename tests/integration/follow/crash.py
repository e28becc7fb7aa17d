"""A large fan-out (shared inbox entries) through two replicas running as OS processes,
one of them SIGKILLed in the middle and restarted: every follower notified exactly once,
in the store, over HTTP and on notifications.events; nobody who unfollowed before the work
or followed after it. Run at 20,000 followers in the integration tests and at a million
as a fault test."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts.events.notifications import fanout_id, notification_id
from contracts.topics import Topic
from service_runtime.auth import mint_token
from service_runtime.topic_reader import iter_topic
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore, edge_id
from tests.conftest import Namespace, eventually
from tests.integration.follow.conftest import follow_settings, later, plan_of, publish, work_added
from tests.service_process import ServiceProcess, wait_for_group

AUTHOR = "openalex:A5017898742"
EXCLUDED = 100  # who unfollowed before the work, and as many who followed after it


def follower(i: int) -> str:
    return f"user-{i:07d}"


async def seed(store: FollowStore, followers: int, moment: datetime) -> None:
    """Edges straight into the projection in bulk (indexes after: a bulk load is faster
    without them): this is about the fan-out."""
    before = moment - timedelta(hours=1)

    def edge(user: str, **fields: Any) -> dict[str, Any]:
        return {
            "_id": edge_id(AUTHOR, user),
            "author_id": AUTHOR,
            "user_id": user,
            "active": True,
            "followed_at": before,
            "unfollowed_at": None,
            "revision": 1,
            **fields,
        }

    edges = [edge(follower(i)) for i in range(followers)]
    edges += [edge(f"left-{i:04d}", active=False, unfollowed_at=moment - timedelta(minutes=1)) for i in range(EXCLUDED)]
    edges += [edge(f"late-{i:04d}", followed_at=moment + timedelta(hours=1)) for i in range(EXCLUDED)]
    await store.seed_edges(edges)
    await store.create_indexes()
    await store.seed_followers(AUTHOR, "Quoc V. Le", [], before, count=followers)


async def notified(store: FollowStore, fid: str) -> list[str]:
    """Every member of the fan-out's shared entries (each entry once: a paged scan may
    repeat a document)."""
    entries = {d["_id"]: d["users"] async for d in store.shared.find({"fanout_id": fid}, {"users": 1})}
    return [u for users in entries.values() for u in users]


async def ids_on_topic(kafka: str, topic: str, source_event_id: str) -> set[str]:
    ids = set()
    async for batch in iter_topic(kafka, topic):
        for r in batch:
            data = json.loads(r.value)["data"]
            if data.get("source_event_id") == source_event_id:
                ids.add(data["notification_id"])
    return ids


async def listed_over_http(proc: ServiceProcess, settings: FollowSettings, user: str, source_event_id: str) -> int:
    async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
        r = await http.get(
            f"/users/{user}/notifications", headers={"Authorization": f"Bearer {mint_token(settings, user)}"}
        )
        r.raise_for_status()
        return sum(1 for n in r.json()["notifications"] if n["source_event_id"] == source_event_id)


async def fanout_killed_midway(
    ns: Namespace, producer: AIOKafkaProducer, followers: int, *, chunk: int, timeout_s: float
) -> None:
    settings = follow_settings(
        ns, fanout_shared_above=1000, fanout_shared_chunk_size=chunk, consumer_max_records=1, outbox_grace_s=5.0
    )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(ns.infra["mongodb"], tz_aware=True)
    store = FollowStore(client[settings.database_name])
    replicas = [ServiceProcess("follow", settings), ServiceProcess("follow", settings)]
    try:
        moment = later()
        await seed(store, followers, moment)
        for r in replicas:
            await r.start()
        await wait_for_group(ns.infra["kafka"], f"{settings.consumer_group}.fanout", members=2)
        work = work_added(AUTHOR, at=moment)
        fid = str(fanout_id(work.event_id))
        await publish(producer, ns, [work], Topic.PROFILE_EVENTS)
        chunks = -(-(followers + 2 * EXCLUDED) // chunk)  # ranges of the author's edges
        before = await eventually(
            lambda: plan_of(store, fid),
            timeout=timeout_s,
            what="a fifth of the chunks done",
            until=lambda p: len(p.get("done") or []) >= chunks // 5,
        )
        replicas[0].kill()
        # Killed in the middle of the fan-out: some chunks done, maybe some still to cut.
        assert len(before["done"]) < chunks and len(before["chunks"]) <= chunks, "killed in the middle of the fan-out"
        await replicas[0].start()
        plan = await eventually(
            lambda: plan_of(store, fid),
            timeout=timeout_s,
            what="every chunk done",
            until=lambda p: bool(p.get("published")) and len(p["done"]) == len(p["chunks"]),
        )
        assert plan["shared"] and len(plan["chunks"]) == chunks

        members = await notified(store, fid)
        expected = {follower(i) for i in range(followers)}
        assert len(members) == followers and set(members) == expected, "each follower once, nobody else"
        ids = await ids_on_topic(ns.infra["kafka"], ns.topic(Topic.NOTIFICATIONS_EVENTS), str(work.event_id))
        assert ids == {str(notification_id(work.event_id, u)) for u in expected}
        sample = random.Random(5).sample(sorted(expected), 10)
        for user in sample:
            assert await listed_over_http(replicas[1], settings, user, str(work.event_id)) == 1
        for user in ("left-0001", "late-0001"):
            assert await listed_over_http(replicas[1], settings, user, str(work.event_id)) == 0
        both = [r.log_text().count("fanout_chunks_done") for r in replicas]
        assert all(n > 0 for n in both), f"both replicas took chunks: {both}"
    finally:
        for r in replicas:
            await r.stop()
        await client.close()
