"""Read a topic from offset 0 to its current end, without a consumer group (for replays,
audits and tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from service_runtime.offsets import partitions_of


async def iter_topic(
    bootstrap_servers: str, topic: str, batch: int = 2000, *, stall_s: float = 60.0
) -> AsyncIterator[list[ConsumerRecord]]:
    """Yield batches of records of every partition, up to the end offsets seen at the start.
    A partition that gives nothing for ``stall_s`` while short of its end is an error
    (``TimeoutError``), not a wait without end."""
    tps = await partitions_of(bootstrap_servers, [topic])
    if not tps:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        loop = asyncio.get_running_loop()
        progress_at = loop.time()
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=batch)
            if any(fetched.values()):
                progress_at = loop.time()
            elif loop.time() - progress_at > stall_s:
                behind = {f"{tp.topic}[{tp.partition}]": (await consumer.position(tp), end[tp]) for tp in remaining}
                raise TimeoutError(f"no record for {stall_s:.0f}s short of the end (position, end): {behind}")
            out: list[ConsumerRecord] = []
            for tp, records in fetched.items():
                for r in records:
                    if r.offset < end[tp]:
                        out.append(r)
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
            if out:
                yield out
    finally:
        await consumer.stop()


async def read_topic(bootstrap_servers: str, topic: str) -> list[ConsumerRecord]:
    records: list[ConsumerRecord] = []
    async for chunk in iter_topic(bootstrap_servers, topic):
        records.extend(chunk)
    return records
