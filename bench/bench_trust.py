"""Trust service throughput through the real broker and store, against a bare baseline.

Warm-up (not timed): every author registered and scored once. Timed: N signal events
(profile revisions with new works, follower counts, claims, plus redeliveries and stale
states) over the same authors, consumed by the real trust service until its consumer
group has no lag, no author is dirty or has an event left in its outbox, and every
published change is in the history. Baseline, same run, same events: a bare aiokafka
consumer doing the store writes the service's design needs, without its contracts,
coalescing, guards, leases or outbox: per batch one find by ids and one upsert per author
whose revision moved (its sources' states as plain subdocuments and a dirty mark), then
one score write per touched author (the score with its breakdown and inputs as a plain
subdocument, dirty cleared), one published event per author whose score changed and one
insert of their history entries (the service's plain shape), into collections with the
secondary indexes the service declares (its store adapter's, and the outbox's), unless
``--bare-without-indexes``.

It checks that the TrustScoreChanged on trust.events from the timed phase (read from the
topic, not from the service's counters) are exactly one per author whose score really
changed, the latter computed with the pure scoring module from each author's final
signals as the generator made them.

    python bench/bench_trust.py                 # 200,000 events over 20,000 authors
    python bench/bench_trust.py --quick         # 20,000 events over 2,000 authors

``--paced RATE`` measures latency instead: after the same warm-up, the service runs live
while events arrive at RATE per second for ``--seconds``: new works of registered
authors, and every tenth a probe, an author registered for the first time (so its first
score is certain to be published). It prints the latency from each probe's record on
profile.events to its TrustScoreChanged on trust.events (both record timestamps, one
clock), which is what trust adds to "a work's arrival to its trust score on the page";
the coalescing settings come from the environment (``RECOMPUTE_WINDOW_MS``,
``RECOMPUTE_MAX_DELAY_MS``), so their cost can be compared: recomputations and events
published per second of input.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import AsyncMongoClient, UpdateOne

from contracts.envelope import Envelope
from contracts.events.claims import AuthorClaimState, ClaimApproved
from contracts.events.follows import FollowerCountChanged
from contracts.events.profile import AuthorRegistered, AuthorState, TopicCount, WorkAdded, WorkSummary
from contracts.topics import TOPICS, Topic
from service_runtime.kafka import delete_topics, ensure_topics
from service_runtime.store import Client
from service_runtime.topic_reader import read_topic
from services.trust import scoring, signals
from services.trust.app import build_service
from services.trust.settings import TrustSettings
from services.trust.store import AUTHORS, HISTORY, TrustStore

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
INPUTS = (Topic.PROFILE_EVENTS, Topic.CLAIMS_EVENTS, Topic.FOLLOWS_EVENTS)
BASE_YEARS = {"2020": 4, "2022": 2}


def state(author_id: str, revision: int, new_works: int) -> AuthorState:
    years = dict(BASE_YEARS)
    if new_works:
        years["2024"] = new_works
    return AuthorState(
        author_id=author_id,
        display_name=f"Author {author_id}",
        works_count=sum(years.values()),
        works_by_year=years,
        topics=[TopicCount(name="t", count=1)],
        close_collaborators=[],
        record_verification_level="L1",
        revision=revision,
    )


def signals_of(new_works: int, claimed: bool, followers: int) -> scoring.Signals:
    """What the final score is computed from, independently of the service's projection."""
    return scoring.Signals(
        works_count=6 + new_works,
        recent_works=2 + new_works,
        topics=1,
        close_collaborators=0,
        verification_level="L2" if claimed else "L1",
        claimed=claimed,
        followers=followers,
    )


def generate(authors: int, per_author: int) -> tuple[list[Envelope], list[Envelope], set[str]]:
    """Warm-up registrations, the timed events (each author's contiguous, as a burst), and
    the authors whose score must change. Every fifth author only gets follower counts of 0
    and redeliveries, which change no score."""
    warmup, timed, expected = [], [], set()
    for i in range(authors):
        a = f"bench-{i:06d}"
        registration = Envelope.wrap(AuthorRegistered(author_id=a, author=state(a, 1, 0)), producer="bench")
        warmup.append(registration)
        events = []
        if i % 5 == 0:
            events = [
                Envelope.wrap(FollowerCountChanged(author_id=a, count=0, revision=r), producer="bench")
                for r in range(1, per_author)
            ] + [registration]
            final = signals_of(0, False, 0)
        else:
            works = max(1, per_author - 4)
            events += [
                Envelope.wrap(
                    WorkAdded(
                        author_id=a,
                        author=state(a, r + 1, r),
                        work=WorkSummary(work_id=f"{a}-w{r}", type="preprint", year=2024, title="t"),
                    ),
                    producer="bench",
                )
                for r in range(1, works + 1)
            ]
            events.append(Envelope.wrap(FollowerCountChanged(author_id=a, count=i % 40, revision=2), producer="bench"))
            events.append(
                Envelope.wrap(FollowerCountChanged(author_id=a, count=999, revision=1), producer="bench")
            )  # stale
            claimed = i % 3 == 0
            if claimed:
                c = AuthorClaimState(
                    claimed=True, owner_user_id=f"u{i}", claim_id=f"k{i}", verification_level="L2", revision=1
                )
                events.append(
                    Envelope.wrap(
                        ClaimApproved(
                            claim_id=f"k{i}", author_id=a, user_id=f"u{i}", author_claim=c, verification_level="L2"
                        ),
                        producer="bench",
                    )
                )
            else:
                events.append(events[0])  # a redelivery
            events.append(events[1] if works > 1 else events[0])  # an older profile state, late
            final = signals_of(works, claimed, i % 40)
        timed += events[:per_author]
        if scoring.compute(final).score != scoring.compute(signals_of(0, False, 0)).score:
            expected.add(a)
    return warmup, timed, expected


def topic_of(envelope: Envelope) -> str:
    return {
        "AuthorRegistered": Topic.PROFILE_EVENTS,
        "WorkAdded": Topic.PROFILE_EVENTS,
        "FollowerCountChanged": Topic.FOLLOWS_EVENTS,
        "ClaimApproved": Topic.CLAIMS_EVENTS,
    }[envelope.event_type]


async def produce(prefix: str, envelopes: list[Envelope]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        for start in range(0, len(envelopes), 20_000):
            futures = [
                await producer.send(prefix + topic_of(e), e.to_bytes(), key=e.data["author_id"].encode())
                for e in envelopes[start : start + 20_000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def end_offsets(prefix: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA)
    await consumer.start()
    try:
        tps = [TopicPartition(prefix + t, p) for t in INPUTS for p in range(TOPICS[t].partitions)]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def group_lag(group: str, ends: dict[TopicPartition, int]) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(end - max(committed[tp].offset, 0) if tp in committed else end for tp, end in ends.items())


async def wait_scored(service, authors: int) -> None:
    store = service.trust_store
    while (
        (n := await store.count_scored()) < authors
        or await store.count_dirty()
        or await store.with_pending_events()
        or await history_lag(service)
    ):
        if os.environ.get("BENCH_DEBUG"):
            print(
                "scored",
                n,
                "dirty",
                await store.count_dirty(),
                "docs",
                await store.authors.count_documents({}),
                flush=True,
            )
        await asyncio.sleep(0.5)


class Progress:
    """Lag of consumer groups, from one admin client and one consumer kept open (so that
    watching the service is cheap and its end is seen within a poll)."""

    def __init__(self) -> None:
        self.admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA)

    async def __aenter__(self) -> Progress:
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def lag(self, group: str, ends: dict[TopicPartition, int]) -> int:
        committed = await self.admin.list_consumer_group_offsets(group)
        return sum(end - max(committed[tp].offset, 0) if tp in committed else end for tp, end in ends.items())

    async def ends(self, topic: str) -> dict[TopicPartition, int]:
        tps = [TopicPartition(topic, p) for p in range(TOPICS[Topic.TRUST_EVENTS].partitions)]
        ends: dict[TopicPartition, int] = await self.consumer.end_offsets(tps)
        return ends


async def run_ours(settings: TrustSettings, ends: dict[TopicPartition, int]) -> tuple[float, float, int, int]:
    """Seconds from the service's start until it is done, seconds until its consumer first
    committed (joining the consumer group takes a while: the baseline, assigned its
    partitions by hand, does not), recomputations, events published."""
    service = build_service(settings)
    history = f"{settings.consumer_group}.history"
    trust_topic = settings.physical_topic(Topic.TRUST_EVENTS)
    async with Progress() as progress:
        before = await progress.lag(settings.consumer_group, ends)
        started = time.perf_counter()
        joined = None
        async with service.running():
            store = service.trust_store
            shown = started
            while True:
                lag = await progress.lag(settings.consumer_group, ends)
                now = time.perf_counter()
                if joined is None and lag < before:
                    joined = now
                if os.environ.get("BENCH_DEBUG") and now - shown > 2:
                    shown = now
                    print(
                        f"{now - started:.1f}s lag {lag} recomputations {service.recomputer.recomputations} "
                        f"published {service.recomputer.published}",
                        flush=True,
                    )
                # Done: every input committed, nothing scheduled, every published change read
                # back into the history; then the store confirms (reads of the bench's).
                if (
                    lag == 0
                    and service.recomputer.idle()
                    and await progress.lag(history, await progress.ends(trust_topic)) == 0
                ):
                    done = time.perf_counter()
                    if await store.count_dirty() == 0 and not await store.with_pending_events():
                        break
                await asyncio.sleep(0.05)
        return (
            done - started,
            (joined or done) - started,
            service.recomputer.recomputations,
            service.recomputer.published,
        )


async def history_lag(service) -> int:
    """trust.events records the service's history consumer has not committed yet."""
    settings = service.settings
    group = next(g for g, topics in service.inputs if topics == (Topic.TRUST_EVENTS,))
    topic = settings.physical_topic(Topic.TRUST_EVENTS)
    ends = {TopicPartition(topic, p): offset for p, offset in (await trust_ends(settings.topic_prefix)).items()}
    return await group_lag(group, ends)


def state_of(envelope: dict) -> tuple[str, dict]:
    """Which source an event carries (as the service keeps them) and its state with its revision."""
    data = envelope["data"]
    if "author" in data:
        a = data["author"]
        return "profile", {
            "revision": a["revision"],
            "works_count": a["works_count"],
            "works_by_year": a["works_by_year"],
            "topics": len(a["topics"]),
            "close_collaborators": len(a["close_collaborators"]),
            "record_level": a["record_verification_level"],
        }
    if "author_claim" in data:
        c = data["author_claim"]
        return "claim", {"revision": c["revision"], "claimed": c["claimed"], "level": c["verification_level"]}
    return "followers", {"revision": data["revision"], "count": data["count"]}


def score_sized() -> tuple[dict, dict]:
    """A score as the service stores it (a plain subdocument with its breakdown and inputs)
    and a history entry of the service's shape, for the baseline to write."""
    result = scoring.compute(signals_of(0, False, 0))
    components = [
        {"name": c.name, "signal": c.signal, "weight": c.weight, "cap": c.cap, "points": c.points}
        for c in result.components
    ]
    inputs = dataclasses.asdict(signals_of(0, False, 0))
    score = {
        "score": result.score,
        "band": result.band,
        "verification_level": result.verification_level,
        "components": components,
        "formula_version": 1,
        "revision": 1,
        "inputs": inputs,
    }
    entry = {
        "revision": 1,
        "event_id": str(uuid.uuid4()),
        "score": result.score,
        "band": result.band,
        "verification_level": "L1",
        "previous_score": None,
        "previous_band": None,
        "reason": "works count 6 -> 7",
        "components": components,
        "formula_version": 1,
        "inputs": inputs,
        "changed_at": datetime.now(UTC),
    }
    return score, entry


async def run_baseline(
    prefix: str,
    db,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    changed: set[str],
    warmup: list[Envelope],
    indexes: bool = True,
    batch: int = 500,
) -> float:
    """A bare consumer doing the service's store writes (see the module doc), from the
    state the warm-up left (every author registered and scored; not timed)."""
    score, entry = score_sized()
    if indexes:
        await TrustStore(db).create_indexes()
    authors, history = db[AUTHORS], db[HISTORY]
    await authors.insert_many(
        [
            {
                "_id": e.data["author_id"],
                "signals": {"profile": state_of(e.model_dump(mode="json"))[1]},
                "seq": 1,
                "dirty": False,
                "score": score,
            }
            for e in warmup
        ]
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA, enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024
    )
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=20)
    await consumer.start()
    await producer.start()
    started = time.perf_counter()
    try:
        consumer.assign(list(ends))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        remaining = {tp for tp in ends if ends[tp] > starts[tp]}
        touched: set[str] = set()
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=500, max_records=batch)
            by_author: dict[str, list[dict]] = defaultdict(list)
            for tp, records in fetched.items():
                for r in records:
                    doc = json.loads(r.value)
                    by_author[doc["data"]["author_id"]].append(doc)
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if by_author:
                held = {
                    d["_id"]: d.get("signals", {})
                    async for d in authors.find({"_id": {"$in": list(by_author)}}, {"signals": 1})
                }
                ops = []
                for author_id, docs in by_author.items():
                    newest: dict[str, dict] = {}
                    for d in docs:
                        source, state = state_of(d)
                        if state["revision"] > newest.get(source, {"revision": 0})["revision"]:
                            newest[source] = state
                    have = held.get(author_id, {})
                    moved = {
                        f"signals.{source}": state
                        for source, state in newest.items()
                        if state["revision"] > have.get(source, {"revision": 0})["revision"]
                    }
                    if moved:
                        ops.append(
                            UpdateOne(
                                {"_id": author_id}, {"$set": {**moved, "dirty": True}, "$inc": {"seq": 1}}, upsert=True
                            )
                        )
                        touched.add(author_id)
                if ops:
                    await authors.bulk_write(ops, ordered=False)
        scores = [UpdateOne({"_id": a}, {"$set": {"score": score, "dirty": False}}) for a in sorted(touched)]
        if scores:
            await authors.bulk_write(scores, ordered=False)
        body = json.dumps(score).encode()
        futures = [await producer.send(prefix + "baseline.out", body, key=a.encode()) for a in sorted(changed)]
        await asyncio.gather(*futures)
        if changed:
            await history.insert_many(
                [{**entry, "_id": f"{a}#0000000001", "author_id": a} for a in sorted(changed)], ordered=False
            )
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await producer.stop()


async def published_since(prefix: str, starts: dict[int, int]) -> list[dict]:
    """The TrustScoreChanged on trust.events after the given offsets."""
    records = await read_topic(KAFKA, prefix + Topic.TRUST_EVENTS)
    return [json.loads(r.value) for r in records if r.offset >= starts.get(r.partition, 0)]


async def trust_ends(prefix: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA)
    await consumer.start()
    try:
        tps = [TopicPartition(prefix + Topic.TRUST_EVENTS, p) for p in range(TOPICS[Topic.TRUST_EVENTS].partitions)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_paced(settings: TrustSettings, prefix: str, authors: int, rate: float, seconds: float) -> None:
    """The live service under a steady pace of events (see the module doc)."""
    rng = random.Random(3)
    revisions = dict.fromkeys((f"bench-{i:06d}" for i in range(authors)), 1)
    total = int(rate * seconds)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=0)
    service = build_service(settings)
    probes: list[str] = []
    async with service.running():
        await producer.start()
        try:
            await asyncio.sleep(5)  # the consumer groups joined
            before = (service.recomputer.recomputations, service.recomputer.published)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for n in range(total):
                if n % 10 == 0:
                    a = f"probe-{n:07d}"
                    probes.append(a)
                    envelope = Envelope.wrap(AuthorRegistered(author_id=a, author=state(a, 1, 0)), producer="bench")
                else:
                    a = rng.choice(list(revisions)[: min(authors, 500)])
                    revisions[a] += 1
                    r = revisions[a]
                    work = WorkSummary(work_id=f"{a}-p{r}", type="preprint", year=2024, title="t")
                    envelope = Envelope.wrap(
                        WorkAdded(author_id=a, author=state(a, r, r - 1), work=work), producer="bench"
                    )
                await producer.send(prefix + Topic.PROFILE_EVENTS, envelope.to_bytes(), key=a.encode())
                delay = started + (n + 1) / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await producer.flush()
            sent_s = loop.time() - started
            await asyncio.sleep(3)
            recomputations = service.recomputer.recomputations - before[0]
            published_n = service.recomputer.published - before[1]
            settled = await service.trust_store.authors_by_id([*revisions, *probes])
            left = await service.trust_store.with_pending_events()
        finally:
            await producer.stop()
    # Every author ends scored from its final signals, its changes revisions 1..n, each once.
    wrong = []
    for author in settled:
        inputs = signals.score_inputs(author.signals, scoring.CURRENT)
        if author.dirty or author.score is None or inputs is None:
            wrong.append(f"{author.author_id}: not scored")
        elif author.score["score"] != scoring.compute(inputs).score:
            wrong.append(f"{author.author_id}: score {author.score['score']} from older signals")
    revisions_seen: dict[str, list[int]] = defaultdict(list)
    for r in await read_topic(KAFKA, prefix + Topic.TRUST_EVENTS):
        data = json.loads(r.value)["data"]
        revisions_seen[data["author_id"]].append(data["revision"])
    wrong += [f"{a}: revisions {r}" for a, r in revisions_seen.items() if sorted(r) != list(range(1, len(r) + 1))]
    wrong += [f"{a}: events left in its outbox" for a in left]
    wrong += [
        f"{a.author_id}: revision {a.score['revision']} stored, {len(revisions_seen[a.author_id])} published"
        for a in settled
        if a.score is not None and a.score["revision"] != len(revisions_seen[a.author_id])
    ]
    changes = sum(map(len, revisions_seen.values()))
    print(f"  consistency: {'OK' if not wrong else wrong[:5]}; {changes} changes on trust.events")
    sent_at = {
        json.loads(r.value)["data"]["author_id"]: r.timestamp
        for r in await read_topic(KAFKA, prefix + Topic.PROFILE_EVENTS)
        if r.key and r.key.startswith(b"probe-")
    }
    scored_at: dict[str, int] = {}
    for r in await read_topic(KAFKA, prefix + Topic.TRUST_EVENTS):
        a = json.loads(r.value)["data"]["author_id"]
        if a.startswith("probe-"):
            scored_at.setdefault(a, r.timestamp)
    latencies = [float(scored_at[a] - sent_at[a]) for a in probes if a in scored_at and a in sent_at]
    print(
        f"paced {rate:.0f} events/s for {sent_s:.1f}s (window {settings.recompute_window_ms} ms, "
        f"cap {settings.recompute_max_delay_ms} ms): {len(latencies)}/{len(probes)} probes scored; "
        f"latency ms p50 {pct(latencies, 0.5):.0f}, p95 {pct(latencies, 0.95):.0f}, "
        f"p99 {pct(latencies, 0.99):.0f}, max {max(latencies):.0f}"
    )
    print(
        f"  {recomputations / sent_s:.0f} recomputations/s and {published_n / sent_s:.0f} TrustScoreChanged/s "
        f"for {rate:.0f} input events/s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="2,000 authors, 20,000 events")
    parser.add_argument(
        "--bare-without-indexes",
        action="store_true",
        help="the baseline writes collections with no secondary index (the service needs its own)",
    )
    parser.add_argument("--paced", type=float, metavar="RATE", help="measure latency at RATE events/s instead")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long --paced sends (default 30)")
    args = parser.parse_args()
    authors, events = (2_000, 20_000) if args.quick else (args.authors, args.events)
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench{run_id}."
    settings = TrustSettings(
        environment="test",
        kafka_bootstrap_servers=KAFKA,
        mongodb_uri=MONGODB_URI,
        mongodb_database=f"bench{run_id}_trust",
        topic_prefix=prefix,
        consumer_group_prefix=f"bench{run_id}",
        log_level="WARNING",
    )
    mongo: Client = AsyncMongoClient(MONGODB_URI)
    baseline_db = mongo[f"bench{run_id}_baseline"]
    await ensure_topics(KAFKA, prefix=prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:  # where the baseline publishes its changes
        await admin.create_topics([NewTopic(prefix + "baseline.out", TOPICS[Topic.TRUST_EVENTS].partitions, 1)])
    finally:
        await admin.close()
    try:
        t = time.perf_counter()
        warmup, timed, expected = generate(authors, events // authors)
        print(
            f"generated {len(warmup)} registrations + {len(timed)} timed events in {time.perf_counter() - t:.1f}s",
            flush=True,
        )
        await produce(prefix, warmup)
        print(f"produced {len(warmup)} registrations", flush=True)
        service = build_service(settings)
        async with service.running():
            await wait_scored(service, authors)
        starts = await end_offsets(prefix)
        trust_starts = await trust_ends(prefix)
        print(f"warm-up: {authors} authors registered and scored")
        if args.paced:
            await run_paced(settings, prefix, authors, args.paced, args.seconds)
            return
        t = time.perf_counter()
        await produce(prefix, timed)
        ends = await end_offsets(prefix)
        print(f"produced {len(timed)} events in {time.perf_counter() - t:.1f}s")

        ours_s, joined_s, recomputations, _ = await run_ours(settings, ends)
        ours_rate = len(timed) / ours_s
        print(
            f"trust service : {len(timed)} events in {ours_s:.1f}s = {ours_rate:,.0f} events/s, "
            f"{recomputations} recomputations = {recomputations / ours_s:,.0f} recomputations/s "
            f"(first commit after {joined_s:.1f}s: joining the consumer group)",
            flush=True,
        )
        events = await published_since(prefix, trust_starts)
        published = Counter(e["data"]["author_id"] for e in events)
        base_s = await run_baseline(
            prefix,
            baseline_db,
            starts,
            ends,
            expected,
            warmup,
            indexes=not args.bare_without_indexes,
            batch=settings.consumer_max_records,  # the same batches as the service
        )
        base_rate = len(timed) / base_s
        print(f"bare baseline : {len(timed)} events in {base_s:.1f}s = {base_rate:,.0f} events/s")
        print(f"ratio         : {ours_rate / base_rate:.0%} of the baseline (target >= 70%)")
        print(f"  without the group join: {(len(timed) / (ours_s - joined_s)) / base_rate:.0%}")
        same = published == Counter(expected)
        extra, missing = sorted(set(published) - expected)[:5], sorted(expected - set(published))[:5]
        twice = [
            (a, [(e["event_id"][:8], e["data"]["revision"]) for e in events if e["data"]["author_id"] == a])
            for a, n in published.items()
            if n > 1
        ][:5]
        difference = f" (extra: {extra}, missing: {missing}, twice: {twice})"
        print(
            f"TrustScoreChanged published: {sum(published.values())} (for {len(published)} authors); "
            f"authors whose score really changed: {len(expected)} -> {'EQUAL' if same else 'DIFFERENT'}"
            f"{'' if same else difference}"
        )
    finally:
        await delete_topics(KAFKA, [prefix + t for t in TOPICS] + [prefix + "baseline.out"])
        await mongo.drop_database(settings.database_name)
        await mongo.drop_database(baseline_db.name)
        await mongo.close()


if __name__ == "__main__":
    asyncio.run(main())
