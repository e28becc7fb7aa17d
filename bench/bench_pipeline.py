"""Whole-pipeline benchmark: N mixed events (works with co-authors, follows and unfollows,
claims including racing ones; ``tests/mixed_stream.py``) through the four services, each
its own OS process (``tests/pipeline.py``), on the real broker and store.

Prints:
* events/s end to end: N divided by the time from the first send until the system has
  settled (every consumer group committed every record of its inputs, including the
  events the services published to each other, and no service holds pending work);
* p50/p99 from a work's arrival on publications.ingested (the broker acknowledged it) to
  a trust score on GET /authors/{id} of the profile service, for sampled *probe* works
  whose first author appears in no other record (so "visible" is unambiguous), polled;
* a bare baseline in the same run: the same N records passed through by a bare aiokafka
  consumer + producer (read, write to an output topic, commit per batch), and the ratio.

    .local/venv/bin/python bench/bench_pipeline.py [--events 50000] [--probe-every 100]
    .local/venv/bin/python bench/bench_pipeline.py --events 10000 --rate 50   # paced

Sent all at once (the default), the records wait in a backlog and the latency is mostly
that wait; with ``--rate`` below what the pipeline sustains, it is the pipeline's own.

Needs the broker and the store (make infra-up); uses its own topics and databases and
removes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts.topics import TOPICS
from service_runtime.kafka import delete_topics, ensure_topics
from tests.conftest import Namespace
from tests.mixed_stream import TOPICS_IN, MixedStream, mixed_stream
from tests.pipeline import Pipeline

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def send_all(
    stream: MixedStream, producer: AIOKafkaProducer, prefix: str, arrivals: dict[str, float], rate: float = 0.0
) -> None:
    """Send in stream order, all at once or ``rate`` records/s (open loop: the pace does not
    wait for the system); a probe's arrival is when the broker acknowledged it."""
    loop = asyncio.get_running_loop()
    pending = []
    started = loop.time()
    for i, r in enumerate(stream.records):
        if rate and (ahead := started + i / rate - loop.time()) > 0:
            await asyncio.sleep(ahead)
        fut = await producer.send(prefix + r.topic, r.value, key=r.key)
        if r.probe:
            fut.add_done_callback(lambda _f, a=r.author_id: arrivals.setdefault(a, loop.time()))
        pending.append(fut)
    await asyncio.gather(*pending)


async def watch_probes(
    profile_url: str, arrivals: dict[str, float], probes: set[str], visible: dict[str, float], stop: asyncio.Event
) -> None:
    """Poll GET /authors/{id} of every probe that arrived until its trust score shows."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=profile_url, timeout=10.0) as http:
        while not stop.is_set() and len(visible) < len(probes):
            waiting = [a for a in arrivals if a not in visible]
            for author in waiting:
                r = await http.get(f"/authors/{author}")
                if r.status_code == 200 and (r.json().get("trust_snapshot") or {}).get("score") is not None:
                    visible[author] = loop.time()
            await asyncio.sleep(0.05)


async def run_pipeline(stream: MixedStream, settle_timeout: float, rate: float = 0.0) -> dict[str, float]:
    ns = Namespace({"kafka": KAFKA, "mongodb": MONGODB_URI})
    pipe = Pipeline(ns, overrides={n: {"log_level": "WARNING"} for n in ("profile", "claims", "trust", "follow")})
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=5)
    try:
        await pipe.start()
        await producer.start()
        loop = asyncio.get_running_loop()
        probes = {r.author_id for r in stream.records if r.probe}
        arrivals: dict[str, float] = {}
        visible: dict[str, float] = {}
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_probes(pipe.procs["profile"].url, arrivals, probes, visible, stop))
        started = loop.time()
        await send_all(stream, producer, ns.topic_prefix, arrivals, rate)
        sent = loop.time() - started
        print(f"  sent {len(stream):,} records in {sent:.1f} s", flush=True)

        async def progress() -> None:
            while True:
                await asyncio.sleep(10)
                lag = await pipe.lag()
                behind = ", ".join(
                    f"{g.split('.', 1)[-1]} {n:,}" for g, n in sorted(lag.items(), key=lambda x: -x[1]) if n
                )
                print(
                    f"  {loop.time() - started:6.0f} s: lag {sum(lag.values()):,} ({behind or 'none'}), "
                    f"probes visible {len(visible)}/{len(probes)}",
                    flush=True,
                )

        reporter = asyncio.create_task(progress())
        try:
            await pipe.settle(timeout=settle_timeout)
        finally:
            reporter.cancel()
        elapsed = loop.time() - started
        print(f"  settled {elapsed - sent:.1f} s after the last record was sent", flush=True)
        await asyncio.wait_for(watcher, timeout=60)
        stop.set()
        latencies = [visible[a] - arrivals[a] for a in visible]
        return {
            "seconds": elapsed,
            "events_per_s": len(stream) / elapsed,
            "probes": len(probes),
            "visible": len(latencies),
            "p50": pct(latencies, 0.5) if latencies else float("nan"),
            "p99": pct(latencies, 0.99) if latencies else float("nan"),
            "mean": statistics.fmean(latencies) if latencies else float("nan"),
        }
    finally:
        await producer.stop()
        await pipe.stop()
        await delete_topics(KAFKA, [ns.topic(t) for t in TOPICS])
        client: AsyncMongoClient = AsyncMongoClient(MONGODB_URI)
        for db in set(ns.databases):
            await client.drop_database(db)
        await client.close()


async def run_baseline(stream: MixedStream) -> dict[str, float]:
    """The same records through a bare consumer that forwards each one and commits."""
    prefix = f"b{uuid.uuid4().hex[:8]}."
    out_topic = "profile.events"
    await ensure_topics(KAFKA, prefix=prefix)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=5)
    consumer = AIOKafkaConsumer(
        *(prefix + t for t in TOPICS_IN),
        bootstrap_servers=KAFKA,
        group_id=f"{prefix}bare",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    await producer.start()
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sender = asyncio.create_task(send_all(stream, producer, prefix, {}))
        seen = 0
        while seen < len(stream):
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            futures = [
                await producer.send(prefix + out_topic, r.value, key=r.key)
                for records in batches.values()
                for r in records
            ]
            await asyncio.gather(*futures)
            if futures:
                await consumer.commit()
            seen += len(futures)
        await sender
        elapsed = loop.time() - started
        return {"seconds": elapsed, "events_per_s": len(stream) / elapsed}
    finally:
        await consumer.stop()
        await producer.stop()
        await delete_topics(KAFKA, [prefix + t for t in TOPICS])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--probe-every", type=int, default=100, help="every k-th work is a latency probe")
    parser.add_argument("--settle-timeout", type=float, default=4 * 3600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="send this many records/s (default: all at once, the backlog case); the "
        "latency then is the system's own when it keeps up",
    )
    args = parser.parse_args()

    stream = mixed_stream(args.events, seed=args.seed, probe_every=args.probe_every, tag="b")
    counts = stream.counts()
    print(
        f"stream: {len(stream):,} records ({', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))}), "
        f"{len(stream.authors):,} authors, {sum(r.probe for r in stream.records)} probe works"
    )

    print("bare baseline (aiokafka consume -> produce -> commit):", flush=True)
    base = await run_baseline(stream)
    print(f"  {base['events_per_s']:,.0f} events/s ({base['seconds']:.1f} s)")

    print("pipeline (profile, claims, trust, follow: one process each):", flush=True)
    ours = await run_pipeline(stream, args.settle_timeout, args.rate)
    print(f"  {ours['events_per_s']:,.1f} events/s end to end ({ours['seconds']:.1f} s until settled)")
    print(
        f"  work arrival -> trust score on GET /authors/{{id}}: p50 {ours['p50']:.2f} s, p99 {ours['p99']:.2f} s, "
        f"mean {ours['mean']:.2f} s ({ours['visible']}/{ours['probes']} probes)"
    )
    print(f"ratio pipeline / bare baseline (events/s): {ours['events_per_s'] / base['events_per_s']:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
