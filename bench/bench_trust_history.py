"""A page of an author's trust history: read by ``_id`` (``TrustStore.history_page``,
the keys of the revisions below the cursor) against the former filter on ``author_id``
with a revision range, a sort and a limit, on the same collection in the same run.

    .local/venv/bin/python bench/bench_trust_history.py              # 50,000 entries
    .local/venv/bin/python bench/bench_trust_history.py --entries 20000 --authors 2000

Entries are spread over the authors (revisions 1..n, n exponential around the mean) and carry
an ``entry`` string of the length the service writes. On FerretDB (SQLite backend) the
filter reads the whole collection, so its time grows with the history; the ``_id`` read
does not. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import DESCENDING, AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_store_lookup import print_comparison, timed

from services.trust.store import HISTORY, ONE_BATCH, TrustStore, history_key

MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
PAGE = 21  # the route asks for limit + 1 (default limit 20)
COMPONENTS = [
    {"name": n, "signal": 12.0, "weight": 10.0, "cap": 25.0, "points": 4.8}
    for n in ("works", "recent_works", "topics", "close_collaborators", "verification_level", "claimed", "followers")
]


def entry_doc(author_id: str, revision: int) -> dict[str, Any]:
    entry = {
        "score": 40 + revision % 50,
        "band": "Established",
        "verification_level": "L1",
        "previous_score": 39 + revision % 50,
        "previous_band": "Established",
        "reason": "works count 27 -> 28",
        "components": COMPONENTS,
        "formula_version": 1,
        "signals": {
            "works_count": 28,
            "recent_works": 12,
            "topics": 9,
            "close_collaborators": 4,
            "verification_level": "L1",
            "claimed": False,
            "followers": 3,
        },
    }
    return {
        "_id": history_key(author_id, revision),
        "event_id": str(uuid.uuid4()),
        "author_id": author_id,
        "revision": revision,
        "entry": json.dumps(entry, sort_keys=True, separators=(",", ":")),
        "changed_at": datetime.now(UTC),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--authors", type=int, default=5_000)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(7)
    mean = max(1, args.entries // args.authors)
    counts = {f"a{i:06d}": 1 + int(rng.expovariate(1 / mean)) for i in range(args.authors)}
    client: AsyncMongoClient = AsyncMongoClient(MONGODB_URI)
    name = f"bench_trust_history_{uuid.uuid4().hex[:8]}"
    store = TrustStore(client[name])
    col = client[name][HISTORY]
    try:
        docs = [entry_doc(a, r) for a, n in counts.items() for r in range(1, n + 1)][: args.entries]
        for start in range(0, len(docs), 5000):
            await col.insert_many(docs[start : start + 5000])
        newest: dict[str, int] = {}
        for d in docs:
            newest[d["author_id"]] = max(newest.get(d["author_id"], 0), d["revision"])
        # Authors with more than a page, so the second page has a cursor to go from.
        long = sorted(a for a, n in newest.items() if n > PAGE)
        keys = rng.sample(long, min(args.samples, len(long)))

        def old(author_id: str, before: int | None) -> Awaitable[list[dict[str, Any]]]:
            query: dict[str, Any] = {"author_id": author_id}
            if before is not None:
                query["revision"] = {"$lt": before}
            return col.find(query, batch_size=ONE_BATCH).sort("revision", DESCENDING).limit(PAGE).to_list(None)

        for a in keys[:2]:  # both read the same page
            new_page = await store.history_page(a, newest[a], None, PAGE)
            assert [d["revision"] for d in new_page] == [d["revision"] for d in await old(a, None)]
        rows = [
            (
                "first page (no cursor)",
                await timed(lambda a: store.history_page(a, newest[a], None, PAGE), keys),
                await timed(lambda a: old(a, None), keys),
            ),
            (
                "next page (cursor)",
                await timed(lambda a: store.history_page(a, newest[a], newest[a] - 20, PAGE), keys),
                await timed(lambda a: old(a, newest[a] - 20), keys),
            ),
        ]
        print(
            f"{len(docs):,} history entries over {len(newest):,} authors; pages of {PAGE}; median ms per page "
            f"over {len(keys)} authors"
        )
        print_comparison(("page", "by _id (keys)", "filter author_id (scan)"), rows)
    finally:
        await client.drop_database(name)
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
