"""What the services rely on the store for, stated against the running store.

Each test names the code that relies on the guarantee. FerretDB 1 (SQLite) broke the
first three under concurrent clients; FerretDB 2 on PostgreSQL with DocumentDB keeps them.
Every test uses several clients (separate connection pools), as replicas would."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from service_runtime.store import (
    Client,
    Collection,
    Document,
    find_all,
    find_by_ids,
    find_sorted,
    insert_unique,
    upsert_where,
)
from tests.conftest import Namespace

CLIENTS = 8
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def collections(ns: Namespace) -> AsyncIterator[list[Collection]]:
    """The same collection through ``CLIENTS`` clients of their own."""
    name = f"t{ns.id}_store"
    ns.databases.append(name)
    clients: list[Client] = [AsyncMongoClient(ns.infra["mongodb"], maxPoolSize=2) for _ in range(CLIENTS)]
    try:
        yield [c[name]["docs"] for c in clients]
    finally:
        for c in clients:
            await c.close()


async def stored(col: Collection, doc_id: str) -> Document:
    """The document a test wrote before reading it back."""
    document = await col.find_one({"_id": doc_id})
    assert document is not None, f"{doc_id} not stored"
    return document


async def test_inc_is_atomic_across_clients(collections: list[Collection]) -> None:
    """Counters updated by ``$inc`` from several processes (follower counts, sequence
    numbers) add up: no increment is lost."""
    per_client = 250
    await collections[0].insert_one({"_id": "counter", "n": 0})

    async def bump(col: Collection) -> None:
        for _ in range(per_client):
            await col.update_one({"_id": "counter"}, {"$inc": {"n": 1}})

    await asyncio.gather(*(bump(c) for c in collections))
    assert (await stored(collections[0], "counter"))["n"] == CLIENTS * per_client


async def test_add_to_set_is_atomic_across_clients(collections: list[Collection]) -> None:
    """``$addToSet`` from several processes keeps every member once."""
    per_client = 150
    await collections[0].insert_one({"_id": "set", "members": []})

    async def add(col: Collection, client: int) -> None:
        for i in range(per_client):
            # Each member twice: once by its own client, once by the next one.
            await col.update_one({"_id": "set"}, {"$addToSet": {"members": f"{client}-{i}"}})
            await col.update_one({"_id": "set"}, {"$addToSet": {"members": f"{(client + 1) % CLIENTS}-{i}"}})

    await asyncio.gather(*(add(c, n) for n, c in enumerate(collections)))
    members = (await stored(collections[0], "set"))["members"]
    assert len(members) == len(set(members)) == CLIENTS * per_client


async def test_optimistic_guard_is_won_once_per_revision(collections: list[Collection]) -> None:
    """``update_one({_id, revision: r}, {$set: {revision: r + 1}})``, raced by several
    clients, is won by exactly one of them for each r: the revision guards of profile,
    claims and follow (read, decide, write only if nobody wrote meanwhile)."""
    rounds = 60
    await collections[0].insert_one({"_id": "doc", "revision": 0, "winner": None})
    wins: Counter[int] = Counter()

    async def race(col: Collection, client: int) -> None:
        while True:
            doc = await stored(col, "doc")
            revision = doc["revision"]
            if revision >= rounds:
                return
            result = await col.update_one(
                {"_id": "doc", "revision": revision}, {"$set": {"revision": revision + 1, "winner": client}}
            )
            if result.modified_count:
                wins[revision + 1] += 1

    await asyncio.gather(*(race(c, n) for n, c in enumerate(collections)))
    assert sorted(wins) == list(range(1, rounds + 1))
    assert set(wins.values()) == {1}, f"revisions won more than once: {[r for r, n in wins.items() if n > 1]}"


async def test_racing_inserts_of_one_id_have_exactly_one_winner(collections: list[Collection]) -> None:
    """Inserts racing on one ``_id`` (claims' slots, trust's leases, markers): one wins,
    every other gets the duplicate-key error, at once."""
    rounds = 30

    async def insert(col: Collection, client: int, key: str) -> str:
        try:
            await col.insert_one({"_id": key, "by": client})
            return "won"
        except DuplicateKeyError:
            return "duplicate"

    for n in range(rounds):
        results = Counter(await asyncio.gather(*(insert(c, i, f"k{n}") for i, c in enumerate(collections))))
        assert results == Counter(won=1, duplicate=CLIENTS - 1), (n, results)
    assert await collections[0].count_documents({}) == rounds


async def test_racing_creations_of_one_document_keep_both_writes(collections: list[Collection]) -> None:
    """Two writers that may create the same document at once (follow's commands and its
    profile/claims fold, collab's owner and profile folds, profile's standing) both land,
    through ``service_runtime.store.upsert_where``: it creates documents by insert. On this
    store two upserts of one new ``_id`` can both insert, and one's fields are lost without
    an error, so no such write is an upsert."""
    ids = [f"a{i}" for i in range(200)]

    async def write(col: Collection, field: str, author_id: str) -> list[int]:
        guard = {"$or": [{f"{field}.revision": {"$lt": 1}}, {field: None}]}
        return await upsert_where(col, [({"_id": author_id, **guard}, {"$set": {field: {"revision": 1}}})])

    missed = await asyncio.gather(
        *(write(collections[n % CLIENTS], field, a) for n, a in enumerate(ids) for field in ("owner", "profile"))
    )
    assert not any(missed)
    docs = await collections[0].find({}).sort("_id", ASCENDING).to_list(None)
    assert len(docs) == len(ids)
    assert all(d.get("owner") == {"revision": 1} and d.get("profile") == {"revision": 1} for d in docs)
    # A write whose guard does not match (a newer revision stands) is reported, not applied.
    assert await write(collections[1], "owner", ids[0]) == [0]


async def test_secondary_unique_index_has_exactly_one_winner(collections: list[Collection]) -> None:
    """Racing inserts of one key on a secondary unique index: exactly one wins. DocumentDB
    makes such an index an exclusion constraint and answers some losers "deadlock
    detected" (code 16908292) instead of a duplicate key; ``service_runtime.store.insert_unique``
    backs off and looks for the winner (and ``retry_transient``, in every consumer's
    delivery loop and in publishing, retries that code like an outage)."""
    await collections[0].create_index([("slot", ASCENDING)], unique=True, name="slot_unique")
    rounds = 30
    for n in range(rounds):
        slot = f"s{n}"
        won = await asyncio.gather(
            *(insert_unique(c, {"_id": f"{slot}-{i}", "slot": slot}, {"slot": slot}) for i, c in enumerate(collections))
        )
        assert won.count(True) == 1, (n, won)
        assert await collections[0].count_documents({"slot": slot}) == 1
    assert await collections[0].count_documents({}) == rounds


def _index_names(plan: Any) -> Iterator[str]:
    """Index names anywhere in an explain answer: ``indexName`` (MongoDB) or ``Index Name``
    (DocumentDB passes PostgreSQL's plan through)."""
    if isinstance(plan, dict):
        for key, value in plan.items():
            if key in ("indexName", "Index Name") and isinstance(value, str):
                yield value
            else:
                yield from _index_names(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from _index_names(item)


async def test_lookup_by_secondary_field_uses_its_index(collections: list[Collection]) -> None:
    """A find on a field with a secondary index is served by that index (the store's own
    plan says so): projections may look documents up by fields other than ``_id``."""
    col = collections[0]
    await col.insert_many([{"_id": i, "author_id": f"a{i % 500}", "n": i} for i in range(10_000)])
    await col.create_index([("author_id", ASCENDING)], name="by_author")
    plan = await col.database.command(
        "explain", {"find": col.name, "filter": {"author_id": "a42"}}, verbosity="queryPlanner"
    )
    assert "by_author" in set(_index_names(plan)), plan
    assert len(await col.find({"author_id": "a42"}).to_list(None)) == 20


async def test_bulk_update_of_500_statements(collections: list[Collection]) -> None:
    """One bulk write of 500 updates matching existing documents completes (FerretDB 1
    stalled for good on ~100), and reports every match."""
    col = collections[0]
    await col.insert_many([{"_id": f"d{i}", "n": 0} for i in range(500)])
    ops = [UpdateOne({"_id": f"d{i}"}, {"$inc": {"n": 1}, "$set": {"tag": "x"}}) for i in range(500)]
    result = await asyncio.wait_for(col.bulk_write(ops, ordered=False), 60)
    assert result.matched_count == result.modified_count == 500
    assert await col.count_documents({"n": 1, "tag": "x"}) == 500
    # And one find_one_and_update answers the document as it left the update.
    doc = await col.find_one_and_update({"_id": "d0"}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER)
    assert doc is not None and doc["n"] == 2


async def _move_all(col: Collection, ids: list[str], size: int) -> None:
    """Rewrite every document with a body of a new size (each gets a new physical place)."""
    await col.bulk_write([UpdateOne({"_id": i}, {"$set": {"pad": "y" * size}}) for i in ids], ordered=False)


async def test_an_unsorted_cursor_continued_across_updates_is_not_a_snapshot(collections: list[Collection]) -> None:
    """Why complete reads are one first batch (``first_batch``) or sorted (``find_sorted``):
    the batches after an unsorted query's first return documents updated meanwhile twice,
    or not at all. If this ever fails, the store's cursors became snapshots."""
    col, writer = collections[0], collections[1]
    ids = [f"d{i:04d}" for i in range(1000)]
    await col.insert_many([{"_id": i, "pad": "x" * 200} for i in ids])
    wrong = 0
    for trial in range(3):
        seen: list[str] = []
        async for d in col.find({"_id": {"$in": ids}}, batch_size=200):
            seen.append(d["_id"])
            if len(seen) == 50:
                await _move_all(writer, ids, 300 + 200 * trial)
        wrong += len(seen) != len(ids) or set(seen) != set(ids)
    assert wrong > 0


async def test_a_sorted_read_is_one_snapshot_while_the_documents_move(collections: list[Collection]) -> None:
    """The edges of a fan-out, streamed while other follows rewrite every one of them
    after each batch: every follower is read once, in order, as it was when the read began."""
    col, writer = collections[0], collections[1]
    ids = [f"u{i:04d}" for i in range(2000)]
    await col.insert_many([{"_id": f"a/{i}", "author_id": "a", "user_id": i, "pad": "x"} for i in ids])
    seen: list[str] = []
    pads: set[str] = set()
    moves = 0
    async for d in find_sorted(col, {"author_id": "a"}, {"user_id": 1, "pad": 1}, key="user_id", batch_size=300):
        seen.append(d["user_id"])
        pads.add(d["pad"])
        if len(seen) % 300 == 0:
            moves += 1
            await _move_all(writer, [f"a/{i}" for i in ids], 100 * moves)
    assert moves == 6
    assert seen == ids
    assert pads == {"x"}


async def test_find_by_ids_reads_every_id_when_the_answer_is_cut(collections: list[Collection]) -> None:
    """An answer larger than one batch (16 MiB) is cut by the store; it is read again as
    one sorted cursor (``find_all``), while a writer rewrites the documents."""
    col, writer = collections[0], collections[1]
    ids = [f"d{i:03d}" for i in range(250)]
    await col.insert_many([{"_id": i, "pad": "x" * 100_000} for i in ids])
    moving = asyncio.create_task(_move_all(writer, ids, 120_000))
    found = await find_by_ids(col, [*ids, "absent"])
    await moving
    assert sorted(found) == ids
    assert sum(len(d["pad"]) for d in found.values()) >= 250 * 100_000


async def test_find_all_reads_every_document_once_when_the_answer_is_cut(collections: list[Collection]) -> None:
    """An answer larger than one batch (16 MiB) is read again as one sorted cursor: every
    document once, while a writer rewrites them."""
    col, writer = collections[0], collections[1]
    ids = [f"d{i:03d}" for i in range(250)]
    await col.insert_many([{"_id": i, "kind": "big", "pad": "x" * 100_000} for i in ids])
    moving = asyncio.create_task(_move_all(writer, ids, 120_000))
    found = await find_all(col, {"kind": "big"})
    await moving
    assert sorted(d["_id"] for d in found) == ids


def test_no_read_by_ids_continues_a_cursor() -> None:
    """Reads of documents by id go through ``find_by_ids`` (see the unsorted cursor test)."""
    pattern = re.compile(r"\.find\(\s*\{\s*\"_id\": \{\s*\"\$in\"")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("service_runtime", "services", "bzpeer_cli")
        for path in (REPO / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_no_code_path_starts_a_transaction() -> None:
    """FerretDB 2 does not refuse a multi-document transaction: it applies each write on
    its own and fails the commit. No code of ours may start one (or a session that could)."""
    pattern = re.compile(r"\b(start_session|start_transaction|with_transaction|commit_transaction)\b")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("contracts", "service_runtime", "services", "importers", "bzpeer_cli", "bench")
        for path in (REPO / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


async def test_an_or_of_ranges_over_two_indexes_loses_documents(collections: list[Collection]) -> None:
    """Why follow reads each author's range of edges on its own (``edges_in_ranges``):
    with the (author_id, user_id) and (user_id, author_id) indexes, FerretDB 2.5 plans
    ``$or`` of an ``$gt``+``$lte`` branch and a ``$lte`` branch as a bitmap scan whose
    recheck applies the first branch's range to both, and the second branch's documents
    below it are lost. Separate reads answer right. If the store ever answers the ``$or``
    right too, this test says so: the restriction can go."""
    col = collections[0]
    await col.create_index([("author_id", ASCENDING), ("user_id", ASCENDING)], name="followers")
    await col.create_index([("user_id", ASCENDING), ("author_id", ASCENDING)], name="following")
    users = {"b0": ["b0-fan0", "b0-fan1", "b0-fan2", "everyone"], "b6": [f"b6-fan{j}" for j in range(9)] + ["everyone"]}
    await col.insert_many([{"_id": f"{a}|{u}", "author_id": a, "user_id": u} for a, us in users.items() for u in us])
    ranged = {"author_id": "b6", "user_id": {"$gt": "b6-fan6", "$lte": "everyone"}}
    upto = {"author_id": "b0", "user_id": {"$lte": "everyone"}}
    expected = {"b6|b6-fan7", "b6|b6-fan8", "b6|everyone", "b0|b0-fan0", "b0|b0-fan1", "b0|b0-fan2", "b0|everyone"}

    separately = {d["_id"] for query in (ranged, upto) for d in await find_all(col, query)}
    assert separately == expected
    together = {d["_id"] for d in await find_all(col, {"$or": [ranged, upto]})}
    assert expected - together == {"b0|b0-fan0", "b0|b0-fan1", "b0|b0-fan2"}, "the store answers this $or right now"
