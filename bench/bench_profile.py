"""Profile service benchmark: ingestion rate against a bare baseline, then page read latency.

    .local/venv/bin/python bench/bench_profile.py                 # 100,000 works, 10,000 authors
    .local/venv/bin/python bench/bench_profile.py --works 10000 --authors 1000 --read-seconds 10
    .local/venv/bin/python bench/bench_profile.py --keep           # then, later, on a quiet machine:
    .local/venv/bin/python bench/bench_profile.py --reads-only RUN  # (same --authors as the kept run)

1. Publishes N ``WorkIngested`` (two authors each: a first author and one co-author, so
   every author has ~2N/A works) to a private topic prefix on the real broker.
2. *Ours*: the profile service (build_service) consumes them into a private database:
   decode + validate, plan, bulk read works and authors, bulk write authors (with their
   events in their outbox) and works, publish every profile event, pull them from the
   outboxes.
3. *Baseline*: a bare aiokafka consumer over the same records doing the same reads and
   writes with PyMongo: json.loads, one read of the batch's works (fingerprint and
   author list, what idempotence needs) and of its authors, then the same plain author
   documents (identity, name keys, entries, derived state and first page of works, as
   the service stores them, without outbox) and work documents, in one bulk command
   each, and the same secondary indexes. No envelope validation, no events, no outbox.
4. Correctness of ours, in the same run: every author's stored works count equals the
   works published for it, every expected event (one AuthorRegistered per author, one
   WorkAdded per work and author) was published, no event id twice, no outbox pending;
   the baseline's works counts are checked too.
5. Reads: the service's HTTP in its own process (uvicorn on a free local port) and, as
   the bare baseline, ``bare_page_server.py`` (the same two reads by ``_id``, what they
   return encoded by orjson, no framework, no response model), each given ``GET /authors/{id}`` for random
   authors at a fixed rate by vegeta (open loop), taking turns; p50/p99 of
   each, their ratio, the rate achieved and the status codes.

Everything it creates (topics, databases, the server process) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import ASCENDING, AsyncMongoClient, IndexModel, InsertOne, ReplaceOne

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts.envelope import Envelope  # noqa: E402
from contracts.events.publications import Work, WorkIngested  # noqa: E402
from contracts.topics import TOPICS, Topic  # noqa: E402
from service_runtime.kafka import delete_topics, ensure_topics  # noqa: E402
from service_runtime.topic_reader import iter_topic  # noqa: E402
from services.profile.app import build_service  # noqa: E402
from services.profile.derive import derive_state, distinct_topics, name_keys, newest_first  # noqa: E402
from services.profile.page import cut_first_page  # noqa: E402
from services.profile.settings import ProfileSettings  # noqa: E402

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
BATCH = ProfileSettings().consumer_max_records  # the same batches as the service
PAGE_WORKS = ProfileSettings().page_works
READ_TURNS = 6
VEGETA = ROOT / ".local" / "bin" / "vegeta"
VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.13.0"


def abstract_words() -> list[str]:
    """The words of the seed's 28 real abstracts, as often as they occur there."""
    words: list[str] = []
    for line in (ROOT / "fixtures" / "seed" / "publications.ingested.jsonl").read_text().splitlines():
        work = json.loads(line).get("data", {}).get("work") or {}
        words += (work.get("abstract") or "").split()
    return words


def make_works(n_works: int, n_authors: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(7)
    # Abstracts of real length (~170 words, ~1,100 characters) drawn from real abstracts'
    # words: a page of 20 such works is ~25 KB of JSON and compresses ~2.3x, a little worse
    # than the seed's real page (~3x), so neither the reads nor the writes look cheaper than
    # real ones.
    words = abstract_words()
    topics = ["Machine learning", "Computer vision", "Speech", "Robotics", "Databases", "Systems", "Theory"]
    out = []
    for i in range(n_works):
        first = i % n_authors
        other = (first + 1 + rng.randrange(n_authors - 1)) % n_authors
        work = Work(
            work_id=f"bench:w{i}",
            type="article",
            year=2000 + i % 25,
            venue="Bench Journal",
            title=f"Work number {i} on {topics[i % 7].lower()}",
            abstract=" ".join(rng.choice(words) for _ in range(170)),
            external_ids={"doi": f"10.5555/bench.{i}"},
            topics=[topics[i % 7], topics[(i // 7) % 7]],
            authors=[
                {"author_id": f"bench:a{first}", "display_name": f"Author {first}"},
                {"author_id": f"bench:a{other}", "display_name": f"Author {other}"},
            ],
        )
        env = Envelope.wrap(WorkIngested(author_id=f"bench:a{first}", work=work, source="bench"), producer="bench")
        out.append((f"bench:a{first}".encode(), env.to_bytes()))
    return out


async def produce(topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=20, max_batch_size=512 * 1024, acks="all")
    await producer.start()
    try:
        for start in range(0, len(records), 5000):
            futures = [await producer.send(topic, value, key=key) for key, value in records[start : start + 5000]]
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


def _entry(work: dict[str, Any], author_id: str, fingerprint: str) -> dict[str, Any]:
    ids = work.get("external_ids") or {}
    return {
        "work_id": work["work_id"],
        "year": work["year"],
        "fingerprint": fingerprint,
        "has_external_id": bool(ids.get("doi") or ids.get("arxiv_id")),
        "topics": distinct_topics(work["topics"]),
        "co_authors": [
            {"author_id": a["author_id"], "display_name": a["display_name"]}
            for a in work["authors"]
            if a["author_id"] != author_id
        ],
    }


def _fingerprint(work: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(work, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


async def run_baseline(topic: str, database: str, n_works: int) -> float:
    """A bare consumer writing what the service writes (see the module doc), minus events
    and outbox: json.loads, one read of works and authors, author and work documents
    of the same shape in one bulk command each, commit."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI)
    db = client[database]
    await db.authors.create_indexes([IndexModel([("name_keys", ASCENDING)], name="name_keys")])
    await db.works.create_indexes([IndexModel([("author_ids", ASCENDING)], name="author_ids")])
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA,
        group_id=f"{database}.baseline",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=BATCH,
    )
    await consumer.start()
    done = 0
    started = time.perf_counter()
    try:
        while done < n_works:
            fetched = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            works = [json.loads(r.value)["data"]["work"] for records in fetched.values() for r in records]
            if not works:
                continue
            stored = {
                d["_id"]: d
                async for d in db.works.find(
                    {"_id": {"$in": list({w["work_id"] for w in works})}}, {"fingerprint": 1, "author_ids": 1}
                )
            }
            ids = {a["author_id"] for w in works for a in w["authors"]} | {
                a for d in stored.values() for a in d.get("author_ids", [])
            }
            authors = {}
            async for d in db.authors.find({"_id": {"$in": list(ids)}}):
                d["entries"] = d["works"]
                d["page"] = {w["work_id"]: w for w in d["first_page"]["works"]}
                authors[d["_id"]] = d
            fresh: set[str] = set()
            changed: set[str] = set()
            work_docs: dict[str, dict[str, Any]] = {}
            for w in works:
                fingerprint = _fingerprint(w)
                if (work_docs.get(w["work_id"]) or stored.get(w["work_id"]) or {}).get("fingerprint") == fingerprint:
                    continue  # the same work again: nothing to write
                for a in w["authors"]:
                    doc = authors.get(a["author_id"])
                    if doc is None:
                        doc = authors[a["author_id"]] = {
                            "_id": a["author_id"],
                            "display_name": a["display_name"],
                            "description": None,
                            "affiliation": None,
                            "orcid": a.get("orcid"),
                            "open_to_collaborate": False,
                            "entries": [],
                            "page": {},
                            "revision": 1,
                        }
                        fresh.add(a["author_id"])
                    entry = _entry(w, a["author_id"], fingerprint)
                    doc["entries"] = [e for e in doc["entries"] if e["work_id"] != w["work_id"]] + [entry]
                    doc["page"][w["work_id"]] = w
                    doc["revision"] += 1
                    changed.add(a["author_id"])
                work_docs[w["work_id"]] = {
                    "_id": w["work_id"],
                    "work": w,
                    "fingerprint": fingerprint,
                    "author_ids": [a["author_id"] for a in w["authors"]],
                }
            ops = []
            for author_id in sorted(changed):
                doc = authors[author_id]
                identity = {
                    "author_id": author_id,
                    **{
                        k: doc.get(k)
                        for k in ("display_name", "description", "affiliation", "orcid", "open_to_collaborate")
                    },
                }
                state = derive_state(identity, doc["entries"], doc["revision"], 5)
                page = cut_first_page(doc["entries"], PAGE_WORKS, doc["page"])
                assert not isinstance(page, list)
                out = {
                    "_id": author_id,
                    **{k: v for k, v in identity.items() if k != "author_id"},
                    "imported": False,
                    "name_keys": name_keys(doc["display_name"]),
                    "state": state,
                    "works": newest_first(doc["entries"]),
                    "first_page": {"limit": page.limit, "works": page.works, "next_cursor": page.next_cursor},
                    "revision": doc["revision"],
                }
                ops.append(InsertOne(out) if author_id in fresh else ReplaceOne({"_id": author_id}, out))
            work_ops = [ReplaceOne({"_id": i}, d) if i in stored else InsertOne(d) for i, d in work_docs.items()]
            for batch_ops, collection in ((ops, db.authors), (work_ops, db.works)):
                if batch_ops:
                    await collection.bulk_write(batch_ops, ordered=False)
            await consumer.commit()
            done += len(works)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await client.close()


def expected_counts(records: list[tuple[bytes, bytes]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, value in records:
        for a in json.loads(value)["data"]["work"]["authors"]:
            counts[a["author_id"]] = counts.get(a["author_id"], 0) + 1
    return counts


async def stored_counts(database: str) -> dict[str, int]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI)
    try:
        found = client[database].authors.find({}, {"state.works_count": 1})
        return {d["_id"]: d["state"]["works_count"] async for d in found}
    finally:
        await client.close()


async def check_ours(settings: ProfileSettings, expected: dict[str, int]) -> list[str]:
    """What must hold after ingestion; returns the failures (empty: all held)."""
    failures = []
    counts = await stored_counts(settings.database_name)
    wrong = [a for a, n in expected.items() if counts.get(a) != n]
    if wrong or len(counts) != len(expected):
        failures.append(f"{len(wrong)} authors with a wrong works count, {len(counts)} stored of {len(expected)}")
    seen: dict[str, int] = {}
    by_type: dict[str, int] = {}
    async for chunk in iter_topic(KAFKA, settings.physical_topic(Topic.PROFILE_EVENTS)):
        for r in chunk:
            event = json.loads(r.value)
            seen[event["event_id"]] = seen.get(event["event_id"], 0) + 1
            by_type[event["event_type"]] = by_type.get(event["event_type"], 0) + 1
    duplicated = sum(n - 1 for n in seen.values())
    want = {"AuthorRegistered": len(expected), "WorkAdded": sum(expected.values())}
    got = {t: by_type.get(t, 0) for t in want}
    print(
        f"  events: {len(seen):,} distinct of {sum(seen.values()):,} published ({duplicated} duplicates); "
        f"{', '.join(f'{t} {by_type.get(t, 0):,}/{n:,}' for t, n in want.items())}",
        flush=True,
    )
    if duplicated:
        failures.append(f"{duplicated} events published twice")
    if len(seen) != sum(want.values()) or got != want:
        failures.append(f"events {by_type} instead of {want}")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI)
    try:
        pending = await client[settings.database_name].authors.count_documents({"outbox.0": {"$exists": True}})
    finally:
        await client.close()
    if pending:
        failures.append(f"{pending} authors with events still in their outbox")
    return failures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ensure_vegeta() -> Path:
    """vegeta, the open-loop HTTP load generator, built from the Go module proxy into
    .local/bin on first use. A Go client costs the shared CPU a fraction of what an
    asyncio client would, so the figure is the server's, not the client's."""
    if not VEGETA.exists():
        print(f"installing vegeta ({VEGETA_MODULE}) with go install ...", flush=True)
        subprocess.run(["go", "install", VEGETA_MODULE], env={**os.environ, "GOBIN": str(VEGETA.parent)}, check=True)
    return VEGETA


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(240):
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"{url} never answered")


def attack(port: int, n_authors: int, rate: float, seconds: float, out: Path, seed: int) -> None:
    """``GET /authors/{id}`` for random authors at a fixed rate (open loop: requests leave on
    schedule whatever the answers take); vegeta's results go to ``out``."""
    rng = random.Random(seed)
    targets = "".join(
        f"GET http://127.0.0.1:{port}/authors/bench:a{rng.randrange(n_authors)}\n\n"
        for _ in range(int(rate * seconds) + 1)
    )
    subprocess.run(
        [str(VEGETA), "attack", f"-rate={rate:g}/s", f"-duration={seconds:g}s", "-timeout=30s", f"-output={out}"],
        input=targets.encode(),
        check=True,
    )


def report(results: list[Path]) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        subprocess.run(
            [str(VEGETA), "report", "-type=json", *map(str, results)], capture_output=True, check=True
        ).stdout
    )
    return found


async def measure_reads(
    settings: ProfileSettings, n_authors: int, rate: float, seconds: float, workdir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ours (the profile service's HTTP in its own process) and the bare page server, each
    attacked for ``seconds`` in turns of ``READ_TURNS`` (short, so that a burst of other
    load on the shared machine falls on both alike)."""
    ensure_vegeta()
    ours_port, bare_port = free_port(), free_port()
    env = {
        **os.environ,
        "HTTP_PORT": str(ours_port),
        "TOPIC_PREFIX": settings.topic_prefix,
        "MONGODB_DATABASE": settings.database_name,
        "CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "LOG_LEVEL": "WARNING",
    }
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "bzpeer_cli.main", "run", "profile"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "bare_page_server.py"), str(bare_port), settings.database_name],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        await wait_ready(f"http://127.0.0.1:{ours_port}/ready")
        await wait_ready(f"http://127.0.0.1:{bare_port}/authors/bench:a0")
        results: dict[str, list[Path]] = {"ours": [], "bare": []}
        for port in (ours_port, bare_port):  # warm up connections and caches
            attack(port, n_authors, 50, 2, workdir / "warmup.bin", seed=1)
        for turn in range(READ_TURNS):
            for i, (name, port) in enumerate((("ours", ours_port), ("bare", bare_port))):
                out = workdir / f"{name}{turn}.bin"
                # Authors of their own for each: the second must not find the first's in a warm cache.
                attack(port, n_authors, rate, seconds / READ_TURNS, out, seed=11 + 2 * turn + i)
                results[name].append(out)
        # The rate each turn held (a merged report would count the pauses between turns).
        rates = {name: min(report([f])["rate"] for f in files) for name, files in results.items()}
        return ({**report(results["ours"]), "rate": rates["ours"]}, {**report(results["bare"]), "rate": rates["bare"]})
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--works", type=int, default=100_000)
    parser.add_argument("--authors", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="read requests per second")
    parser.add_argument("--read-seconds", type=float, default=15.0)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the service's database and topics, and print the run id for --reads-only",
    )
    parser.add_argument(
        "--reads-only", metavar="RUN", help="only measure reads, on the data a --keep run left (its run id)"
    )
    args = parser.parse_args()
    run = args.reads_only or uuid.uuid4().hex[:8]
    prefix = f"bench{run}."
    settings = ProfileSettings(
        topic_prefix=prefix,
        mongodb_database=f"bench{run}_profile",
        consumer_group_prefix=f"bench{run}",
        log_level="WARNING",
    )
    baseline_db = f"bench{run}_baseline"
    topic = prefix + Topic.PUBLICATIONS_INGESTED
    if args.reads_only:
        await report_reads(settings, args)
        return
    await ensure_topics(KAFKA, prefix=prefix)
    try:
        print(f"generating and publishing {args.works:,} works for {args.authors:,} authors ...", flush=True)
        records = make_works(args.works, args.authors)
        expected = expected_counts(records)
        await produce(topic, records)

        ours_s = await run_ours(settings, args.works)
        ours = args.works / ours_s
        print(f"profile service : {ours:9,.0f} works/s  ({ours_s:.1f} s)", flush=True)
        failures = await check_ours(settings, expected)
        print(f"  correctness   : {'OK' if not failures else 'FAILED: ' + '; '.join(failures)}", flush=True)
        base_s = await run_baseline(topic, baseline_db, args.works)
        base = args.works / base_s
        print(f"bare baseline   : {base:9,.0f} works/s  ({base_s:.1f} s)", flush=True)
        base_counts = await stored_counts(baseline_db)
        base_ok = base_counts == expected
        print(f"  correctness   : {'OK' if base_ok else 'FAILED: works counts differ'}", flush=True)
        print(f"ratio           : {ours / base:9.0%}  (target >= 70%)", flush=True)
        await report_reads(settings, args)
    finally:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI)
        await client.drop_database(baseline_db)
        if args.keep:
            print(f"kept for --reads-only {run}: database {settings.database_name}, topics {prefix}*", flush=True)
        else:
            await delete_topics(KAFKA, [prefix + t for t in TOPICS])
            await client.drop_database(settings.database_name)
        await client.close()


async def report_reads(settings: ProfileSettings, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        ours_reads, bare_reads = await measure_reads(
            settings, args.authors, args.rate, args.read_seconds, Path(workdir)
        )
    print(
        f"GET /authors/{{id}} at {args.rate:.0f} req/s, {args.read_seconds:.0f} s each (vegeta, open loop):", flush=True
    )
    for name, r in (("profile service", ours_reads), ("bare page server", bare_reads)):
        lat = r["latencies"]
        print(
            f"  {name}: p50 {lat['50th'] / 1e6:6.1f} ms  p99 {lat['99th'] / 1e6:6.1f} ms  "
            f"({r['requests']} requests, at least {r['rate']:.0f} req/s, success {r['success']:.1%}, "
            f"status {r['status_codes']})",
            flush=True,
        )
    print(
        f"  p99 ratio (ours / bare): {ours_reads['latencies']['99th'] / bare_reads['latencies']['99th']:.2f}  "
        f"(target: <= 2)",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
