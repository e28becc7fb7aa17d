"""The MongoDB client (PyMongo's async API), what counts as a transient store failure,
and ``StoreAdapter``, the base of each service's store module."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, cast

import bson
from pymongo import AsyncMongoClient, IndexModel, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
)

from service_runtime.projection import Projection

# The driver's generic types, as every store module uses them: documents are plain dicts.
Document = dict[str, Any]
Collection = AsyncCollection[Document]
Database = AsyncDatabase[Document]
Client = AsyncMongoClient[Document]

TRANSIENT_STORE_ERRORS: tuple[type[BaseException], ...] = (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
)


DUPLICATE_KEY = 11000

# DocumentDB (under FerretDB 2) answers some losers of a race on a unique index with
# "deadlock detected" instead of the duplicate-key error 11000; the same write retried
# answers 11000 (or succeeds). ``service_runtime.retry`` retries it like an outage.
DEADLOCK_DETECTED = 16908292


def is_deadlock(exc: BaseException) -> bool:
    """A write that lost a race inside the store and must be retried as it is."""
    if isinstance(exc, BulkWriteError):
        return any(e.get("code") == DEADLOCK_DETECTED for e in exc.details.get("writeErrors", []))
    return isinstance(exc, OperationFailure) and exc.code == DEADLOCK_DETECTED


async def insert_unique(
    collection: Collection,
    document: dict[str, Any],
    key: dict[str, Any],
    *,
    initial_delay_s: float = 0.05,
    max_delay_s: float = 2.0,
) -> bool:
    """Insert ``document``, whose ``key`` (a filter on a unique index) other writers may be
    inserting at the same moment: True if this insert won, False if another one did.

    A unique index other than ``_id`` is an exclusion constraint in DocumentDB: racing
    inserts wait on each other, and deadlock detection answers some "deadlock detected"
    instead of a duplicate key. Retried at once, the losers keep the race going and can
    starve the inserts still waiting (measured: 8 clients on one key, minutes). So a loser
    backs off (jittered), and looks for a committed winner before inserting again."""
    delay = initial_delay_s
    while True:
        try:
            await collection.insert_one(document)
            return True
        except DuplicateKeyError:
            return False
        except OperationFailure as exc:
            if exc.code != DEADLOCK_DETECTED:
                raise
        await asyncio.sleep(random.uniform(delay / 2, delay))
        delay = min(delay * 2, max_delay_s)
        if await collection.find_one(key, {"_id": 1}) is not None:
            return False


def duplicate_positions(exc: BulkWriteError) -> list[int]:
    """The positions of the writes a bulk write refused as duplicate keys; ``exc`` is
    raised again if it holds any other error."""
    errors = exc.details.get("writeErrors", [])
    if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return sorted(e["index"] for e in errors)


async def insert_missing(collection: Collection, documents: Sequence[Document]) -> list[int]:
    """Insert the documents whose ``_id`` is new; the positions of those that existed.

    The way to create a document that two writers may create at once. On FerretDB 2.5
    (DocumentDB), two upserts that both find no document with an ``_id`` can both insert
    it, and the fields of one are lost without an error (measured: about 40% of 300 racing
    pairs); two inserts give one winner and a duplicate key. Plain upserts are safe only
    where one writer creates the document (tests/integration/test_store_guarantees.py)."""
    if not documents:
        return []
    try:
        await collection.bulk_write([InsertOne(d) for d in documents], ordered=False)
        return []
    except BulkWriteError as exc:
        return duplicate_positions(exc)


# How DocumentDB (under FerretDB 2.5) answers a find decides both what a read sees and
# what it costs:
# * an unsorted find without a limit streams: its first batch is one snapshot, but later
#   batches (getMore) continue from the physical position of the last document returned,
#   so a document updated between two batches comes twice or not at all (measured: 8 of
#   500 missed in one read of 500 ids while they were updated);
# * a sorted find (or one with a limit above one) runs as a persistent cursor, whose whole
#   answer is one snapshot, but on a PostgreSQL connection of its own that FerretDB closes
#   afterwards, even when the answer fitted one batch: ~10 ms of CPU per query against
#   ~0.6 ms (measured: a 10-document read, 200 times each way).
# So a read that must be complete is one first batch where the answer fits (almost all),
# and a sorted cursor only where it may not.

# As many documents as one batch can hold: the store cuts a batch at 16 MiB first.
_ALL = 1_000_000


async def first_batch(
    collection: Collection, query: Document, projection: Document | None = None, *, size: int = _ALL
) -> tuple[list[Document], bool]:
    """The first batch (at most ``size`` documents, in no particular order) of an unsorted
    query's answer, read from one snapshot, and whether the store held more after it."""
    cursor = collection.find_raw_batches(query, projection, batch_size=size)
    try:
        raw = cast(bytes, await cursor.next())  # typed as the collection's documents; raw BSON here
    except StopAsyncIteration:
        return [], False
    try:
        return bson.decode_all(raw, collection.codec_options), cursor.alive
    finally:
        await cursor.close()


async def find_sorted(
    collection: Collection,
    query: Document,
    projection: Document | None = None,
    *,
    key: str,
    batch_size: int = 2000,
) -> AsyncIterator[Document]:
    """Every document a query finds, each once and as it was when the query ran, in the
    order of ``key``, streamed in batches: for answers that may not fit one batch (the
    edges of a million followers). Costs a store connection of its own (see above)."""
    async for document in collection.find(query, projection, batch_size=batch_size).sort(key, 1):
        yield document


async def find_all(
    collection: Collection, query: Document, projection: Document | None = None, *, key: str = "_id"
) -> list[Document]:
    """Every document a query finds, each read once, in no particular order: one batch, or
    (an answer larger than a batch) a sorted read by ``key``, which must be in the projection."""
    docs, more = await first_batch(collection, query, projection)
    if not more:
        return docs
    return [d async for d in find_sorted(collection, query, projection, key=key, batch_size=_ALL)]


async def find_by_ids(
    collection: Collection,
    ids: Iterable[Any],
    projection: Document | None = None,
    *,
    where: Document | None = None,
) -> dict[Any, Document]:
    """The documents with these ``_id`` (and matching ``where``), each read once and whole
    (``find_all``: one batch, or one sorted cursor where the store cuts the answer)."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    return {d["_id"]: d for d in await find_all(collection, {"_id": {"$in": wanted}, **(where or {})}, projection)}


async def upsert_where(
    collection: Collection, writes: Sequence[tuple[Document, Document]], initial: Document | None = None
) -> list[int]:
    """Conditional upserts that survive racing writers: each ``(filter, update)`` (a filter
    on ``_id`` and a guard) applies where the guard matches, to the document created first
    (with the ``initial`` fields) if none has that ``_id``; the positions of the writes whose
    guard did not match are returned.

    The documents are created by ``insert_missing``; the updates then run as upserts that
    never insert (the documents exist): one whose guard misses answers a duplicate key."""
    if not writes:
        return []
    ids = list(dict.fromkeys(f["_id"] for f, _ in writes))
    await insert_missing(collection, [{"_id": i, **(initial or {})} for i in ids])
    try:
        await collection.bulk_write([UpdateOne(f, u, upsert=True) for f, u in writes], ordered=False)
        return []
    except BulkWriteError as exc:
        return duplicate_positions(exc)


def connect_store(uri: str) -> Client:
    # Short server selection: a store outage surfaces quickly as a transient error and is
    # retried by the delivery loop rather than blocking a handler for 30 s.
    return AsyncMongoClient(uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000, tz_aware=True)


def database(client: Client, name: str) -> Database:
    return client.get_database(name)


def _creating(collection: Collection, models: list[IndexModel]) -> Callable[[], Awaitable[list[str]]]:
    return lambda: collection.create_indexes(models)


class StoreAdapter:
    """Base of a service's store module: the one place that knows its collections, the
    shape of their documents and the driver. Domain modules see plain values.

    A subclass declares its secondary ``indexes`` (created at start, idempotently), the
    collections whose documents carry an outbox (``service_runtime.outbox``; their
    ``outbox_at`` index is added here), and its ``projection`` (what a rebuild from the
    log must reproduce)."""

    indexes: ClassVar[Mapping[str, Sequence[IndexModel]]] = {}
    outbox_collections: ClassVar[tuple[str, ...]] = ()
    projection: ClassVar[Projection]

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_indexes(self) -> None:
        # Replicas starting together create the same indexes at once; concurrent
        # createIndexes on one collection can deadlock in the store (FerretDB issue 5167):
        # retried like an outage.
        from service_runtime.outbox import INDEX as OUTBOX_INDEX
        from service_runtime.retry import retry_transient

        wanted = {name: list(models) for name, models in self.indexes.items()}
        for name in self.outbox_collections:
            wanted.setdefault(name, []).append(OUTBOX_INDEX)
        for name, models in wanted.items():
            collection = self.db[name]
            await retry_transient(_creating(collection, models), what=f"indexes of {name}")


async def store_reachable(client: Client) -> bool:
    try:
        await client.admin.command("ping")
        return True
    except TRANSIENT_STORE_ERRORS:
        return False
