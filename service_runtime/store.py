"""The MongoDB client (PyMongo's async API) and what counts as a transient store failure."""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import AsyncMongoClient
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

TRANSIENT_STORE_ERRORS: tuple[type[BaseException], ...] = (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
)


# DocumentDB (under FerretDB 2) answers some losers of a race on a unique index with
# "deadlock detected" instead of the duplicate-key error 11000; the same write retried
# answers 11000 (or succeeds). ``service_runtime.retry`` retries it like an outage.
DEADLOCK_DETECTED = 16908292


def is_deadlock(exc: BaseException) -> bool:
    """A write that lost a race inside the store and must be retried as it is."""
    if isinstance(exc, BulkWriteError):
        return any(e.get("code") == DEADLOCK_DETECTED for e in exc.details.get("writeErrors", []))
    return isinstance(exc, OperationFailure) and exc.code == DEADLOCK_DETECTED


async def insert_unique(collection: AsyncCollection, document: dict[str, Any], key: dict[str, Any], *,
                        initial_delay_s: float = 0.05, max_delay_s: float = 2.0) -> bool:
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


def connect_store(uri: str) -> AsyncMongoClient:
    # Short server selection: a store outage surfaces quickly as a transient error and is
    # retried by the delivery loop rather than blocking a handler for 30 s.
    return AsyncMongoClient(uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000, tz_aware=True)


def database(client: AsyncMongoClient, name: str) -> AsyncDatabase:
    return client.get_database(name)


async def store_reachable(client: AsyncMongoClient) -> bool:
    try:
        await client.admin.command("ping")
        return True
    except TRANSIENT_STORE_ERRORS:
        return False


# FerretDB 1.24 (SQLite backend) keeps the cursor of every statement of one `update`
# command open until the whole command ends (a deferred close inside its per-statement
# loop), and each open cursor holds one of the 100 connections of that database's pool. A
# command with ~100 updates that match existing documents therefore exhausts the pool and
# the server stalls for good (reproduced with 400 upserts in one bulk_write, even on a
# single client connection). Updates therefore go out in commands of at most this many
# statements, one command at a time per process: far below the pool even with replicas.
UPDATES_PER_COMMAND = 32
_update_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _update_gate() -> asyncio.Semaphore:
    """One gate per event loop (a semaphore belongs to the loop it first waited in)."""
    loop = asyncio.get_running_loop()
    gate = _update_gates.get(loop)
    if gate is None:
        gate = _update_gates[loop] = asyncio.Semaphore(1)
    return gate


@dataclass
class BulkUpdateResult:
    matched_count: int = 0
    modified_count: int = 0
    upserted_ids: dict[int, Any] = field(default_factory=dict)  # index in ``ops`` -> _id

    @property
    def upserted_count(self) -> int:
        return len(self.upserted_ids)


async def bulk_update(collection: AsyncCollection, ops: Sequence[Any], *, ordered: bool = False) -> BulkUpdateResult:
    """``collection.bulk_write(ops)`` in commands FerretDB can take (see above).

    Unordered: every slice is attempted and write errors of all slices are raised together
    (indexes relative to ``ops``); ordered: stops at the first error, like MongoDB."""
    result = BulkUpdateResult()
    errors: list[dict[str, Any]] = []
    for start in range(0, len(ops), UPDATES_PER_COMMAND):
        chunk = ops[start:start + UPDATES_PER_COMMAND]
        try:
            async with _update_gate():
                done = await collection.bulk_write(chunk, ordered=ordered)
            details = done.bulk_api_result
        except BulkWriteError as exc:
            details = exc.details
            errors.extend({**e, "index": e["index"] + start} for e in details.get("writeErrors", []))
        result.matched_count += details.get("nMatched", 0)
        result.modified_count += details.get("nModified", 0)
        result.upserted_ids.update({u["index"] + start: u["_id"] for u in details.get("upserted", [])})
        if errors and ordered:
            break
    if errors:
        raise BulkWriteError({"writeErrors": errors, "nMatched": result.matched_count,
                              "nModified": result.modified_count,
                              "upserted": [{"index": i, "_id": v} for i, v in result.upserted_ids.items()]})
    return result
