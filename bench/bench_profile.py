"""Profile service benchmark: ingestion rate against a bare baseline, then page read latency.

    .local/venv/bin/python bench/bench_profile.py                 # 100,000 works, 10,000 authors
    .local/venv/bin/python bench/bench_profile.py --works 10000 --authors 1000 --read-seconds 10

1. Publishes N ``WorkIngested`` (two authors each: a first author and one co-author, so
   every author has ~2N/A works) to a private topic prefix on the real broker.
2. *Ours*: the profile service (build_service) consumes them into a private database:
   decode + validate, plan, bulk read works and authors, bulk write authors (with their
   outbox) and works, publish every profile event, clear the outboxes.
3. *Baseline*: a bare aiokafka consumer over the same records doing the same bulk reads
   and writes with PyMongo (the same author and work documents, one bulk write of each
   per batch of 500), with json.loads and nothing else: no envelope validation, no
   events published, no outbox.
4. Reads: the service's HTTP in its own process (uvicorn on a free local port), an
   open-loop httpx client at a fixed rate of ``GET /authors/{id}`` for random authors;
   p50/p99 of the response time.

Everything it creates (topics, databases, the server process) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient, InsertOne, ReplaceOne

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts.envelope import Envelope  # noqa: E402
from contracts.events.publications import Work, WorkIngested  # noqa: E402
from contracts.topics import TOPICS, Topic  # noqa: E402
from service_runtime.kafka import delete_topics, ensure_topics  # noqa: E402
from services.profile.app import build_service  # noqa: E402
from services.profile.settings import ProfileSettings  # noqa: E402

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
BATCH = 500


def make_works(n_works: int, n_authors: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(7)
    topics = ["Machine learning", "Computer vision", "Speech", "Robotics", "Databases", "Systems", "Theory"]
    out = []
    for i in range(n_works):
        first = i % n_authors
        other = (first + 1 + rng.randrange(n_authors - 1)) % n_authors
        work = Work(
            work_id=f"bench:w{i}", type="article", year=2000 + i % 25, venue="Bench Journal",
            title=f"Work number {i} on {topics[i % 7].lower()}", abstract="An abstract. " * 20,
            external_ids={"doi": f"10.5555/bench.{i}"}, topics=[topics[i % 7], topics[(i // 7) % 7]],
            authors=[{"author_id": f"bench:a{first}", "display_name": f"Author {first}"},
                     {"author_id": f"bench:a{other}", "display_name": f"Author {other}"}],
        )
        env = Envelope.wrap(WorkIngested(author_id=f"bench:a{first}", work=work, source="bench"), producer="bench")
        out.append((f"bench:a{first}".encode(), env.to_bytes()))
    return out


async def produce(topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=20, max_batch_size=512 * 1024, acks="all")
    await producer.start()
    try:
        for start in range(0, len(records), 5000):
            futures = [await producer.send(topic, value, key=key) for key, value in records[start:start + 5000]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def committed(group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(o.offset for o in offsets.values() if o.offset > 0)


async def run_ours(settings: ProfileSettings, n_works: int) -> float:
    service = build_service(settings)
    group = f"{settings.consumer_group}.ingest"
    async with service.running():
        started = time.perf_counter()
        while await committed(group) < n_works:
            await asyncio.sleep(0.25)
        elapsed = time.perf_counter() - started
    return elapsed


async def run_baseline(topic: str, database: str, n_works: int) -> float:
    """A bare consumer: json.loads, one bulk read of works and authors, one bulk write of
    each (the same documents the service writes), commit."""
    client = AsyncMongoClient(MONGODB_URI)
    db = client[database]
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, group_id=f"{database}.baseline",
                                enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=BATCH)
    await consumer.start()
    done = 0
    started = time.perf_counter()
    try:
        while done < n_works:
            fetched = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            docs = [json.loads(r.value)["data"]["work"] for records in fetched.values() for r in records]
            if not docs:
                continue
            ids = {a["author_id"] for w in docs for a in w["authors"]}
            stored = {d["_id"] for d in await db.works.find(
                {"_id": {"$in": [w["work_id"] for w in docs]}}, {"author_ids": 1}).to_list()}
            authors = {d["_id"]: d async for d in db.authors.find({"_id": {"$in": list(ids)}})}
            fresh = {}
            for w in docs:
                for a in w["authors"]:
                    doc = authors.get(a["author_id"]) or fresh.setdefault(
                        a["author_id"], {"_id": a["author_id"], "display_name": a["display_name"], "works": [], "revision": 0})
                    doc["works"].append({"id": w["work_id"], "y": w["year"], "t": w["topics"],
                                         "co": [{"id": c["author_id"], "n": c["display_name"]} for c in w["authors"]]})
                    doc["revision"] += 1
            ops = [InsertOne(d) for d in fresh.values()] + [
                ReplaceOne({"_id": i}, d) for i, d in authors.items() if i not in fresh]
            for start in range(0, len(ops), 50):  # the service's chunk size (store._WRITE_CHUNK)
                await db.authors.bulk_write(ops[start:start + 50], ordered=False)
            await db.works.bulk_write([ReplaceOne({"_id": w["work_id"]}, {"work": w}, upsert=True)
                                       if w["work_id"] in stored else InsertOne({"_id": w["work_id"], "work": w})
                                       for w in docs], ordered=False)
            await consumer.commit()
            done += len(docs)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure_reads(settings: ProfileSettings, n_authors: int, rate: float, seconds: float) -> list[float]:
    port = free_port()
    env = {**os.environ, "HTTP_PORT": str(port), "TOPIC_PREFIX": settings.topic_prefix,
           "MONGODB_DATABASE": settings.database_name, "CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
           "LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "bzpeer_cli.main", "run", "profile"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                     limits=httpx.Limits(max_connections=1000)) as client:
            for _ in range(240):
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            rng = random.Random(11)
            for _ in range(50):  # warm up connections and caches
                await client.get(f"/authors/bench:a{rng.randrange(n_authors)}")
            latencies: list[float] = []

            async def one(author: str) -> None:
                t0 = time.perf_counter()
                response = await client.get(f"/authors/{author}")
                latencies.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, response.text

            tasks = []
            start = time.perf_counter()
            for i in range(int(rate * seconds)):  # open loop: requests leave on schedule
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(f"bench:a{rng.randrange(n_authors)}")))
            await asyncio.gather(*tasks)
            return latencies
    finally:
        server.terminate()
        server.wait(timeout=30)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--works", type=int, default=100_000)
    parser.add_argument("--authors", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0, help="read requests per second")
    parser.add_argument("--read-seconds", type=float, default=15.0)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    prefix = f"bench{run}."
    settings = ProfileSettings(topic_prefix=prefix, mongodb_database=f"bench{run}_profile",
                               consumer_group_prefix=f"bench{run}", log_level="WARNING")
    baseline_db = f"bench{run}_baseline"
    topic = prefix + Topic.PUBLICATIONS_INGESTED
    await ensure_topics(KAFKA, prefix=prefix)
    try:
        print(f"generating and publishing {args.works:,} works for {args.authors:,} authors ...", flush=True)
        await produce(topic, make_works(args.works, args.authors))

        ours_s = await run_ours(settings, args.works)
        ours = args.works / ours_s
        print(f"profile service : {ours:9,.0f} works/s  ({ours_s:.1f} s)", flush=True)
        base_s = await run_baseline(topic, baseline_db, args.works)
        base = args.works / base_s
        print(f"bare baseline   : {base:9,.0f} works/s  ({base_s:.1f} s)", flush=True)
        print(f"ratio           : {ours / base:9.0%}  (target >= 50%)", flush=True)

        latencies = await measure_reads(settings, args.authors, args.rate, args.read_seconds)
        print(f"GET /authors/{{id}} at {args.rate:.0f} req/s for {args.read_seconds:.0f} s ({len(latencies)} requests): "
              f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 99):.1f} ms (target p99 < 20 ms)")
    finally:
        await delete_topics(KAFKA, [prefix + t for t in TOPICS])
        client = AsyncMongoClient(MONGODB_URI)
        for db in (settings.database_name, baseline_db):
            await client.drop_database(db)
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
