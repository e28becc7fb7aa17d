"""Fan-out benchmark: one author with N followers (default 100,000) adds a work; how long
until every follower is notified (the notification in their inbox, and its
NotificationCreated acknowledged on notifications.events), with R replicas of the follow
service (separate processes, one consumer group).

In the same run:

* a bare baseline: the same work with nothing around it, in one process: one shared inbox
  entry per chunk (a document listing its followers) and N Kafka sends of the same
  records (aiokafka, idempotent, acks=all, the service's producer settings);
* isolation: while the N are fanned out, other authors' follows (until the edge is
  written) and small fan-outs (10 followers, until notified), started every
  ``--probe-every`` seconds; their p99 is the figure;
* the peak RSS of each replica (VmHWM), and the CPU seconds of every process on the
  machine that took part (replicas, Kafka, PostgreSQL, FerretDB, this script) while the
  fan-out ran: where the time goes.

Checked after each run: exactly N followers notified in the store, N distinct
notification ids on the topic (no other), a sample of followers who see the notification
over HTTP once, and nobody who unfollowed before the work or followed after it (a few
hundred of each are seeded) notified.

    .local/venv/bin/python bench/bench_follow.py [--followers 1000000] [--replicas 1 2] [--chunk 10000]

The last line is ``RESULT fanout followers=<n> seconds=<s> ratio=<r> isolation_p99_ms=<ms>
peak_rss_mib=<mib>`` (of the last replica count). Needs the broker and the store (make
infra-up); uses its own topics and database and removes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts import Envelope
from contracts.events.follows import FollowRequested
from contracts.events.notifications import fanout_id, notification_id
from contracts.events.profile import AuthorState, WorkAdded, WorkSummary
from contracts.topics import TOPICS, Topic
from service_runtime.auth import mint_token
from service_runtime.kafka import delete_topics, ensure_topics
from service_runtime.topic_reader import iter_topic
from services.follow.bulk import shared_records
from services.follow.rules import SharedEntry
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore, edge_id
from tests.service_process import ServiceProcess, wait_for_group

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
AUTHOR = "openalex:A5017898742"
EXCLUDED = 500  # seeded who unfollowed before the work, and as many who followed after it
SMALL_AUTHORS = [f"iso-small-{k}" for k in range(5)]  # 10 followers each
FOLLOWED_AUTHORS = [f"iso-follow-{k}" for k in range(5)]
TICK = os.sysconf("SC_CLK_TCK")


def settings_for(run: str, database: str, chunk: int) -> FollowSettings:
    return FollowSettings(
        environment="test",
        kafka_bootstrap_servers=KAFKA,
        mongodb_uri=MONGODB_URI,
        mongodb_database=database,
        topic_prefix=f"bench{run}.",
        consumer_group_prefix=f"bench{run}",
        fanout_shared_chunk_size=chunk,
        log_level="INFO",
    )


def work_added(at: datetime, author_id: str = AUTHOR, title: str = "A new paper by a much-followed author") -> Envelope:
    author = AuthorState(
        author_id=author_id, display_name="Quoc V. Le", works_count=29, record_verification_level="L1", revision=2
    )
    work = WorkSummary(work_id=f"w-{uuid.uuid4().hex[:8]}", type="article", year=2026, title=title)
    return Envelope.wrap(WorkAdded(author_id=author_id, author=author, work=work), producer="bench", occurred_at=at)


def follower(i: int) -> str:
    return f"user-{i:07d}"


# --- where the time goes ------------------------------------------------------------


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _group_of(pid: int, replicas: dict[int, str]) -> str | None:
    if pid in replicas:
        return replicas[pid]
    if pid == os.getpid():
        return "bench (this script: probes, checks)"
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    if comm == "postgres":
        return "PostgreSQL (all backends)"
    if comm.startswith("ferretdb"):
        return "FerretDB"
    if b"kafka.Kafka" in cmdline:
        return "Kafka"
    return None


def cpu_snapshot(replicas: dict[int, str]) -> dict[int, tuple[str, float]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            pid = int(entry)
            group = _group_of(pid, replicas)
            if group is not None:
                with contextlib.suppress(OSError):
                    out[pid] = (group, _cpu_of(pid))
    return out


def cpu_between(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    spent: dict[str, float] = {}
    for pid, (group, cpu) in after.items():
        spent[group] = spent.get(group, 0.0) + cpu - (before[pid][1] if pid in before else 0.0)
    return spent


def machine_cpu() -> float:
    """CPU seconds the whole machine spent (every process, ours or not)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICK  # minus idle and iowait


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --- isolation probes -----------------------------------------------------------------


@dataclass
class Probes:
    producer: AIOKafkaProducer
    settings: FollowSettings
    store: FollowStore
    run: str
    every_s: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"follow": [], "small fan-out": []})
    failures: int = 0
    timeline: list[tuple[float, str, float]] = field(default_factory=list)  # (started, kind, seconds)

    async def run_until(self, stop: asyncio.Event) -> None:
        tasks = []
        i = 0
        while not stop.is_set():
            tasks.append(asyncio.create_task(self._timed("follow", self._follow(i))))
            tasks.append(asyncio.create_task(self._timed("small fan-out", self._small_fanout(i))))
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
        await asyncio.gather(*tasks)

    async def _timed(self, kind: str, probe: Awaitable[Callable[[], Awaitable[bool]]]) -> None:
        started = time.perf_counter()
        done = await probe
        deadline = started + 300
        while not await done():
            now = time.perf_counter()
            if now > deadline:
                self.failures += 1
                return
            # Every 20 ms for the first 2 s (the figure that matters), then every 250 ms: a
            # stalled probe must not load the store it measures.
            await asyncio.sleep(0.02 if now - started < 2 else 0.25)
        self.latencies[kind].append(time.perf_counter() - started)
        self.timeline.append((started, kind, time.perf_counter() - started))

    async def _follow(self, i: int) -> Callable[[], Awaitable[bool]]:
        # Authors of this run's own: an author document remembers the last command position
        # it applied, which a later run's fresh topics would be taken as already past.
        author, user = f"{FOLLOWED_AUTHORS[i % len(FOLLOWED_AUTHORS)]}-{self.run}", f"iso-u{i}"
        command = Envelope.wrap(FollowRequested(user_id=user, author_id=author), producer="bench")
        await self.producer.send_and_wait(
            self.settings.physical_topic(Topic.WEBAPP_FOLLOWS), command.to_bytes(), key=author.encode()
        )

        async def written() -> bool:
            return (
                await self.store.edges.find_one({"_id": edge_id(author, user), "active": True}, {"_id": 1}) is not None
            )

        return written

    async def _small_fanout(self, i: int) -> Callable[[], Awaitable[bool]]:
        author = SMALL_AUTHORS[i % len(SMALL_AUTHORS)]
        source = work_added(datetime.now(UTC), author_id=author, title=f"probe {i}")
        await self.producer.send_and_wait(
            self.settings.physical_topic(Topic.PROFILE_EVENTS), source.to_bytes(), key=author.encode()
        )
        return lambda: fanout_finished(self.store, source)

    def p99_ms(self, kind: str | None = None) -> float:
        values = sorted(v for k, vs in self.latencies.items() if kind in (None, k) for v in vs)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(len(values) * 0.99))] * 1000


async def fanout_finished(store: FollowStore, source: Envelope) -> bool:
    plan = await store.fanout(str(fanout_id(source.event_id)))
    return bool(plan and plan.get("published") and len(plan.get("done") or []) == len(plan["chunks"]))


# --- the runs -----------------------------------------------------------------------


async def seed(store: FollowStore, n: int, moment: datetime) -> float:
    """N followers of AUTHOR before ``moment``, and the followers who must get nothing:
    some unfollowed before it, some followed after it. Edges first, indexes after (a bulk
    load is several times faster without them)."""
    started = time.perf_counter()
    before, after = moment - timedelta(days=1), moment + timedelta(days=1)
    edge: Callable[..., dict[str, Any]] = lambda a, u, **f: {  # noqa: E731
        "_id": edge_id(a, u),
        "author_id": a,
        "user_id": u,
        "active": True,
        "followed_at": before,
        "unfollowed_at": None,
        "revision": 1,
        **f,
    }
    edges = [edge(AUTHOR, follower(i)) for i in range(n)]
    edges += [
        edge(AUTHOR, f"left-{i:04d}", active=False, unfollowed_at=moment - timedelta(hours=1)) for i in range(EXCLUDED)
    ]
    edges += [edge(AUTHOR, f"late-{i:04d}", followed_at=after) for i in range(EXCLUDED)]
    await store.seed_edges(edges)
    await store.create_indexes()
    await store.seed_followers(AUTHOR, "Quoc V. Le", [], before, count=n)  # the author document
    for author in SMALL_AUTHORS:
        await store.seed_followers(author, "Small Author", [f"{author}-fan{j}" for j in range(10)], before)
    await store.seed_followers("warm-up", "Warm Up", [f"warm-{j}" for j in range(10)], before)
    return time.perf_counter() - started


async def notified_in_store(store: FollowStore, source: Envelope) -> list[str]:
    """Every follower the fan-out notified, as the store holds it (each entry once: a
    paged scan may repeat a document)."""
    entries: dict[str, list[str]] = {}
    fid = str(fanout_id(source.event_id))
    async for d in store.shared.find({"fanout_id": fid}, {"users": 1}):
        entries[d["_id"]] = d["users"]
    own = [d["user_id"] async for d in store.inbox.find({"source_event_id": str(source.event_id)}, {"user_id": 1})]
    return [u for users in entries.values() for u in users] + own


async def ids_on_topic(settings: FollowSettings, source: Envelope) -> tuple[set[str], int]:
    """The notification ids of this fan-out on notifications.events, and its record count."""
    ids: set[str] = set()
    records = 0
    wanted = str(source.event_id)
    async for batch in iter_topic(KAFKA, settings.physical_topic(Topic.NOTIFICATIONS_EVENTS)):
        for r in batch:
            data = orjson.loads(r.value)["data"]
            if data.get("source_event_id") == wanted:
                records += 1
                ids.add(data["notification_id"])
    return ids, records


async def inbox_over_http(proc: ServiceProcess, settings: FollowSettings, user: str, source: Envelope) -> int:
    """How many times the user's inbox lists this work's notification (all pages)."""
    async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
        headers = {"Authorization": f"Bearer {mint_token(settings, user)}"}
        seen, cursor = 0, None
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = (await http.get(f"/users/{user}/notifications", params=params, headers=headers)).json()
            seen += sum(1 for n in page["notifications"] if n["source_event_id"] == str(source.event_id))
            cursor = page["next_cursor"]
            if cursor is None:
                return seen


async def fanout_run(
    replicas: int, n: int, database: str, chunk: int, probe_every: float, store: FollowStore
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    settings = settings_for(run, database, chunk)
    await ensure_topics(KAFKA, prefix=settings.topic_prefix)
    procs = [ServiceProcess("follow", settings) for _ in range(replicas)]
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=1)
    await producer.start()
    try:
        await asyncio.gather(*(p.start() for p in procs))
        for group in ("fanout", "sources", ""):
            name = settings.consumer_group + (f".{group}" if group else "")
            await wait_for_group(KAFKA, name, members=replicas, timeout_s=120)
        # Warm-up (not timed): connections open, the planner's and workers' paths taken once.
        warm = work_added(datetime.now(UTC), author_id="warm-up")
        await producer.send_and_wait(settings.physical_topic(Topic.PROFILE_EVENTS), warm.to_bytes(), key=b"warm-up")
        while not await fanout_finished(store, warm):
            await asyncio.sleep(0.05)

        for author in FOLLOWED_AUTHORS:
            await store.seed_followers(f"{author}-{run}", "Followed Author", [], datetime.now(UTC) - timedelta(days=1))
        pids = {p.process.pid: f"follow replica {i + 1}" for i, p in enumerate(procs) if p.process}
        probes = Probes(producer, settings, store, run, probe_every)
        stop = asyncio.Event()
        probing = asyncio.create_task(probes.run_until(stop))
        await asyncio.sleep(2 * probe_every)  # probes before the fan-out too: the quiet figure
        source = work_added(datetime.now(UTC))
        cpu_before, machine_before = cpu_snapshot(pids), machine_cpu()
        started = time.perf_counter()
        await producer.send_and_wait(
            settings.physical_topic(Topic.PROFILE_EVENTS), source.to_bytes(), key=AUTHOR.encode()
        )
        while not await fanout_finished(store, source):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        if os.environ.get("BENCH_SHOW_PROBES"):
            for at, kind, took in sorted(probes.timeline):
                print(f"    probe at {at - started:+7.2f} s  {kind:14} {took * 1000:7.0f} ms")
        cpu = cpu_between(cpu_before, cpu_snapshot(pids))
        machine = machine_cpu() - machine_before
        stop.set()
        await probing
        rss = [peak_rss_mib(pid) for pid in pids]

        notified = await notified_in_store(store, source)
        ids, records = await ids_on_topic(settings, source)
        expected_users = {follower(i) for i in range(n)}
        sample = [*random.Random(7).sample(sorted(expected_users), 20), "left-0001", "late-0001"]
        http = [await inbox_over_http(procs[0], settings, u, source) for u in sample]
        plan = await store.fanout(str(fanout_id(source.event_id))) or {}
        return {
            "elapsed": elapsed,
            "notified": len(notified),
            "notified_right": len(notified) == n and set(notified) == expected_users,
            "distinct": len(ids),
            "ids_right": ids == {str(notification_id(source.event_id, u)) for u in expected_users},
            "records": records,
            "http_right": http == [1] * 20 + [0, 0],
            "chunks": len(plan.get("chunks") or []),
            "per_replica": [p.log_text().count("fanout_chunks_done") for p in procs],
            "probes": probes,
            "rss": rss,
            "cpu": cpu,
            "machine_cpu": machine,
        }
    finally:
        await producer.stop()
        for p in procs:
            await p.stop()
        await delete_topics(KAFKA, [settings.physical_topic(t) for t in TOPICS])


async def baseline(n: int, chunk: int) -> float:
    """The same entries and sends in a bare loop, one process: the floor the service is
    compared with (no consumer, no plan, no range reads, no marks)."""
    run = uuid.uuid4().hex[:8]
    settings = settings_for(run, f"bench_follow_base_{run}", chunk)
    topic = settings.physical_topic(Topic.NOTIFICATIONS_EVENTS)
    await ensure_topics(KAFKA, [TOPICS[Topic.NOTIFICATIONS_EVENTS]], prefix=settings.topic_prefix)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI, tz_aware=True)
    store = FollowStore(client[settings.database_name])
    await store.create_indexes()
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA,
        enable_idempotence=True,
        acks="all",
        linger_ms=settings.fanout_send_linger_ms,
        max_batch_size=1024 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    source = work_added(datetime.now(UTC))
    fid = fanout_id(source.event_id)
    headers = [("content-type", b"application/json"), ("event-type", b"NotificationCreated"), ("producer", b"bench")]
    try:
        started = time.perf_counter()
        for number, start in enumerate(range(0, n, chunk)):
            users = [follower(i) for i in range(start, min(start + chunk, n))]
            entry = SharedEntry(f"{fid}:{number}", AUTHOR, "new_work", "t", source.event_id, source.occurred_at)
            await store.insert_shared(entry, users, source.occurred_at)
            records = shared_records(entry, users, producer="bench", cause=source, occurred_at=source.occurred_at)
            futures = [await producer.send(topic, v, key=k, headers=headers) for k, v in records]
            await asyncio.gather(*futures)
            await store.shared_done(entry.shared_id)
        return time.perf_counter() - started
    finally:
        await producer.stop()
        await delete_topics(KAFKA, [topic])
        await client.drop_database(settings.database_name)
        await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=10_000, help="followers per chunk (FANOUT_SHARED_CHUNK_SIZE)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[2])
    parser.add_argument("--probe-every", type=float, default=0.5, help="seconds between isolation probes")
    args = parser.parse_args()
    n = args.followers
    print(f"fan-out of one new work to {n:,} followers, chunks of {args.chunk:,}; load average {os.getloadavg()}")
    base = await baseline(n, args.chunk)
    print(f"baseline (bare shared entries + Kafka sends, one process): {base:7.2f} s  {n / base:9,.0f} notifications/s")
    database = f"bench_follow_{uuid.uuid4().hex[:8]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI, tz_aware=True)
    store = FollowStore(client[database])
    result = ""
    try:
        seeded = await seed(store, n, datetime.now(UTC))
        print(f"seeded {n:,} followers (+{2 * EXCLUDED} who must get nothing) in {seeded:.1f} s")
        for replicas in args.replicas:
            r = await fanout_run(replicas, n, database, args.chunk, args.probe_every, store)
            rate = n / r["elapsed"]
            probes: Probes = r["probes"]
            ratio = base / r["elapsed"]
            p99 = probes.p99_ms()
            rss = max(r["rss"])
            print(
                f"follow service, {replicas} replica(s): {r['elapsed']:7.2f} s  {rate:9,.0f} notifications/s  "
                f"ratio to baseline {ratio:5.2f}  (load average now {os.getloadavg()})"
            )
            print(
                f"  notified in the store {r['notified']:,} (exactly the followers: {r['notified_right']}), distinct "
                f"ids on the topic {r['distinct']:,} ({r['records']:,} records; exactly the expected ids: "
                f"{r['ids_right']}), over HTTP a sample of 20 followers once each and 2 excluded never: "
                f"{r['http_right']}; {r['chunks']} chunks, chunk batches per replica {r['per_replica']}"
            )
            counts = {k: len(v) for k, v in probes.latencies.items()}
            print(
                f"  isolation: {counts} probes, p99 {p99:.0f} ms (follows {probes.p99_ms('follow'):.0f} ms, "
                f"small fan-outs {probes.p99_ms('small fan-out'):.0f} ms), {probes.failures} not done in 300 s"
            )
            print(f"  peak RSS per replica (VmHWM): {', '.join(f'{m:.0f} MiB' for m in r['rss'])}")
            spent = ", ".join(f"{g} {s:.1f} s" for g, s in sorted(r["cpu"].items(), key=lambda kv: -kv[1]))
            print(
                f"  CPU while it ran ({r['elapsed']:.1f} s wall, {2 * r['elapsed']:.0f} core-s on 2 cores): {spent}; "
                f"whole machine {r['machine_cpu']:.1f} s"
            )
            result = (
                f"RESULT fanout followers={n} seconds={r['elapsed']:.2f} ratio={ratio:.2f} "
                f"isolation_p99_ms={p99:.0f} peak_rss_mib={rss:.0f}"
            )
            print(result, flush=True)
    finally:
        await client.drop_database(database)
        await client.close()
    print(result)


if __name__ == "__main__":
    asyncio.run(main())
