"""Fan-out benchmark: one author with N followers (default 100,000) adds a work; how long
until the last notification is in the inbox and acknowledged on notifications.events,
with 1 and with 2 replicas of the follow service (separate processes, one consumer group).

Baseline, measured in the same run: a bare loop doing the same work with nothing around
it: bulk inbox inserts of the same plain documents in the same chunk size, and the same
number of Kafka sends (aiokafka, idempotent, acks=all, sent without awaiting each). The
service does more per chunk: it reads the chunk's followers by a range over the edges,
writes the chunk document with its notifications in its outbox, and pulls them after
publishing (what makes a crash mid-chunk harmless).

    .local/venv/bin/python bench/bench_follow.py [--followers 100000] [--chunk 1000] [--replicas 1 2]

Needs the broker and the store (make infra-up); uses its own topics and databases and
removes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts import Envelope
from contracts.events.notifications import NotificationCreated, fanout_id, notification_id
from contracts.events.profile import AuthorState, WorkAdded, WorkSummary
from contracts.topics import TOPICS, Topic
from service_runtime.kafka import delete_topics, ensure_topics
from service_runtime.topic_reader import iter_topic
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore
from tests.service_process import ServiceProcess

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
AUTHOR = "openalex:A5017898742"


def settings_for(run: str, chunk: int) -> FollowSettings:
    return FollowSettings(
        environment="test",
        kafka_bootstrap_servers=KAFKA,
        mongodb_uri=MONGODB_URI,
        mongodb_database=f"bench_follow_{run}",
        topic_prefix=f"bench{run}.",
        consumer_group_prefix=f"bench{run}",
        fanout_chunk_size=chunk,
        log_level="INFO",
    )


def work_added(at: datetime, author_id: str = AUTHOR) -> Envelope:
    author = AuthorState(
        author_id=author_id, display_name="Quoc V. Le", works_count=29, record_verification_level="L1", revision=2
    )
    work = WorkSummary(work_id="w-new", type="article", year=2026, title="A new paper by a much-followed author")
    return Envelope.wrap(WorkAdded(author_id=author_id, author=author, work=work), producer="bench", occurred_at=at)


async def fanout_done(store: FollowStore, source: Envelope) -> dict[str, Any]:
    fid = str(fanout_id(source.event_id))
    while True:  # a chunk is marked done after its inserts and its acknowledged sends
        plan = await store.fanout(fid)
        if plan and plan.get("published") and len(plan.get("done") or []) == len(plan["chunks"]):
            return plan
        await asyncio.sleep(0.05)


async def fanout_run(replicas: int, followers: int, chunk: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    settings = settings_for(run, chunk)
    client: AsyncMongoClient = AsyncMongoClient(MONGODB_URI, tz_aware=True)
    db = client[settings.database_name]
    store = FollowStore(db)
    await store.create_indexes()
    users = [f"user-{i:07d}" for i in range(followers)]
    seeding = time.perf_counter()
    await store.seed_followers(AUTHOR, "Quoc V. Le", users, datetime.now(UTC) - timedelta(days=1))
    seeded_s = time.perf_counter() - seeding
    await store.seed_followers("warm-up", "Warm Up", ["warm-up-user"], datetime.now(UTC) - timedelta(days=1))
    await ensure_topics(KAFKA, prefix=settings.topic_prefix)
    procs = [ServiceProcess("follow", settings) for _ in range(replicas)]
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True)
    await producer.start()
    try:
        await asyncio.gather(*(p.start() for p in procs))
        # Warm-up (not timed): consumer groups joined, connections open.
        warm = work_added(datetime.now(UTC), author_id="warm-up")
        await producer.send_and_wait(settings.physical_topic(Topic.PROFILE_EVENTS), warm.to_bytes(), key=b"warm-up")
        await fanout_done(store, warm)
        source = work_added(datetime.now(UTC))
        started = time.perf_counter()
        await producer.send_and_wait(
            settings.physical_topic(Topic.PROFILE_EVENTS), source.to_bytes(), key=AUTHOR.encode()
        )
        plan = await fanout_done(store, source)
        elapsed = time.perf_counter() - started
        inbox = await db.inbox.count_documents({"author_id": AUTHOR})  # not the warm-up's
        ids: set[str] = set()
        records = 0
        async for batch in iter_topic(KAFKA, settings.physical_topic(Topic.NOTIFICATIONS_EVENTS)):
            notes = [json.loads(r.value)["data"] for r in batch]
            notes = [n for n in notes if n["author_id"] == AUTHOR]
            records += len(notes)
            ids.update(n["notification_id"] for n in notes)
        handled = [p.log_text().count("fanout_chunks_done") for p in procs]
        if os.environ.get("BENCH_SHOW_LOGS"):
            for p in procs:
                print("\n".join(line for line in p.log_text().splitlines() if "fanout_" in line))
        return {
            "elapsed": elapsed,
            "inbox": inbox,
            "distinct": len(ids),
            "records": records,
            "chunks": len(plan["chunks"]),
            "per_replica": handled,
            "seeded_s": seeded_s,
        }
    finally:
        await producer.stop()
        for p in procs:
            await p.stop()
        await delete_topics(KAFKA, [settings.physical_topic(t) for t in TOPICS])
        await client.drop_database(settings.database_name)
        await client.close()


async def baseline(followers: int, chunk: int) -> float:
    """The same inserts and sends in a bare loop: the floor the service is compared with."""
    run = uuid.uuid4().hex[:8]
    topic = f"bench{run}.{Topic.NOTIFICATIONS_EVENTS}"
    await ensure_topics(KAFKA, [TOPICS[Topic.NOTIFICATIONS_EVENTS]], prefix=f"bench{run}.")
    client: AsyncMongoClient = AsyncMongoClient(MONGODB_URI, tz_aware=True)
    db = client[f"bench_follow_base_{run}"]
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA, enable_idempotence=True, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    source = uuid.uuid4()
    created = datetime.now(UTC)
    try:
        started = time.perf_counter()
        for start in range(0, followers, chunk):
            users = [f"user-{i:07d}" for i in range(start, min(start + chunk, followers))]
            notes = [
                NotificationCreated(
                    notification_id=notification_id(source, u),
                    user_id=u,
                    author_id=AUTHOR,
                    kind="new_work",
                    source_event_id=source,
                    title="Quoc V. Le published a new work",
                    created_at=created,
                )
                for u in users
            ]
            await db.inbox.insert_many(
                [
                    {
                        "_id": str(n.notification_id),
                        "user_id": n.user_id,
                        "author_id": AUTHOR,
                        "kind": n.kind,
                        "source_event_id": str(source),
                        "title": n.title,
                        "created_at": created,
                        "read": False,
                    }
                    for n in notes
                ],
                ordered=False,
            )
            futures = [
                await producer.send(
                    topic,
                    Envelope.wrap(n, producer="bench", event_id=n.notification_id).to_bytes(),
                    key=n.user_id.encode(),
                )
                for n in notes
            ]
            await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()
        await delete_topics(KAFKA, [topic])
        await client.drop_database(db.name)
        await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    n = args.followers
    print(f"fan-out of one new work to {n:,} followers, chunks of {args.chunk}")
    base = await baseline(n, args.chunk)
    base_rate = n / base
    print(f"baseline (bare bulk inserts + Kafka sends): {base:6.2f} s  {base_rate:9,.0f} notifications/s")
    for replicas in args.replicas:
        r = await fanout_run(replicas, n, args.chunk)
        rate = n / r["elapsed"]
        print(
            f"follow service, {replicas} replica(s):         {r['elapsed']:6.2f} s  {rate:9,.0f} notifications/s"
            f"  ratio to baseline {rate / base_rate:5.2f}  | inbox {r['inbox']:,}, distinct ids on topic "
            f"{r['distinct']:,} ({r['records']:,} records), {r['chunks']} chunks, chunk log lines per replica "
            f"{r['per_replica']} (seeding {n:,} edges took {r['seeded_s']:.1f} s)"
        )


if __name__ == "__main__":
    asyncio.run(main())
