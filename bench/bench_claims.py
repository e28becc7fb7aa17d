"""Benchmark: the claims service under racing claims, against a bare consumer, same run.

2,000 author records (projected first, not timed), then 10,000 claims through the real
broker and store: per author one claim with automatic evidence and three for review, plus
2,000 racing duplicates (20%): other users claiming an author with automatic evidence too.
* service: the claims service (decode, rules, atomic user slots, version-guarded bulk
  writes with outbox, publish of every event, commit after success);
* baseline: a bare aiokafka consumer reading the same 10,000 commands and writing one
  document per command with insert_many (no rules, no events).
Prints claims/s for both and their ratio, then checks in the same run that no author ended
with two owners: approved claims per author counted in the store AND in the published
ClaimApproved events, and that each winner is the first automatic claim in partition order.
Needs Kafka and FerretDB (make infra-up). Figures are noisy on a shared 2-core machine.

    .local/venv/bin/python bench/bench_claims.py [--authors 2000] [--claims 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts import Envelope  # noqa: E402
from contracts.events.claims import ClaimRequested, Evidence  # noqa: E402
from contracts.events.common import Affiliation  # noqa: E402
from contracts.events.profile import AuthorRegistered, AuthorState  # noqa: E402
from contracts.topics import TOPICS, Topic  # noqa: E402
from service_runtime.kafka import delete_topics, ensure_topics  # noqa: E402
from service_runtime.topic_reader import iter_topic  # noqa: E402
from services.claims.app import build_service  # noqa: E402
from services.claims.settings import ClaimsSettings  # noqa: E402

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
AUTO = Evidence(email="someone@cs.example.edu", email_verified=True)
REVIEW = Evidence(statement="please review my publication list")


def workload(n_authors: int, n_claims: int, seed: int = 7) -> tuple[list[Envelope], list[Envelope], dict[str, str]]:
    """Author records, claim commands in send order, and the expected winner per author."""
    rng = random.Random(seed)
    authors = [f"bench-author-{i}" for i in range(n_authors)]
    registered = [
        Envelope.wrap(AuthorRegistered(author_id=a, author=AuthorState(
            author_id=a, display_name=a, affiliation=Affiliation(name="Example U", domains=["example.edu"]),
            works_count=1, record_verification_level="L1", revision=1)), producer="profile")
        for a in authors
    ]
    racing = n_claims // 5
    per_author: dict[str, list[tuple[str, Evidence]]] = {a: [("auto", AUTO)] for a in authors}
    for _ in range(racing):
        per_author[authors[rng.randrange(n_authors)]].append(("auto", AUTO))
    for i in range(n_claims - racing - n_authors):
        per_author[authors[i % n_authors]].append(("review", REVIEW))
    for claims in per_author.values():
        rng.shuffle(claims)
    # Interleave the authors at random, each author's claims in its own order (the partition order).
    turns = [a for a, claims in per_author.items() for _ in claims]
    rng.shuffle(turns)
    cursors = dict.fromkeys(authors, 0)
    ordered: list[tuple[str, str, Evidence]] = []
    for a in turns:
        kind, ev = per_author[a][cursors[a]]
        cursors[a] += 1
        ordered.append((a, kind, ev))
    commands, winners = [], {}
    for i, (a, kind, ev) in enumerate(ordered):
        claim_id = f"bench-claim-{i}"
        if kind == "auto" and a not in winners:
            winners[a] = claim_id
        commands.append(Envelope.wrap(
            ClaimRequested(claim_id=claim_id, author_id=a, user_id=f"bench-user-{i}", evidence=ev), producer="webapp"))
    return registered, commands, winners


async def produce(topic: str, envelopes: list[Envelope]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, e.to_bytes(), key=e.data["author_id"].encode()) for e in envelopes]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_for(probe, target: int, timeout: float = 900.0) -> None:
    deadline = time.perf_counter() + timeout
    while (n := await probe()) < target:
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out at {n}/{target}")
        if os.environ.get("BENCH_VERBOSE"):
            print(f"  {n}/{target}", flush=True)
        await asyncio.sleep(0.5)


async def run_service(prefix: str, database: str, registered: list[Envelope], commands: list[Envelope]) -> float:
    settings = ClaimsSettings(environment="test", kafka_bootstrap_servers=KAFKA, mongodb_uri=MONGODB_URI,
                              mongodb_database=database, topic_prefix=prefix, consumer_group_prefix=prefix.rstrip("."),
                              log_level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    service = build_service(settings)
    async with service.running():
        await produce(prefix + Topic.PROFILE_EVENTS, registered)
        await wait_for(lambda: service.db.authors.count_documents({}), len(registered))
        started = time.perf_counter()
        await produce(prefix + Topic.WEBAPP_CLAIMS, commands)
        await wait_for(lambda: service.db.claims.count_documents({}), len(commands))
        # Every claim is stored once decided; the timing ends when its events are out too.
        await wait_for(lambda: submitted_events(prefix), len(commands))
        return time.perf_counter() - started


async def submitted_events(prefix: str) -> int:
    n = 0
    async for chunk in iter_topic(KAFKA, prefix + Topic.CLAIMS_EVENTS):
        n += sum(b'"event_type":"ClaimSubmitted"' in r.value for r in chunk)
    return n


async def run_baseline(prefix: str, database: str, n: int) -> float:
    """A bare consumer over the same commands: decode, one document per command, bulk insert."""
    client = AsyncMongoClient(MONGODB_URI)
    collection = client[database].baseline
    consumer = AIOKafkaConsumer(prefix + Topic.WEBAPP_CLAIMS, bootstrap_servers=KAFKA, group_id=f"{prefix}baseline",
                                auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=500)
    started = time.perf_counter()
    await consumer.start()
    done = 0
    try:
        while done < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            docs = [
                {"_id": (d := json.loads(r.value)["data"])["claim_id"], "author_id": d["author_id"], "user_id": d["user_id"],
                 "status": "received"}
                for records in batches.values() for r in records
            ]
            if docs:
                await collection.insert_many(docs, ordered=False)
                await consumer.commit()
                done += len(docs)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await client.close()


async def verify(prefix: str, database: str, winners: dict[str, str], n_claims: int) -> bool:
    client = AsyncMongoClient(MONGODB_URI)
    try:
        db = client[database]
        store_counts = Counter()
        async for row in await db.claims.aggregate([{"$match": {"status": "approved"}},
                                                      {"$group": {"_id": "$author_id", "n": {"$sum": 1}}}]):
            store_counts[row["_id"]] = row["n"]
        store_winners = {d["_id"]: d["claim"]["claim_id"] async for d in db.authors.find({"claim.claimed": True})}
        statuses = Counter([d["status"] async for d in db.claims.find({}, {"status": 1})])
    finally:
        await client.close()
    approved_events: dict[str, set[str]] = {}
    event_types: Counter[str] = Counter()
    async for chunk in iter_topic(KAFKA, prefix + Topic.CLAIMS_EVENTS):
        for r in chunk:
            e = json.loads(r.value)
            event_types[e["event_type"]] += 1
            if e["event_type"] == "ClaimApproved":
                approved_events.setdefault(e["data"]["author_id"], set()).add(e["data"]["claim_id"])
    two_in_store = [a for a, n in store_counts.items() if n > 1]
    two_in_events = [a for a, ids in approved_events.items() if len(ids) > 1]
    wrong_winner = [a for a, c in winners.items() if store_winners.get(a) != c or approved_events.get(a) != {c}]
    print(f"claim statuses in the store: {dict(statuses)}")
    print(f"events published: {dict(event_types)}")
    print(f"authors with two owners: store {len(two_in_store)}, events {len(two_in_events)}; "
          f"authors whose winner is not the first automatic claim in partition order: {len(wrong_winner)}")
    return not two_in_store and not two_in_events and not wrong_winner and sum(statuses.values()) == n_claims


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--authors", type=int, default=2000)
    parser.add_argument("--claims", type=int, default=10000)
    args = parser.parse_args()
    registered, commands, winners = workload(args.authors, args.claims)
    run = uuid.uuid4().hex[:8]
    prefix, database = f"bench{run}.", f"bench{run}_claims"
    await ensure_topics(KAFKA, prefix=prefix)
    try:
        service_s = await run_service(prefix, database, registered, commands)
        baseline_s = await run_baseline(prefix, database, len(commands))
        ok = await verify(prefix, database, winners, len(commands))
    finally:
        await delete_topics(KAFKA, [prefix + t for t in TOPICS])
        client = AsyncMongoClient(MONGODB_URI)
        await client.drop_database(database)
        await client.close()
    n = len(commands)
    print(f"claims service: {n} claims in {service_s:.1f} s = {n / service_s:,.0f} claims/s")
    print(f"bare baseline : {n} commands in {baseline_s:.1f} s = {n / baseline_s:,.0f} commands/s")
    print(f"ratio service/baseline: {baseline_s / service_s:.2f} (throughput)")
    print("invariants: OK" if ok else "invariants: VIOLATED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
