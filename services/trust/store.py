"""Trust's projection in its own database.

``trust_authors``: one document per author: the signals (``profile``, ``claim``,
``followers``, each with its source revision), ``seq`` (bumped on every signal change),
the dirty marker (``dirty``, ``dirty_since``, ``due_at``), the last ``score`` (with the
signals it was computed from), the recompute lease and the ``outbox`` (the
TrustScoreChanged computed but not yet acknowledged by the broker).
``trust_history``: one document per published change, ``_id`` = its event id.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from service_runtime.projection import Projection
from service_runtime.store import bulk_update

AUTHORS = "trust_authors"
HISTORY = "trust_history"
# Every read returns all its documents in its first reply. On FerretDB (SQLite backend)
# a cursor left open between getMores while another connection writes the same
# collection was seen to block the store for every client: never leave one open.
ONE_BATCH = 100_000

# What a rebuild from the log must reproduce: each author's signals and published score,
# and the history. Left out: the coalescing and lease bookkeeping, the outbox, and when
# this copy computed the score.
PROJECTION = Projection.of(**{
    AUTHORS: ("seq", "dirty", "dirty_since", "due_at", "lease", "lease_until", "outbox", "outbox_pending",
              "score.computed_at"),
    HISTORY: (),
})


class TrustStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.authors = db[AUTHORS]
        self.history = db[HISTORY]
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
                                                                  "dirty_since": 1}, batch_size=ONE_BATCH)
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
        """Lease these authors to this caller; each document's update is atomic, so two
        replicas never both hold one (an expired lease, from a dead replica, is taken over)."""
        token = uuid.uuid4().hex
        await self.authors.update_many(
            {"_id": {"$in": author_ids}, "$or": [{"lease_until": {"$exists": False}}, {"lease_until": {"$lt": now}}]},
            {"$set": {"lease": token, "lease_until": now + timedelta(seconds=lease_s)}},
        )
        docs = [doc async for doc in self.authors.find({"lease": token}, batch_size=ONE_BATCH)]
        return token, docs

    async def save_scores(self, token: str, results: list[tuple[dict[str, Any], dict[str, Any], dict | None]]) -> None:
        """Per author: the new score (+ outbox if it changed) and the lease released, by
        bare ``_id``; then the dirty marker cleared only where no signal changed since the
        document was read. FerretDB looks a document up by index only for a bare ``_id``
        filter, so the conditional clear is one update per distinct ``seq`` value read
        (one collection scan each) rather than one conditional update per author."""
        ops: list[UpdateOne] = []
        for doc, score, outbox in results:
            update: dict[str, Any] = {"$set": {"score": score}, "$unset": {"lease": "", "lease_until": ""}}
            if outbox is not None:
                update["$set"].update({"outbox": outbox, "outbox_pending": True})
            ops.append(UpdateOne({"_id": doc["_id"]}, update))
        if not ops:
            return
        await bulk_update(self.authors, ops)
        by_seq: dict[int, list[str]] = {}
        for doc, _, _ in results:
            by_seq.setdefault(doc.get("seq", 0), []).append(doc["_id"])
        for seq, ids in by_seq.items():
            await self.authors.update_many({"_id": {"$in": ids}, "seq": seq},
                                           {"$set": {"dirty": False}, "$unset": {"due_at": "", "dirty_since": ""}})

    async def release(self, author_ids: list[str]) -> None:
        """Give up leases without scoring (the authors stay dirty)."""
        if author_ids:
            await bulk_update(self.authors, [UpdateOne({"_id": a}, {"$unset": {"lease": "", "lease_until": ""}})
                                             for a in author_ids])

    async def pending_outboxes(self, limit: int, author_ids: list[str] | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"outbox_pending": True}
        if author_ids is not None:
            query["_id"] = {"$in": author_ids}
        cursor = self.authors.find(query, {"outbox": 1}, batch_size=ONE_BATCH).limit(limit)
        return [doc async for doc in cursor]

    async def clear_outboxes(self, sent: list[tuple[str, str]]) -> None:
        # The author's lease (or the rescore's single pass) keeps anyone else from writing a
        # newer outbox meanwhile, so a bare _id filter is safe (and indexed on FerretDB).
        ops = [UpdateOne({"_id": author_id}, {"$unset": {"outbox": "", "outbox_pending": ""}}) for author_id, _ in sent]
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
        ops = [UpdateOne({"_id": e["_id"]}, {"$setOnInsert": e}, upsert=True) for e in entries]
        if ops:
            await bulk_update(self.history, ops)

    # --- reads (HTTP) -----------------------------------------------------------------

    async def author(self, author_id: str) -> dict[str, Any] | None:
        return await self.authors.find_one({"_id": author_id})

    async def history_page(self, author_id: str, before_revision: int | None, limit: int) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"author_id": author_id}
        if before_revision is not None:
            query["revision"] = {"$lt": before_revision}
        cursor = self.history.find(query, batch_size=ONE_BATCH).sort("revision", DESCENDING).limit(limit)
        return [doc async for doc in cursor]
