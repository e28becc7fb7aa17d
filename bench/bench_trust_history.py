"""A page of an author's trust history: the indexed read the service does
(``TrustStore.history_page``: ``author_id`` and a revision range, sorted, through the
``author_revision`` index) against the former read by keys (the ``_id``s of the next
revisions below the cursor, one ``_id $in``), on the same collection in the same run.

    .local/venv/bin/python bench/bench_trust_history.py              # 50,000 entries
    .local/venv/bin/python bench/bench_trust_history.py --entries 20000 --authors 2000

Entries are spread over the authors (revisions 1..n, n exponential around the mean) and
have the service's plain shape. On FerretDB 1 (SQLite) a filter on ``author_id`` read the
whole collection, so the service read pages by keys; on FerretDB 2 the secondary index
serves it, and neither read grows with the history. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_store_lookup import print_comparison, timed

from services.trust.store import HISTORY, TrustStore, history_key

MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
PAGE = 21  # the route asks for limit + 1 (default limit 20)
COMPONENTS = [
    {"name": n, "signal": 12.0, "weight": 10.0, "cap": 25.0, "points": 4.8}
    for n in ("works", "recent_works", "topics", "close_collaborators", "verification_level", "claimed", "followers")
]


def entry_doc(author_id: str, revision: int) -> dict[str, Any]:
    return {
        "_id": history_key(author_id, revision),
        "event_id": str(uuid.uuid4()),
        "changed_at": datetime.now(UTC),
        "author_id": author_id,
        "revision": revision,
        "score": 40 + revision % 50,
        "band": "Established",
        "verification_level": "L1",
        "previous_score": 39 + revision % 50,
        "previous_band": "Established",
        "reason": "works count 27 -> 28",
        "components": COMPONENTS,
        "formula_version": 1,
        "inputs": {
            "works_count": 28,
            "recent_works": 12,
            "topics": 9,
            "close_collaborators": 4,
            "verification_level": "L1",
            "claimed": False,
            "followers": 3,
        },
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
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URI)
    name = f"bench_trust_history_{uuid.uuid4().hex[:8]}"
    store = TrustStore(client[name])
    col = client[name][HISTORY]
    try:
        await store.create_indexes()
        docs = [entry_doc(a, r) for a, n in counts.items() for r in range(1, n + 1)][: args.entries]
        for start in range(0, len(docs), 5000):
            await col.insert_many(docs[start : start + 5000])
        newest: dict[str, int] = {}
        for d in docs:
            newest[d["author_id"]] = max(newest.get(d["author_id"], 0), d["revision"])
        # Authors with more than a page, so the second page has a cursor to go from.
        long = sorted(a for a, n in newest.items() if n > PAGE)
        keys = rng.sample(long, min(args.samples, len(long)))

        def by_keys(author_id: str, before: int | None) -> Awaitable[list[dict[str, Any]]]:
            top = newest[author_id] if before is None else before - 1
            wanted = [history_key(author_id, r) for r in range(top, max(0, top - PAGE), -1)]
            return col.find({"_id": {"$in": wanted}}).to_list(None)

        for a in keys[:2]:  # both read the same page
            page = await store.history_page(a, None, PAGE)
            assert sorted(d["revision"] for d in page) == sorted(d["revision"] for d in await by_keys(a, None))
        rows = [
            (
                "first page (no cursor)",
                await timed(lambda a: store.history_page(a, None, PAGE), keys),
                await timed(lambda a: by_keys(a, None), keys),
            ),
            (
                "next page (cursor)",
                await timed(lambda a: store.history_page(a, newest[a] - 20, PAGE), keys),
                await timed(lambda a: by_keys(a, newest[a] - 20), keys),
            ),
        ]
        print(
            f"{len(docs):,} history entries over {len(newest):,} authors; pages of {PAGE}; median ms per page "
            f"over {len(keys)} authors"
        )
        print_comparison(("page", "indexed query", "by keys (_id $in)"), rows)
    finally:
        await client.drop_database(name)
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
