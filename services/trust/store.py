"""Trust's projection in its own database.

``trust_authors``: one document per author: the signals (``profile``, ``claim``,
``followers``, each with its source revision), ``seq`` (bumped on every signal change),
the dirty marker (``dirty``, ``dirty_since``, ``burst_from``, ``due_at``), the last
``score`` (with the signals it was computed from) and the ``outbox`` (the
TrustScoreChanged computed but not yet acknowledged by the broker).
``trust_history``: one document per published change, ``_id`` = its event id.
``trust_leases``: one document per author being recomputed, ``_id`` = the author id. An
insert is the one write FerretDB arbitrates between connections (the unique ``_id``), so
the lease is taken by inserting it, never by updating a field (see ``claim``).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError
from pymongo.asynchronous.database import AsyncDatabase

from service_runtime.projection import Projection
from service_runtime.store import bulk_update

AUTHORS = "trust_authors"
HISTORY = "trust_history"
LEASES = "trust_leases"
# Every read returns all its documents in its first reply. On FerretDB (SQLite backend)
# a cursor left open between getMores while another connection writes the same
# collection was seen to block the store for every client: never leave one open.
ONE_BATCH = 100_000
DUPLICATE_KEY = 11000

# What a rebuild from the log must reproduce: each author's signals and published score,
# and the history. Left out: the coalescing and lease bookkeeping, the outbox, and when
# this copy computed the score.
PROJECTION = Projection.of(**{
    AUTHORS: ("seq", "dirty", "dirty_since", "due_at", "burst_from", "outbox", "outbox_pending", "score.computed_at"),
    HISTORY: (),
})


class TrustStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.authors = db[AUTHORS]
        self.history = db[HISTORY]
        self.leases = db[LEASES]
        # The consumer (signals) and the recomputer (scores) write the same author documents.
        # FerretDB applies an update as a read-modify-write that is not atomic across
        # connections, so two concurrent writers can lose each other's change (a score
        # computed from stale signals was seen to stick). Each read-then-write runs under
        # this lock, which makes them one writer per process.
        self.write_lock = asyncio.Lock()

    async def create_indexes(self) -> None:
        await self.authors.create_index([("dirty", ASCENDING), ("due_at", ASCENDING)])
        await self.authors.create_index([("score.formula_version", ASCENDING)])
        await self.authors.create_index([("outbox_pending", ASCENDING)])
        await self.history.create_index([("author_id", ASCENDING), ("revision", DESCENDING)])

    # --- signals (the consumer) -------------------------------------------------------

    async def load(self, author_ids: list[str]) -> dict[str, dict[str, Any]]:
        cursor = self.authors.find({"_id": {"$in": author_ids}}, {"profile": 1, "claim": 1, "followers": 1,
                                                                  "dirty_since": 1, "burst_from": 1}, batch_size=ONE_BATCH)
        return {doc["_id"]: doc async for doc in cursor}

    async def save_signals(self, changes: list[UpdateOne]) -> None:
        if changes:
            await bulk_update(self.authors, changes)

    # --- recomputation ----------------------------------------------------------------

    async def due_ids(self, now: datetime, limit: int) -> list[str]:
        cursor = self.authors.find({"dirty": True, "due_at": {"$lte": now}}, {"_id": 1}, batch_size=ONE_BATCH).limit(limit)
        return [doc["_id"] async for doc in cursor]

    @staticmethod
    def _behind(formula_version: int) -> dict[str, Any]:
        """Authors with a profile whose score was computed by an older formula, or never."""
        return {"profile": {"$exists": True}, "$or": [
            {"score.formula_version": {"$lt": formula_version}}, {"score": {"$exists": False}}]}

    async def behind_ids(self, formula_version: int, limit: int) -> list[str]:
        cursor = self.authors.find(self._behind(formula_version), {"_id": 1}, batch_size=ONE_BATCH).sort("_id", ASCENDING).limit(limit)
        return [doc["_id"] async for doc in cursor]

    async def count_behind(self, formula_version: int) -> int:
        return await self.authors.count_documents(self._behind(formula_version))

    async def claim(self, author_ids: list[str], now: datetime, lease_s: float) -> tuple[str, list[dict[str, Any]]]:
        """Lease these authors to this caller and read them; an author another replica
        holds is left out. A lease is a document inserted with the author's id: of two
        replicas inserting it, exactly one succeeds. (A conditional ``update_many`` on a
        lease field is not enough: FerretDB reads, checks and writes back each document
        in separate steps, so two replicas could both see it free and both take it.)
        A lease left by a dead replica expires after ``lease_s`` and is removed here."""
        token = uuid.uuid4().hex
        if not author_ids:
            return token, []
        await self.leases.delete_many({"_id": {"$in": author_ids}, "until": {"$lt": now}})
        until = now + timedelta(seconds=lease_s)
        held: set[str] = set()
        try:
            await self.leases.insert_many([{"_id": a, "token": token, "until": until} for a in author_ids], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            held = {author_ids[e["index"]] for e in errors}
        mine = [a for a in author_ids if a not in held]
        if not mine:
            return token, []
        docs = [doc async for doc in self.authors.find({"_id": {"$in": mine}}, batch_size=ONE_BATCH)]
        return token, docs

    async def release(self, token: str, author_ids: list[str]) -> None:
        if author_ids:
            await self.leases.delete_many({"_id": {"$in": author_ids}, "token": token})

    async def save_scores(self, results: list[tuple[dict[str, Any], dict[str, Any], dict | None]]) -> int:
        """Per author, one update by ``_id`` and the ``seq`` read: the new score (+ outbox
        if it changed) and the dirty marker cleared, only if no signal arrived since the
        document was read (indexed on FerretDB: the filter holds the ``_id``). An author
        whose signals moved meanwhile keeps its old score and stays dirty, so it is scored
        again from the newer signals. Returns how many scores were stored."""
        ops: list[UpdateOne] = []
        for doc, score, outbox in results:
            update: dict[str, Any] = {"$set": {"score": score, "dirty": False}, "$unset": {"due_at": "", "dirty_since": "",
                                                                                         "burst_from": ""}}
            if outbox is not None:
                update["$set"].update({"outbox": outbox, "outbox_pending": True})
            seq = doc["seq"] if "seq" in doc else {"$exists": False}
            ops.append(UpdateOne({"_id": doc["_id"], "seq": seq}, update))
        if not ops:
            return 0
        return (await bulk_update(self.authors, ops)).matched_count

    async def pending_outboxes(self, limit: int, author_ids: list[str] | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"outbox_pending": True}
        if author_ids is not None:
            query["_id"] = {"$in": author_ids}
        cursor = self.authors.find(query, {"outbox": 1}, batch_size=ONE_BATCH).limit(limit)
        return [doc async for doc in cursor]

    async def clear_outboxes(self, sent: list[tuple[str, str]]) -> None:
        # Only the outbox that was published: a newer one stored meanwhile stays (indexed
        # on FerretDB: the filter holds the _id).
        ops = [UpdateOne({"_id": author_id, "outbox.envelope.event_id": event_id},
                         {"$unset": {"outbox": "", "outbox_pending": ""}}) for author_id, event_id in sent]
        if ops:
            await bulk_update(self.authors, ops)

    async def adopt_scores(self, scores: dict[str, dict[str, Any]]) -> None:
        """Set each author's score to the one given unless it holds a later revision (rebuild)."""
        held = {doc["_id"]: doc.get("score") async for doc in
                self.authors.find({"_id": {"$in": list(scores)}}, {"score": 1}, batch_size=ONE_BATCH)}
        ops = [UpdateOne({"_id": a}, {"$set": {"score": s}}, upsert=True) for a, s in scores.items()
               if not held.get(a) or held[a]["revision"] < s["revision"]]
        if ops:
            await bulk_update(self.authors, ops)

    async def record_history(self, entries: list[dict[str, Any]]) -> None:
        """Insert the entries; one already there (same event id: a pass that died after
        recording it) stays as it is. One insert command stores a whole batch in one go on
        FerretDB, where every updated or upserted document costs a write of its own."""
        if not entries:
            return
        try:
            await self.history.insert_many(entries, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise

    # --- reads (HTTP) -----------------------------------------------------------------

    async def author(self, author_id: str) -> dict[str, Any] | None:
        return await self.authors.find_one({"_id": author_id})

    async def history_page(self, author_id: str, before_revision: int | None, limit: int) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"author_id": author_id}
        if before_revision is not None:
            query["revision"] = {"$lt": before_revision}
        cursor = self.history.find(query, batch_size=ONE_BATCH).sort("revision", DESCENDING).limit(limit)
        return [doc async for doc in cursor]
