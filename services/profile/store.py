"""The profile service's projection in MongoDB/FerretDB.

Collections:

* ``authors`` - one document per registered author: identity, a folded ``name_keys``
  list for search, ``works_count``, one compact entry per work and the derived state
  (contracts' AuthorState), packed and as a JSON string (``entries_z``, ``state_json``:
  see ``ingest.stored_entries_and_state``), the page's first works, whole, packed
  (``page_works``: see ``page.pack_works``; cut for ``page_limit`` works, ``page_cursor``
  to the rest), ``revision``,
  and the outbox of events (``outbox_z``, packed) written in the same single-document
  update as the change that caused them.
* ``works`` - one document per work (``_id`` = work id), the work as last ingested
  (``work_json``), its fingerprint and author ids.
* ``outboxes`` - one small document per author write that has events not yet published
  (``_id`` = the outbox token the written authors carry, ``authors``, ``written``). An
  author's outbox is pending while its token has a document here; once its events are
  acknowledged the document is deleted and the outbox left in the author document is
  stale (overwritten by the author's next write). One delete per batch instead of one
  update per author, and the sweep reads this small collection instead of scanning
  ``authors`` (FerretDB scans the whole collection for any filter without ``_id``).
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
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, InsertOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from service_runtime.projection import Projection
from service_runtime.store import bulk_update
from services.profile.ingest import AuthorRecord, stored_entries_and_state, stored_work

_DUPLICATE_KEY = 11000

# What a rebuild from the log must reproduce. Left out: optimistic-write versions and the
# outbox. (The per-author ``revision`` may count changes differently in a rebuild; it is
# taken from the last published event at the end: handlers.adopt_published_revisions.)
PROJECTION = Projection.of(
    json_fields=("entries_z", "entries_json", "state_json", "page_works", "work_json"),
    authors=("outbox_z", "outbox", "outbox_token"),
    works=(),
    standing=("version",),
)


class WriteConflict(Exception):
    """Another writer changed a document between our read and our write: re-read and retry."""


@dataclass(slots=True)
class LoadedAuthors:
    records: dict[str, AuthorRecord]
    # Outbox token -> the authors its write touched, for every pending token the records carry.
    pending: dict[str, set[str]]

    def finished_tokens(self) -> list[str]:
        """Pending tokens all of whose authors are among the records: publishing their
        outboxes (carried along or not) publishes everything that write left pending."""
        carried: dict[str, set[str]] = {}
        for record in self.records.values():
            if record.outbox_token in self.pending:
                carried.setdefault(record.outbox_token, set()).add(record.author_id)
        return [t for t, authors in carried.items() if self.pending[t] <= authors]


class WrittenAuthors:
    """The author records this process wrote last, decoded, up to ``max_entries`` work
    entries in all (least recently used dropped first).

    Every batch reads each author it touches and needs all of its entries and its first
    page; decoding them again was the largest cost of a batch for an author with hundreds
    of works. A record is taken only for the revision it was written with: any other
    writer's change (another replica, a rebuild) moves the revision on."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._records: OrderedDict[str, AuthorRecord] = OrderedDict()
        self._entries = 0

    def get(self, author_id: str) -> AuthorRecord | None:
        record = self._records.get(author_id)
        if record is not None:
            self._records.move_to_end(author_id)
        return record

    def keep(self, records: Iterable[AuthorRecord]) -> None:
        for record in records:
            if (old := self._records.pop(record.author_id, None)) is not None:
                self._entries -= len(old.entries)
            if len(record.entries) <= self.max_entries:
                # Only what ``AuthorRecord.from_doc`` takes from it (not the outbox, which
                # repeats the state in every event).
                self._records[record.author_id] = AuthorRecord(
                    record.author_id,
                    {},
                    record.entries,
                    record.revision,
                    tally=record.tally,
                    first_page=record.first_page,
                )
                self._entries += len(record.entries)
        while self._entries > self.max_entries:
            _, old = self._records.popitem(last=False)
            self._entries -= len(old.entries)


class ProfileStore:
    def __init__(self, db: AsyncDatabase, written_cache_entries: int = 0) -> None:
        self.db = db
        self.written = WrittenAuthors(written_cache_entries)
        self.authors = db["authors"]
        self.works = db["works"]
        self.standing = db["standing"]
        self.outboxes = db["outboxes"]

    async def ensure_indexes(self) -> None:
        await self.authors.create_index([("name_keys", ASCENDING)], name="name_keys")
        # Outboxes are found through ``outboxes`` now; the old index only slowed every write.
        if "outbox_token" in await self.authors.index_information():
            await self.authors.drop_index("outbox_token")

    # --- ingestion ------------------------------------------------------------------

    async def load_works(self, work_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(set(work_ids))
        if not ids:
            return {}
        cursor = self.works.find({"_id": {"$in": ids}}, {"fingerprint": 1, "author_ids": 1})
        return {doc["_id"]: doc async for doc in cursor}

    async def load_authors(self, author_ids: Iterable[str]) -> LoadedAuthors:
        """The authors by id, each with its outbox only if that is still pending (an
        outbox already published is left in the document but read as empty)."""
        ids = list(set(author_ids))
        if not ids:
            return LoadedAuthors({}, {})
        docs = {doc["_id"]: doc async for doc in self.authors.find({"_id": {"$in": ids}}, {"outbox_z": 0, "outbox": 0})}
        pending = await self._pending({doc.get("outbox_token") for doc in docs.values()} - {None})
        with_outbox = [i for i, doc in docs.items() if doc.get("outbox_token") in pending]
        if with_outbox:
            async for doc in self.authors.find(
                {"_id": {"$in": with_outbox}}, {"outbox_z": 1, "outbox": 1, "outbox_token": 1}
            ):
                docs[doc["_id"]].update(
                    outbox_z=doc.get("outbox_z"), outbox=doc.get("outbox"), outbox_token=doc.get("outbox_token")
                )
        records = {}
        for author_id, doc in docs.items():
            if doc.get("outbox_token") not in pending:
                doc.update(outbox_z=None, outbox=[], outbox_token=None)
            records[author_id] = AuthorRecord.from_doc(doc, self.written.get(author_id))
        return LoadedAuthors(records, pending)

    async def set_revisions(self, records: list[AuthorRecord]) -> None:
        """Rebuild only: the revision (and the state's copy of it) of these authors."""
        ops: list[Any] = []
        for record in records:
            doc = record.to_doc(record.outbox_token or "")
            ops.append(
                UpdateOne(
                    {"_id": record.author_id}, {"$set": {"revision": doc["revision"], "state_json": doc["state_json"]}}
                )
            )
        if ops:
            await bulk_update(self.authors, ops)

    async def _pending(self, tokens: set[str]) -> dict[str, set[str]]:
        if not tokens:
            return {}
        return {d["_id"]: set(d["authors"]) async for d in self.outboxes.find({"_id": {"$in": list(tokens)}})}

    async def write_authors(self, records: list[AuthorRecord], read_revisions: dict[str, int | None]) -> str:
        """Write changed authors (state + outbox in one document each); returns the outbox
        token they carry. Raises WriteConflict if any was changed by someone else."""
        token = uuid.uuid4().hex
        if not records:
            return token
        # The marker first: an author carrying this token is pending from its write on.
        await self.outboxes.insert_one(
            {"_id": token, "authors": [r.author_id for r in records], "written": False, "at": datetime.now(UTC)}
        )
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
        # As written: the planner is done with them (a next batch takes copies).
        self.written.keep(records)
        # Every author of this token is written: from now on the sweep may publish it.
        await self.outboxes.update_one({"_id": token}, {"$set": {"written": True}})
        for record in records:
            record.outbox_token = token
        return token

    async def write_works(self, works: dict[str, dict[str, Any]], stored: set[str]) -> None:
        """New works are inserted, corrected ones replaced: FerretDB inserts a batch in one
        statement but looks up each replaced document on its own."""
        ops: list[Any] = [
            ReplaceOne({"_id": wid}, doc, upsert=True) if wid in stored else InsertOne(doc)
            for wid, doc in works.items()
        ]
        if not ops:
            return
        try:
            await bulk_update(self.works, ops)
        except BulkWriteError as exc:
            # Inserted meanwhile by a redelivery or a replica: the same content, keep it.
            if not all(e.get("code") == _DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise

    async def mark_published(self, tokens: Iterable[str]) -> None:
        """The outboxes of these tokens are published: one delete, whatever the number of
        authors (their documents keep the stale outbox until their next write)."""
        if tokens := list(set(tokens)):
            await self.outboxes.delete_many({"_id": {"$in": tokens}})

    async def pending_outboxes(
        self, written_before: datetime, stale_before: datetime, limit: int = 100
    ) -> list[tuple[str, list[AuthorRecord]]]:
        """Outboxes written but not published (e.g. after a crash): each token with the
        authors still carrying it. Tokens written after ``written_before`` are most likely
        being published right now and are left to their writer; a token whose write never
        finished is taken once older than ``stale_before`` (its writer died mid-write)."""
        markers = [
            d
            async for d in self.outboxes.find(
                {"$or": [{"written": True, "at": {"$lt": written_before}}, {"at": {"$lt": stale_before}}]}
            ).limit(limit)
        ]
        found = []
        for marker in markers:
            cursor = self.authors.find({"_id": {"$in": marker["authors"]}})
            found.append(
                (
                    marker["_id"],
                    [AuthorRecord.from_doc(d) async for d in cursor if d.get("outbox_token") == marker["_id"]],
                )
            )
        return found

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

    async def page_source(self, author_id: str) -> dict[str, Any] | None:
        """What the page needs of an author document: its state and stored first page."""
        return await self.authors.find_one(
            {"_id": author_id}, {"state_json": 1, "state": 1, "page_works": 1, "page_limit": 1, "page_cursor": 1}
        )

    async def author(self, author_id: str) -> dict[str, Any] | None:
        doc = await self.authors.find_one({"_id": author_id}, {"outbox_z": 0, "outbox": 0, "name_keys": 0})
        if doc is not None:
            doc["works"], doc["state"] = stored_entries_and_state(doc)
        return doc

    async def standing_of(self, author_id: str) -> dict[str, Any] | None:
        return await self.standing.find_one({"_id": author_id})

    async def works_by_id(self, work_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not work_ids:
            return {}
        cursor = self.works.find({"_id": {"$in": work_ids}}, {"work_json": 1, "work": 1})
        return {doc["_id"]: stored_work(doc) async for doc in cursor}

    async def search(self, folded_prefix: str, limit: int) -> list[dict[str, Any]]:
        cursor = (
            self.authors.find(
                {"name_keys": {"$regex": "^" + re.escape(folded_prefix)}},
                {"display_name": 1, "affiliation": 1, "works_count": 1},
            )
            .sort("display_name", ASCENDING)
            .limit(limit)
        )
        return [doc async for doc in cursor]
