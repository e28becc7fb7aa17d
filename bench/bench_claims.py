"""Benchmark: the claims service under racing claims, against a bare consumer, same run.

2,000 author records (projected first, not timed), then 10,000 claims through the real
broker and store. 90% of the records get one claim with automatic evidence; 2,000 racing
duplicates (20%) are more automatic claims on those records by other users; the rest ask
for review, from a pool of users that often hold more open claims than the limit (the
last 10% of the records only ever get such claims, so they stay open at the end).

* service: the claims service (decode, rules, guarded user slots, revision-guarded bulk
  writes with each claim's events in its outbox, publish of every event, outbox emptied,
  commit after success);
* baseline: a bare aiokafka consumer reading the same commands from a topic of its own
  (produced in its timed window, as for the service) and writing, per batch, the same
  documents the service ended with: each claim's document inserted, each touched
  record's and user's document replaced by _id (PyMongo, bulk). No rules, no events, no
  guards.

Prints claims/s for both and their ratio, then verifies in the same run: no record with
two owners (store and published ClaimApproved events); each winner is the first automatic
claim in partition order; no user over the limits (store) and the slots match the claims;
every claim has exactly one ClaimSubmitted and one current outcome, the same in the store
and in its last event. Needs Kafka and FerretDB (make infra-up). Figures are noisy on a
shared 2-core machine.

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
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient, ReplaceOne

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts import Envelope
from contracts.events.claims import ClaimRequested, Evidence
from contracts.events.common import Affiliation
from contracts.events.profile import AuthorRegistered, AuthorState
from contracts.topics import TOPICS, Topic
from service_runtime.kafka import delete_topics, ensure_topics
from service_runtime.offsets import partitions_of
from service_runtime.topic_reader import iter_topic
from services.claims.app import build_service
from services.claims.settings import ClaimsSettings

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
AUTO = Evidence(email="someone@cs.example.edu", email_verified=True)
REVIEW = Evidence(statement="please review my publication list")
MAX_OPEN, MAX_APPROVED = 3, 1
OUTCOME = {
    "ClaimApproved": "approved",
    "ClaimRejected": "rejected",
    "ClaimNeedsReview": "needs_review",
    "ClaimWithdrawn": "withdrawn",
    "ClaimRevoked": "revoked",
}


def workload(
    n_authors: int, n_claims: int, seed: int = 7
) -> tuple[list[Envelope], list[Envelope], dict[str, str | None]]:
    """Author records, claim commands in send order, and the expected winner per author."""
    rng = random.Random(seed)
    authors = [f"bench-author-{i}" for i in range(n_authors)]
    registered = [
        Envelope.wrap(
            AuthorRegistered(
                author_id=a,
                author=AuthorState(
                    author_id=a,
                    display_name=a,
                    affiliation=Affiliation(name="Example U", domains=["example.edu"]),
                    works_count=1,
                    record_verification_level="L1",
                    revision=1,
                ),
            ),
            producer="profile",
        )
        for a in authors
    ]
    claimable = authors[: n_authors - n_authors // 10]  # the last 10% only get claims for review
    racing = n_claims // 5
    per_author: dict[str, list[tuple[str, Evidence]]] = {a: [] for a in authors}
    for a in claimable:
        per_author[a].append(("auto", AUTO))
    for _ in range(racing):
        per_author[claimable[rng.randrange(len(claimable))]].append(("auto", AUTO))
    for i in range(n_claims - racing - len(claimable)):
        per_author[authors[i % n_authors]].append(("review", REVIEW))
    for claims in per_author.values():
        rng.shuffle(claims)
    # Interleave the authors at random, each author's claims in its own order (the partition order).
    turns = [a for a, claims in per_author.items() for _ in claims]
    rng.shuffle(turns)
    cursors = dict.fromkeys(authors, 0)
    reviewers = max(1, (n_claims - racing - len(claimable)) // 4)  # ~4 claims for review per user
    commands, winners = [], dict.fromkeys(authors)
    for i, a in enumerate(turns):
        kind, ev = per_author[a][cursors[a]]
        cursors[a] += 1
        claim_id = f"bench-claim-{i}"
        if kind == "auto":
            user = f"bench-user-{i}"  # one automatic claim per user: the winner is the first in partition order
            if winners[a] is None:
                winners[a] = claim_id
        else:
            user = f"bench-reviewee-{rng.randrange(reviewers)}"
        commands.append(
            Envelope.wrap(ClaimRequested(claim_id=claim_id, author_id=a, user_id=user, evidence=ev), producer="webapp")
        )
    return registered, commands, winners


async def produce(topic: str, envelopes: list[Envelope]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, e.to_bytes(), key=e.data["author_id"].encode()) for e in envelopes]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class SubmittedCounter:
    """Follows claims.events from the start and counts the claims with a ClaimSubmitted
    (one consumer, read incrementally: polling the whole topic would load the machine)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.claims: set[str] = set()
        self.consumer: AIOKafkaConsumer | None = None

    async def count(self) -> int:
        if self.consumer is None:
            tps = await partitions_of(KAFKA, [self.topic])
            self.consumer = AIOKafkaConsumer(
                bootstrap_servers=KAFKA, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
            )
            await self.consumer.start()
            self.consumer.assign(tps)
            await self.consumer.seek_to_beginning(*tps)
        fetched = await self.consumer.getmany(timeout_ms=200, max_records=5000)
        for records in fetched.values():
            for r in records:
                if b'"event_type":"ClaimSubmitted"' in r.value:
                    self.claims.add(json.loads(r.value)["data"]["claim_id"])
        return len(self.claims)

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


async def wait_for(probe, target: int, timeout: float = 1800.0) -> None:
    deadline = time.perf_counter() + timeout
    last = 0.0
    while (n := await probe()) < target:
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out at {n}/{target}")
        if os.environ.get("BENCH_VERBOSE") and time.perf_counter() - last > 5:
            last = time.perf_counter()
            print(f"  {n}/{target}", flush=True)
        await asyncio.sleep(0.5)


async def run_service(prefix: str, database: str, registered: list[Envelope], commands: list[Envelope]) -> float:
    settings = ClaimsSettings(
        environment="test",
        kafka_bootstrap_servers=KAFKA,
        mongodb_uri=MONGODB_URI,
        mongodb_database=database,
        topic_prefix=prefix,
        consumer_group_prefix=prefix.rstrip("."),
        max_open_claims_per_user=MAX_OPEN,
        max_approved_claims_per_user=MAX_APPROVED,
        log_level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    )
    service = build_service(settings)
    submitted = SubmittedCounter(prefix + Topic.CLAIMS_EVENTS)
    try:
        async with service.running():
            await produce(prefix + Topic.PROFILE_EVENTS, registered)
            await wait_for(lambda: service.db.authors.count_documents({}), len(registered))
            started = time.perf_counter()
            await produce(prefix + Topic.WEBAPP_CLAIMS, commands)
            # A claim's events are published after it is stored: the timing ends when every
            # claim's ClaimSubmitted is out.
            await wait_for(submitted.count, len(commands))
            return time.perf_counter() - started
    finally:
        await submitted.close()


async def run_baseline(
    topic: str, database: str, service_database: str, registered: list[Envelope], commands: list[Envelope]
) -> float:
    """A bare consumer writing, batch by batch, the documents the service ended with."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI, tz_aware=True)
    source, db = client[service_database], client[database]
    claims = {d["_id"]: d async for d in source.claims.find({})}
    authors = {d["_id"]: d async for d in source.authors.find({})}
    users = {d["_id"]: d async for d in source.users.find({})}
    # The records are there before the claims, as they were for the service.
    await db.authors.insert_many([{**authors[e.data["author_id"]], "claim": None} for e in registered])
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA,
        group_id=f"{topic}.baseline",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=500,
    )
    await consumer.start()
    try:
        started = time.perf_counter()
        await produce(topic, commands)
        done = 0
        while done < len(commands):
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            ids = [json.loads(r.value)["data"]["claim_id"] for records in batches.values() for r in records]
            if not ids:
                continue
            await db.claims.insert_many([claims[i] for i in ids], ordered=False)
            touched = sorted({claims[i]["author_id"] for i in ids})
            await db.authors.bulk_write([ReplaceOne({"_id": a}, authors[a], upsert=True) for a in touched])
            holders = sorted({claims[i]["user_id"] for i in ids} & users.keys())
            if holders:
                await db.users.bulk_write([ReplaceOne({"_id": u}, users[u], upsert=True) for u in holders])
            await consumer.commit()
            done += len(ids)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await client.close()


async def verify(prefix: str, database: str, winners: dict[str, str | None], n_claims: int) -> bool:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI, tz_aware=True)
    try:
        db = client[database]
        claims = {d["_id"]: d async for d in db.claims.find({}, {"status": 1, "author_id": 1, "user_id": 1})}
        authors = {d["_id"]: d async for d in db.authors.find({}, {"claim": 1})}
        users = [d async for d in db.users.find({})]
        leftovers = await db.claims.count_documents({"outbox.0": {"$exists": True}})
    finally:
        await client.close()
    statuses = Counter(c["status"] for c in claims.values())
    problems: dict[str, list] = defaultdict(list)

    # One owner per record, in the store and in the events; the first automatic claim won.
    approved_by_author: dict[str, list[str | None]] = defaultdict(list)
    for cid, c in claims.items():
        if c["status"] == "approved":
            approved_by_author[c["author_id"]].append(cid)
    problems["records whose claim state disagrees with their approved claim"] = []
    problems["records with two owners in the store"] = [a for a, ids in approved_by_author.items() if len(ids) > 1]
    for a, doc in authors.items():
        owner = (doc.get("claim") or {}).get("claim_id") if (doc.get("claim") or {}).get("claimed") else None
        if owner != (approved_by_author.get(a) or [None])[0]:
            problems["records whose claim state disagrees with their approved claim"].append(a)

    # The user limits, and slots that match the claims' statuses.
    per_user: dict[str, Counter] = defaultdict(Counter)
    for c in claims.values():
        per_user[c["user_id"]][c["status"]] += 1
    problems["users over the open limit"] = [
        u for u, n in per_user.items() if n["pending_author"] + n["needs_review"] > MAX_OPEN
    ]
    problems["users over the approved limit"] = [u for u, n in per_user.items() if n["approved"] > MAX_APPROVED]
    held = Counter((kind, cid) for d in users for kind in ("open", "approved") for cid in d[kind])
    expected = Counter(
        [("open", cid) for cid, c in claims.items() if c["status"] in ("pending_author", "needs_review")]
        + [("approved", cid) for cid, c in claims.items() if c["status"] == "approved"]
    )
    problems["slots not matching the claims"] = sorted((held - expected) + (expected - held))

    # Events: one ClaimSubmitted per claim, one current outcome equal to the store's.
    event_types: Counter[str] = Counter()
    seen_ids: set[str] = set()
    duplicates = 0
    submitted: Counter[str] = Counter()
    last: dict[str, str] = {}
    terminal: dict[str, set[str]] = defaultdict(set)
    approved_events: dict[str, set[str]] = defaultdict(set)
    records = []
    async for chunk in iter_topic(KAFKA, prefix + Topic.CLAIMS_EVENTS):
        records.extend(chunk)
    records.sort(key=lambda r: (r.partition, r.offset))  # claims of a record share its partition
    for r in records:
        e = json.loads(r.value)
        if e["event_id"] in seen_ids:
            duplicates += 1  # at-least-once: the same event again, under its id
            continue
        seen_ids.add(e["event_id"])
        kind, data = e["event_type"], e["data"]
        event_types[kind] += 1
        cid = data.get("claim_id")
        if kind == "ClaimSubmitted":
            submitted[cid] += 1
            last[cid] = data["status"]
        elif kind in OUTCOME:
            last[cid] = OUTCOME[kind]
            if kind in ("ClaimApproved", "ClaimRejected"):
                terminal[cid].add(kind)
        if kind == "ClaimApproved":
            approved_events[data["author_id"]].add(cid)
    problems["records with two owners in the events"] = [a for a, ids in approved_events.items() if len(ids) > 1]
    problems["records whose winner is not the first automatic claim"] = [
        a
        for a, c in winners.items()
        if (approved_by_author.get(a) or [None])[0] != c or approved_events.get(a, set()) != ({c} if c else set())
    ]
    problems["claims without exactly one ClaimSubmitted"] = [cid for cid in claims if submitted[cid] != 1]
    problems["claims both approved and rejected"] = [cid for cid, kinds in terminal.items() if len(kinds) > 1]
    problems["claims whose last event disagrees with the store"] = [
        cid for cid, c in claims.items() if last.get(cid) != c["status"]
    ]
    problems["claims missing from the store"] = [None] * (n_claims - len(claims))
    problems["claims whose outbox was left unpublished"] = [None] * leftovers

    print(f"claim statuses in the store: {dict(statuses)}")
    print(f"events published: {dict(event_types)} (+{duplicates} published twice under the same id)")
    print(
        f"users: {len(per_user)}, most open claims held by one user: "
        f"{max((n['pending_author'] + n['needs_review'] for n in per_user.values()), default=0)} (limit {MAX_OPEN})"
    )
    ok = True
    for what, found in problems.items():
        print(f"  {what}: {len(found)}" + (f" e.g. {found[:5]}" if found else ""))
        ok = ok and not found
    return ok


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--authors", type=int, default=2000)
    parser.add_argument("--claims", type=int, default=10000)
    args = parser.parse_args()
    registered, commands, winners = workload(args.authors, args.claims)
    run = uuid.uuid4().hex[:8]
    prefix, database = f"bench{run}.", f"bench{run}_claims"
    base_prefix, base_database = f"bench{run}base.", f"bench{run}_baseline"
    await ensure_topics(KAFKA, prefix=prefix)
    await ensure_topics(KAFKA, prefix=base_prefix)
    try:
        service_s = await run_service(prefix, database, registered, commands)
        ok = await verify(prefix, database, winners, len(commands))
        baseline_s = await run_baseline(
            base_prefix + Topic.WEBAPP_CLAIMS, base_database, database, registered, commands
        )
    finally:
        await delete_topics(KAFKA, [p + t for t in TOPICS for p in (prefix, base_prefix)])
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI)
        await client.drop_database(database)
        await client.drop_database(base_database)
        await client.close()
    n = len(commands)
    print(f"claims service: {n} claims in {service_s:.1f} s = {n / service_s:,.0f} claims/s")
    print(
        f"bare baseline : {n} claims in {baseline_s:.1f} s = {n / baseline_s:,.0f} claims/s "
        "(aiokafka + PyMongo, the same documents)"
    )
    print(f"ratio service/baseline: {baseline_s / service_s:.2f} (throughput)")
    print("invariants: OK" if ok else "invariants: VIOLATED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
