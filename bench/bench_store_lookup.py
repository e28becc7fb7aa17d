"""What the store's ``_id`` index is worth: lookups and updates by ``_id`` against the same
lookups by a field without an index (a scan of the collection), in the same run.

    .local/venv/bin/python bench/bench_store_lookup.py              # 100,000 documents
    .local/venv/bin/python bench/bench_store_lookup.py --docs 20000

FerretDB 1.24 as released never uses its ``_id`` index on SQLite (every ``_id`` lookup
scans); ``scripts/infra.sh`` builds it with ``infra/ferretdb/sqlite-id-index.patch``. With
the patch the ``_id`` rows are milliseconds or less and the ratio to the scan is large;
without it both rows scan and the ratio is about 1. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import AsyncMongoClient, UpdateOne

MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")


async def timed(op: Callable[[str], Awaitable[Any]], keys: list[str]) -> float:
    """Median milliseconds of ``op`` over ``keys``, one at a time."""
    times = []
    for key in keys:
        started = time.perf_counter()
        await op(key)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def print_comparison(columns: tuple[str, str, str], rows: list[tuple[str, float, float]]) -> None:
    """Rows of (label, ms by _id, ms the other way) and how many times faster ``_id`` is."""
    width = max(len(columns[0]), *(len(label) for label, _, _ in rows))
    print(f"{columns[0]:{width}} {columns[1]:>14} {columns[2]:>26} {'ratio':>8}")
    for label, by_id, other in rows:
        print(f"{label:{width}} {by_id:14.2f} {other:26.2f} {other / by_id:8.0f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    client: AsyncMongoClient = AsyncMongoClient(MONGODB_URI)
    name = f"bench_lookup_{uuid.uuid4().hex[:8]}"
    col = client[name]["docs"]
    try:
        for start in range(0, args.docs, 5000):
            await col.insert_many(
                [
                    {"_id": f"d{i}", "key": f"d{i}", "version": 1, "payload": "x" * 200}
                    for i in range(start, min(start + 5000, args.docs))
                ]
            )
        rng = random.Random(7)
        keys = [f"d{rng.randrange(args.docs)}" for _ in range(args.samples)]
        batch = [f"d{rng.randrange(args.docs)}" for _ in range(500)]
        rows = [
            (
                "find_one",
                await timed(lambda k: col.find_one({"_id": k}), keys),
                await timed(lambda k: col.find_one({"key": k}), keys),
            ),
            (
                "update_one, conditional ({_id, version})",
                await timed(lambda k: col.update_one({"_id": k, "version": 1}, {"$set": {"seen": True}}), keys),
                await timed(lambda k: col.update_one({"key": k, "version": 1}, {"$set": {"seen": True}}), keys),
            ),
            (
                "find 500 with $in",
                await timed(lambda _: col.find({"_id": {"$in": batch}}).to_list(None), keys[:3]),
                await timed(lambda _: col.find({"key": {"$in": batch}}).to_list(None), keys[:3]),
            ),
            (
                "bulk of 32 conditional updates",
                await timed(
                    lambda _: col.bulk_write(
                        [UpdateOne({"_id": k, "version": 1}, {"$set": {"n": 1}}) for k in batch[:32]]
                    ),
                    keys[:3],
                ),
                await timed(
                    lambda _: col.bulk_write(
                        [UpdateOne({"key": k, "version": 1}, {"$set": {"n": 1}}) for k in batch[:32]]
                    ),
                    keys[:3],
                ),
            ),
        ]
        print(f"{args.docs:,} documents; median ms per operation")
        print_comparison(("operation", "by _id", "by unindexed field (scan)"), rows)
    finally:
        await client.drop_database(name)
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
