"""The profile service's projection in MongoDB/FerretDB.

Collections:

* ``authors`` - one document per registered author: identity, a folded ``name_keys``
  list for search, one compact entry per work (``works``), the derived ``state``
  (contracts' AuthorState), ``revision``, and the ``outbox`` of events written in the
  same single-document update as the change that caused them.
* ``works`` - one document per work (``_id`` = work id), the work as last ingested.
* ``standing`` - what other services decided about an author (claim, trust, followers),
  each part with the revision it came with. Kept apart from ``authors`` so the two
  consumers never write the same document, and so that a trust/claims/follows event
  for an author not registered yet is kept until the author arrives.

Writes are optimistic: an author or standing document is replaced only if it still has
the revision/version that was read; a conflict (another replica wrote it meanwhile)
makes the caller re-read and re-plan. No multi-document transactions are needed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any

from pymongo import ASCENDING, InsertOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from service_runtime.projection import Projection
from service_runtime.store import bulk_update

from services.profile.ingest import AuthorRecord

_DUPLICATE_KEY = 11000

# What a rebuild from the log must reproduce. Left out: the per-author change counter
# (``revision``: a work seen before its author's import in one run and after it in
# another is one AuthorUpdated more or less), optimistic-write versions and the outbox.
PROJECTION = Projection.of(
    authors=("revision", "state.revision", "outbox", "outbox_token"),
    works=(),
    standing=("version",),
)


class WriteConflict(Exception):
    """Another writer changed a document between our read and our write: re-read and retry."""


class ProfileStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.authors = db["authors"]
        self.works = db["works"]
        self.standing = db["standing"]

    async def ensure_indexes(self) -> None:
        await self.authors.create_index([("name_keys", ASCENDING)], name="name_keys")
        await self.authors.create_index([("outbox_token", ASCENDING)], name="outbox_token")

    # --- ingestion ------------------------------------------------------------------

    async def load_works(self, work_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(set(work_ids))
        if not ids:
            return {}
        cursor = self.works.find({"_id": {"$in": ids}}, {"fingerprint": 1, "author_ids": 1})
        return {doc["_id"]: doc async for doc in cursor}

    async def load_authors(self, author_ids: Iterable[str]) -> dict[str, AuthorRecord]:
        ids = list(set(author_ids))
        if not ids:
            return {}
        return {doc["_id"]: AuthorRecord.from_doc(doc) async for doc in self.authors.find({"_id": {"$in": ids}})}

    async def write_authors(self, records: list[AuthorRecord], read_revisions: dict[str, int | None]) -> str:
        """Write changed authors (state + outbox in one document each); returns the outbox
        token they carry. Raises WriteConflict if any was changed by someone else."""
        token = uuid.uuid4().hex
        ops: list[Any] = []
        updates = 0
        for record in records:
            doc = record.to_doc(token)
            expected = read_revisions.get(record.author_id)
            if expected is None:
                ops.append(InsertOne(doc))
            else:
                ops.append(ReplaceOne({"_id": record.author_id, "revision": expected}, doc))
                updates += 1
        if not ops:
            return token
        try:
            matched = (await bulk_update(self.authors, ops)).matched_count
        except BulkWriteError as exc:
            if all(e.get("code") == _DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise WriteConflict("an author was registered concurrently") from None
            raise
        if matched != updates:
            raise WriteConflict(f"{updates - matched} author(s) changed concurrently")
        for record in records:
            record.outbox_token = token
        return token

    async def write_works(self, works: dict[str, dict[str, Any]], stored: set[str]) -> None:
        """New works are inserted, corrected ones replaced: FerretDB inserts a batch in one
        statement but looks up each replaced document on its own."""
        ops: list[Any] = [ReplaceOne({"_id": wid}, doc, upsert=True) if wid in stored else InsertOne(doc)
                          for wid, doc in works.items()]
        if not ops:
            return
        try:
            await bulk_update(self.works, ops)
        except BulkWriteError as exc:
            # Inserted meanwhile by a redelivery or a replica: the same content, keep it.
            if not all(e.get("code") == _DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise

    async def clear_outboxes(self, tokens: dict[str, str]) -> None:
        """Empty the outboxes just published, unless a later write (with a new token,
        carrying these events along) replaced them meanwhile."""
        if tokens:
            await self.authors.update_many(
                {"_id": {"$in": list(tokens)}, "outbox_token": {"$in": list(set(tokens.values()))}},
                {"$set": {"outbox": [], "outbox_token": None}},
            )

    async def pending_outboxes(self, limit: int = 500) -> list[AuthorRecord]:
        """Authors whose outbox was written but not yet published (e.g. after a crash)."""
        cursor = self.authors.find({"outbox_token": {"$ne": None}}).limit(limit)
        return [AuthorRecord.from_doc(doc) async for doc in cursor]

    # --- standing (claims, trust, followers) ------------------------------------------

    async def load_standing(self, author_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(set(author_ids))
        return {doc["_id"]: doc async for doc in self.standing.find({"_id": {"$in": ids}})}

    async def write_standing(self, docs: list[dict[str, Any]], read_versions: dict[str, int | None]) -> None:
        ops: list[Any] = []
        updates = 0
        for doc in docs:
            expected = read_versions.get(doc["_id"])
            if expected is None:
                ops.append(InsertOne(doc))
            else:
                ops.append(ReplaceOne({"_id": doc["_id"], "version": expected}, doc))
                updates += 1
        if not ops:
            return
        try:
            result = await bulk_update(self.standing, ops)
        except BulkWriteError as exc:
            if all(e.get("code") == _DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise WriteConflict("a standing document was created concurrently") from None
            raise
        if result.matched_count != updates:
            raise WriteConflict("a standing document changed concurrently")

    # --- reads for HTTP -------------------------------------------------------------

    async def author(self, author_id: str) -> dict[str, Any] | None:
        return await self.authors.find_one({"_id": author_id}, {"outbox": 0})

    async def standing_of(self, author_id: str) -> dict[str, Any] | None:
        return await self.standing.find_one({"_id": author_id})

    async def works_by_id(self, work_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not work_ids:
            return {}
        return {doc["_id"]: doc["work"] async for doc in self.works.find({"_id": {"$in": work_ids}}, {"work": 1})}

    async def search(self, folded_prefix: str, limit: int) -> list[dict[str, Any]]:
        cursor = self.authors.find(
            {"name_keys": {"$regex": "^" + re.escape(folded_prefix)}},
            {"display_name": 1, "affiliation": 1, "state.works_count": 1},
        ).sort("display_name", ASCENDING).limit(limit)
        return [doc async for doc in cursor]
