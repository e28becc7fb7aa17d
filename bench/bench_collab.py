"""Benchmark: the collab service against a bare consumer, same run, on its two paths.

* facts: ``--facts`` profile.events records (each record's state at a rising revision)
  folded into the records' documents; the volume path (every work of every author
  passes through it);
* commands: ``--records`` claimed records open to collaboration (folded first, not timed),
  then ``--commands`` commands on webapp.collab: invitations from a pool of senders (about
  three each, drawn at random: some go over the limit of 5 pending per sender, some ask a
  record twice), then an answer to most of them (accept or decline) and a message on most
  accepted ones.

service: the collab service (decode, rules, sender slots taken by an atomic conditional
write, revision-guarded bulk writes with the outbox, publish of every event and
notification, outbox cleared, commit after success). baseline: a bare aiokafka consumer
reading the same records from a topic of its own (produced in its timed window, as for the
service) and writing, per batch, the same plain documents the service ended with (the
records' documents upserted by _id; each invitation's final document replaced by _id; the
senders' documents replaced). No rules, no events.

Prints records/s for both and their ratio per path, then verifies in the same run: one
decision event per command; no sender over the limit, and the senders' slots equal their
pending invitations; one notification per invitation sent and per answer. Needs Kafka and
FerretDB (make infra-up). Figures are noisy on a shared 2-core machine.

    .local/venv/bin/python bench/bench_collab.py [--facts 5000] [--records 300] [--commands 3000]
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
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient, ReplaceOne

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts import Envelope
from contracts.events.claims import AuthorClaimState, ClaimApproved
from contracts.events.collab import InvitationAnswerRequested, InvitationRequested, MessagePostRequested
from contracts.events.profile import AuthorState, AuthorUpdated
from contracts.topics import TOPICS, Topic
from service_runtime.kafka import delete_topics, ensure_topics
from service_runtime.offsets import partitions_of
from service_runtime.topic_reader import iter_topic
from services.collab.app import build_service
from services.collab.settings import CollabSettings

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
LIMIT = 5


def profile(author: str, revision: int) -> Envelope:
    state = AuthorState(
        author_id=author,
        display_name=f"Researcher {author}",
        open_to_collaborate=True,
        works_count=revision,
        record_verification_level="L1",
        revision=revision,
    )
    return Envelope.wrap(AuthorUpdated(author_id=author, author=state), producer="profile")


def claim(author: str) -> Envelope:
    owner = f"owner-{author}"
    state = AuthorClaimState(claimed=True, owner_user_id=owner, claim_id=f"c-{author}", revision=2)
    return Envelope.wrap(
        ClaimApproved(
            claim_id=f"c-{author}", author_id=author, user_id=owner, author_claim=state, verification_level="L2"
        ),
        producer="claims",
    )


def facts_workload(n_facts: int, n_authors: int) -> list[Envelope]:
    revisions: Counter[str] = Counter()
    out = []
    for i in range(n_facts):
        a = f"bench-fact-{i % n_authors}"
        revisions[a] += 1
        out.append(profile(a, revisions[a]))
    return out


def commands_workload(n_records: int, n_commands: int, seed: int = 7) -> tuple[list[Envelope], list[Envelope]]:
    """Facts of the records (claimed, open), and the commands in send order: invitations,
    then answers and messages that follow them (on the invitation's partition, in order)."""
    rng = random.Random(seed)
    records = [f"bench-rec-{i}" for i in range(n_records)]
    facts = [e for a in records for e in (profile(a, 1), claim(a))]
    n_invites = n_commands // 2
    # ~3 asks per sender on average, drawn at random: some senders go over the limit of 5.
    senders = [f"bench-sender-{i}" for i in range(max(1, n_invites // 3))]
    invites = []
    for i in range(n_invites):
        a = records[rng.randrange(n_records)]
        invites.append(
            InvitationRequested(
                invitation_id=f"bench-inv-{i}", author_id=a, user_id=rng.choice(senders), message="Shall we?"
            )
        )
    follow_ups: list[Any] = []
    for inv in invites:  # answers and messages for invitations the service may have sent (refused ones: refused)
        if len(follow_ups) >= n_commands - n_invites:
            break
        owner = f"owner-{inv.author_id}"
        accept = rng.random() < 0.7
        follow_ups.append(
            InvitationAnswerRequested(
                invitation_id=inv.invitation_id,
                author_id=inv.author_id,
                user_id=owner,
                answer="accept" if accept else "decline",
            )
        )
        if accept and len(follow_ups) < n_commands - n_invites:
            follow_ups.append(
                MessagePostRequested(
                    invitation_id=inv.invitation_id,
                    author_id=inv.author_id,
                    user_id=inv.user_id,
                    message_id=f"m-{inv.invitation_id}",
                    text="Hello, here is my draft.",
                )
            )
    commands = [Envelope.wrap(c, producer="webapp") for c in [*invites, *follow_ups]]
    return facts, commands


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


class CauseCounter:
    """Follows collab.events from the start and counts the distinct inputs decided."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.causes: set[str] = set()
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
                self.causes.add(json.loads(r.value)["causation_id"])
        return len(self.causes)

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


async def wait_for(probe: Any, target: int, timeout: float = 1800.0) -> None:
    deadline = time.perf_counter() + timeout
    while (n := await probe()) < target:
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out at {n}/{target}")
        await asyncio.sleep(0.2)


def settings(prefix: str, database: str) -> CollabSettings:
    return CollabSettings(
        environment="test",
        kafka_bootstrap_servers=KAFKA,
        mongodb_uri=MONGODB_URI,
        mongodb_database=database,
        topic_prefix=prefix,
        consumer_group_prefix=prefix.rstrip("."),
        log_level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    )


async def run_service(prefix: str, database: str, facts: list[Envelope], commands: list[Envelope]) -> float:
    """Seconds the service took for ``commands`` (or, with none, for ``facts``)."""
    service = build_service(settings(prefix, database))
    decided = CauseCounter(prefix + Topic.COLLAB_EVENTS)
    try:
        async with service.running():
            by_topic: dict[str, list[Envelope]] = {}
            for e in facts:
                by_topic.setdefault(
                    Topic.PROFILE_EVENTS if e.producer == "profile" else Topic.CLAIMS_EVENTS, []
                ).append(e)
            latest = {e.data["author_id"]: e.data["author"]["revision"] for e in by_topic[Topic.PROFILE_EVENTS]}

            async def folded() -> int:
                docs = await service.db.authors.find({}, {"profile.revision": 1}).to_list()
                return sum(d.get("profile", {}).get("revision") == latest.get(d["_id"]) for d in docs)

            started = time.perf_counter()
            for topic, envelopes in by_topic.items():
                await produce(prefix + topic, envelopes)
            if not commands:
                await wait_for(folded, len(latest))
                return time.perf_counter() - started
            await wait_for(lambda: service.db.authors.count_documents({"owner.claimed": True}), len(latest))
            started = time.perf_counter()
            await produce(prefix + Topic.WEBAPP_COLLAB, commands)
            # A command's decision is published after it is stored: the timing ends when
            # every command's decision is out.
            await wait_for(decided.count, len(commands))
            elapsed = time.perf_counter() - started
            await wait_for(lambda: _outboxes_empty(service.db), 1)
            return elapsed
    finally:
        await decided.close()


async def _outboxes_empty(db: Any) -> int:
    return int(await db.invitations.count_documents({"outbox.0": {"$exists": True}}) == 0)


async def run_baseline(topic: str, database: str, service_database: str, envelopes: list[Envelope], key: str) -> float:
    """A bare consumer writing, batch by batch, the documents the service ended with."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI, tz_aware=True)
    source, db = client[service_database], client[database]
    finals = {
        name: {d["_id"]: {k: v for k, v in d.items() if k != "outbox"} async for d in source[name].find({})}
        for name in ("authors", "invitations", "senders")
    }
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
        await produce(topic, envelopes)
        done = 0
        while done < len(envelopes):
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            values = [json.loads(r.value)["data"] for records in batches.values() for r in records]
            if not values:
                continue
            if key == "author_id":
                ops = [
                    ReplaceOne({"_id": a}, finals["authors"][a], upsert=True) for a in sorted({v[key] for v in values})
                ]
                await db.authors.bulk_write(ops, ordered=False)
            else:
                ids = sorted({v[key] for v in values})
                await db.invitations.bulk_write(
                    [ReplaceOne({"_id": i}, finals["invitations"][i], upsert=True) for i in ids], ordered=False
                )
                senders = sorted({finals["invitations"][i]["sender_id"] for i in ids} & finals["senders"].keys())
                if senders:
                    await db.senders.bulk_write(
                        [ReplaceOne({"_id": s}, finals["senders"][s], upsert=True) for s in senders], ordered=False
                    )
            await consumer.commit()
            done += len(values)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await client.close()


async def verify(prefix: str, database: str, n_commands: int) -> bool:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI, tz_aware=True)
    try:
        db = client[database]
        invitations = await db.invitations.find({}, {"status": 1, "sender_id": 1}).to_list()
        senders = {d["_id"]: d["pending"] for d in await db.senders.find({}).to_list()}
    finally:
        await client.close()
    pending: dict[str, list[str]] = {}
    for d in invitations:
        if d["status"] == "pending":
            pending.setdefault(d["sender_id"], []).append(d["_id"])
    problems: dict[str, Any] = {
        "senders over the limit": [s for s, ids in pending.items() if len(ids) > LIMIT],
        "slots not matching the pending invitations": senders != {s: sorted(ids) for s, ids in pending.items()},
    }
    events: list[dict[str, Any]] = []
    async for chunk in iter_topic(KAFKA, prefix + Topic.COLLAB_EVENTS):
        events += [json.loads(r.value) for r in chunk]
    notes: list[dict[str, Any]] = []
    async for chunk in iter_topic(KAFKA, prefix + Topic.NOTIFICATIONS_EVENTS):
        notes += [json.loads(r.value) for r in chunk]
    unique = {e["event_id"]: e for e in events}
    causes = Counter(e["causation_id"] for e in unique.values())
    problems["commands without exactly one decision"] = n_commands - sum(1 for n in causes.values() if n == 1)
    types = Counter(e["event_type"] for e in unique.values())
    expected_notes = types["InvitationSent"] + types["InvitationAccepted"] + types["InvitationDeclined"]
    problems["notifications not one per invitation sent and answer"] = (
        len({n["data"]["notification_id"] for n in notes}) != expected_notes
    )
    print(f"  decisions: {dict(sorted(types.items()))}; notifications: {len(notes)}")
    bad = {k: v for k, v in problems.items() if v}
    print("  verified: " + ("ok" if not bad else f"PROBLEMS {bad}"))
    return not bad


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--facts", type=int, default=5000)
    parser.add_argument("--fact-authors", type=int, default=500)
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--commands", type=int, default=3000)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    prefixes = [f"bench-collab-{run}-{n}." for n in range(4)]
    databases = [f"bench_collab_{run}_{n}" for n in range(4)]
    for prefix in prefixes:
        await ensure_topics(KAFKA, prefix=prefix)
    ok = True
    try:
        facts = facts_workload(args.facts, args.fact_authors)
        s_facts = await run_service(prefixes[0], databases[0], facts, [])
        b_facts = await run_baseline(prefixes[1] + Topic.PROFILE_EVENTS, databases[1], databases[0], facts, "author_id")
        print(
            f"facts: service {len(facts) / s_facts:,.0f}/s, bare {len(facts) / b_facts:,.0f}/s, "
            f"ratio {b_facts / s_facts:.2f} ({len(facts)} profile events over {args.fact_authors} records)"
        )
        record_facts, commands = commands_workload(args.records, args.commands)
        s_cmds = await run_service(prefixes[2], databases[2], record_facts, commands)
        b_cmds = await run_baseline(
            prefixes[3] + Topic.WEBAPP_COLLAB, databases[3], databases[2], commands, "invitation_id"
        )
        print(
            f"commands: service {len(commands) / s_cmds:,.0f}/s, bare {len(commands) / b_cmds:,.0f}/s, "
            f"ratio {b_cmds / s_cmds:.2f} ({len(commands)} commands, {args.records} records)"
        )
        ok = await verify(prefixes[2], databases[2], len(commands))
    finally:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI)
        for database in databases:
            await client.drop_database(database)
        await client.close()
        for prefix in prefixes:
            await delete_topics(KAFKA, [prefix + t for t in TOPICS])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
