"""Trust's projection in its own database.

``trust_authors``: one small, flat document per author. FerretDB (SQLite backend)
decodes and re-encodes the whole document on every read and update, at a cost that grows
with the number of nested values, while a JSON string is one value: the nested parts are
therefore stored as JSON strings (``signals``: the ``profile``, ``claim`` and
``followers`` states, each with its source revision; ``score``: the last score with its
breakdown and the signals it was computed from). Beside them, scalars: ``registered``
(the profile registered the author), ``seq`` (bumped on every signal change), the dirty
marker (``dirty``, ``dirty_since``, ``burst_from``, ``due_at``), the score's
``formula_version`` and ``scored_at``, and the last ``TrustScoreChanged`` this copy
computed (``outbox``: its envelope as JSON, ``outbox_key``: the ``_id`` its history entry
gets, see ``history_key``).
``trust_history``: one document per published change, ``_id`` = ``<author id>#<revision,
zero-padded>`` (``history_key``), with ``event_id``, ``author_id``, ``revision``,
``changed_at`` and the rest as one JSON string (``entry``). The key makes a page of an
author's history one ``_id $in`` (the only indexed read on FerretDB): an author's
revisions are 1, 2, ... n without a gap, each change publishing the next one. Its
presence is also the broker's acknowledgement of the outbox: an outbox whose key has no
history entry is not published yet, so publishing costs one insert per batch of changes
and no update per author to clear the outbox.
``trust_leases``: one document per author being recomputed, ``_id`` = the author id. An
insert is the one write FerretDB arbitrates between connections (the unique ``_id``), so
the lease is taken by inserting it, never by updating a field (see ``claim``).

Readers get decoded documents: ``{"_id", "profile", "claim", "followers", "seq",
"dirty", ..., "score": {...} (once scored), "outbox": str, "outbox_key": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from service_runtime.projection import Projection
from service_runtime.store import bulk_update
from services.trust.signals import SOURCES

AUTHORS = "trust_authors"
HISTORY = "trust_history"
LEASES = "trust_leases"
# Every read returns all its documents in its first reply. On FerretDB (SQLite backend)
# a cursor left open between getMores while another connection writes the same
# collection was seen to block the store for every client: never leave one open.
ONE_BATCH = 100_000
DUPLICATE_KEY = 11000
IDS_PER_QUERY = 500  # an _id $in of this many is one indexed query on FerretDB
MARKS = ("dirty_since", "burst_from", "due_at")

# What a rebuild from the log must reproduce: each author's signals and published score,
# and the history. Left out: the coalescing and lease bookkeeping, the outbox, and when
# this copy computed the score.
PROJECTION = Projection.of(
    **{
        AUTHORS: ("seq", "dirty", "dirty_since", "due_at", "burst_from", "outbox", "outbox_key", "scored_at"),
        HISTORY: (),
    },
    json_fields=("signals", "score", "entry"),
)


def history_key(author_id: str, revision: int) -> str:
    """The ``_id`` of an author's history entry of this revision: zero-padded, so the keys
    of one author sort as its revisions; ``#`` never occurs in an author id."""
    return f"{author_id}#{revision:010d}"


def encode(value: Any) -> str:
    """A value the store keeps as one JSON string (keys sorted: equal values, equal strings)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _decoded(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored author document as readers see it (JSON strings decoded)."""
    out = {k: v for k, v in doc.items() if k not in ("signals", "score")}
    if "signals" in doc:
        out.update(json.loads(doc["signals"]))
    if doc.get("score"):
        out["score"] = json.loads(doc["score"])
    return out


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
        # Used by MongoDB; FerretDB's SQLite backend uses only the _id index (see
        # docs/architecture.md), which is why no hot path filters on these fields.
        await self.authors.create_index([("dirty", ASCENDING), ("due_at", ASCENDING)])
        await self.authors.create_index([("formula_version", ASCENDING)])

    async def _by_ids(
        self, collection, ids: list[str], projection: dict[str, int] | None = None
    ) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        for start in range(0, len(ids), IDS_PER_QUERY):
            cursor = collection.find(
                {"_id": {"$in": ids[start : start + IDS_PER_QUERY]}}, projection, batch_size=ONE_BATCH
            )
            docs += [doc async for doc in cursor]
        return docs

    # --- signals (the consumer) -------------------------------------------------------

    async def load(self, author_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each author's signals and coalescing marks (decoded)."""
        docs = await self._by_ids(self.authors, author_ids, {"signals": 1, "dirty_since": 1, "burst_from": 1})
        return {doc["_id"]: _decoded(doc) for doc in docs}

    @staticmethod
    def signal_update(author_id: str, projection: dict[str, Any], marks: dict[str, Any]) -> UpdateOne:
        """The write of an author's new signals (all sources, one JSON string) and marks."""
        fields = {"signals": encode({k: projection[k] for k in SOURCES if k in projection}), **marks}
        if "profile" in projection:
            fields["registered"] = True
        return UpdateOne({"_id": author_id}, {"$set": fields, "$inc": {"seq": 1}}, upsert=True)

    async def save_signals(self, changes: list[UpdateOne]) -> None:
        if changes:
            await bulk_update(self.authors, changes)

    # --- recomputation ----------------------------------------------------------------

    async def due_ids(self, now: datetime, limit: int) -> list[str]:
        """Dirty authors due by ``now``. Reads the whole collection on FerretDB: the sweep only."""
        cursor = self.authors.find({"dirty": True, "due_at": {"$lte": now}}, {"_id": 1}, batch_size=ONE_BATCH).limit(
            limit
        )
        return [doc["_id"] async for doc in cursor]

    async def count_dirty(self) -> int:
        return await self.authors.count_documents({"dirty": True})

    async def count_scored(self) -> int:
        return await self.authors.count_documents({"score": {"$exists": True}})

    @staticmethod
    def _behind(formula_version: int) -> dict[str, Any]:
        """Authors with a profile whose score was computed by an older formula, or never."""
        return {
            "registered": True,
            "$or": [{"formula_version": {"$lt": formula_version}}, {"formula_version": {"$exists": False}}],
        }

    async def behind_ids(self, formula_version: int, limit: int) -> list[str]:
        cursor = (
            self.authors.find(self._behind(formula_version), {"_id": 1}, batch_size=ONE_BATCH)
            .sort("_id", ASCENDING)
            .limit(limit)
        )
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
        for start in range(0, len(author_ids), IDS_PER_QUERY):
            await self.leases.delete_many(
                {"_id": {"$in": author_ids[start : start + IDS_PER_QUERY]}, "until": {"$lt": now}}
            )
        until = now + timedelta(seconds=lease_s)
        held: set[str] = set()
        try:
            await self.leases.insert_many(
                [{"_id": a, "token": token, "until": until} for a in author_ids], ordered=False
            )
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            held = {author_ids[e["index"]] for e in errors}
        mine = [a for a in author_ids if a not in held]
        if not mine:
            return token, []
        return token, [_decoded(doc) for doc in await self._by_ids(self.authors, mine)]

    async def release(self, token: str, author_ids: list[str]) -> None:
        for start in range(0, len(author_ids), IDS_PER_QUERY):
            await self.leases.delete_many({"_id": {"$in": author_ids[start : start + IDS_PER_QUERY]}, "token": token})

    async def save_scores(
        self, results: list[tuple[dict[str, Any], dict[str, Any], dict | None]], scored_at: datetime
    ) -> list[str]:
        """Per author, one update by ``_id`` and the ``seq`` read: the new score (+ the
        TrustScoreChanged as the outbox if it changed; an older outbox, published by then,
        is dropped) and the dirty marker cleared, only if no signal arrived since the
        document was read (indexed on FerretDB: the filter holds the ``_id``). An author
        whose signals moved meanwhile keeps its old score and stays dirty, so it is scored
        again from the newer signals. Returns the ids of the authors whose score was stored."""
        scored_at = scored_at.replace(microsecond=scored_at.microsecond // 1000 * 1000)  # as the store keeps it
        ops: list[UpdateOne] = []
        for doc, score, outbox in results:
            update: dict[str, Any] = {
                "$set": {
                    "score": encode(score),
                    "formula_version": score["formula_version"],
                    "scored_at": scored_at,
                    "dirty": False,
                },
                "$unset": dict.fromkeys(MARKS, ""),
            }
            if outbox is not None:
                update["$set"].update(
                    outbox=encode(outbox), outbox_key=history_key(doc["_id"], outbox["data"]["revision"])
                )
            else:
                update["$unset"].update(outbox="", outbox_key="")
            seq = doc.get("seq", {"$exists": False})
            ops.append(UpdateOne({"_id": doc["_id"], "seq": seq}, update))
        if not ops:
            return []
        if (await bulk_update(self.authors, ops)).matched_count == len(ops):
            return [doc["_id"] for doc, _, _ in results]
        # Some author's signals moved meanwhile (another replica's consumer): which scores
        # are stored is read back (their ``scored_at`` is this pass's; the lease keeps other
        # passes away).
        stored = await self._by_ids(self.authors, [doc["_id"] for doc, _, _ in results], {"scored_at": 1})
        return [d["_id"] for d in stored if d.get("scored_at") == scored_at]

    async def unpublished(
        self, docs: list[dict[str, Any]], acknowledged: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """The documents among these whose outbox has no history entry (not acknowledged).
        History keys in ``acknowledged`` (known to be there) are not looked up again; those
        found are added to it."""
        known = acknowledged if acknowledged is not None else set()
        with_outbox = {d["outbox_key"]: d for d in docs if d.get("outbox_key") and d["outbox_key"] not in known}
        if not with_outbox:
            return []
        found = {h["_id"] for h in await self._by_ids(self.history, list(with_outbox), {"_id": 1})}
        known.update(found)
        return [d for event_id, d in with_outbox.items() if event_id not in found]

    async def sweep_scan(self, acknowledged: set[str] | None = None) -> tuple[dict[str, datetime], list[str]]:
        """One read of the whole collection (FerretDB filters without ``_id`` scan it, so
        this runs seldom): the dirty authors with when each is due, and the authors whose
        outbox was never acknowledged."""
        cursor = self.authors.find(
            {"$or": [{"dirty": True}, {"outbox_key": {"$exists": True}}]},
            {"dirty": 1, "due_at": 1, "outbox_key": 1},
            batch_size=ONE_BATCH,
        )
        docs = [doc async for doc in cursor]
        dirty = {d["_id"]: d["due_at"] for d in docs if d.get("dirty") and d.get("due_at") is not None}
        return dirty, [d["_id"] for d in await self.unpublished(docs, acknowledged)]

    async def pending_outboxes(self) -> list[str]:
        """Authors whose last TrustScoreChanged is not acknowledged yet (a full read)."""
        return (await self.sweep_scan())[1]

    async def adopt_scores(self, scores: dict[str, dict[str, Any]]) -> None:
        """Set each author's score to the one given unless it holds a later revision (rebuild)."""
        held = {
            doc["_id"]: _decoded(doc).get("score")
            for doc in await self._by_ids(self.authors, list(scores), {"score": 1})
        }
        ops = [
            UpdateOne({"_id": a}, {"$set": {"score": encode(s), "formula_version": s["formula_version"]}}, upsert=True)
            for a, s in scores.items()
            if not held.get(a) or held[a]["revision"] < s["revision"]
        ]
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
        doc = await self.authors.find_one({"_id": author_id})
        return None if doc is None else _decoded(doc)

    async def authors_by_id(self, author_ids: list[str]) -> list[dict[str, Any]]:
        return [_decoded(doc) for doc in await self._by_ids(self.authors, author_ids)]

    async def history_page(
        self, author_id: str, newest_revision: int, before_revision: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` history entries of the author, newest first, below
        ``before_revision`` (the cursor) if given, from ``newest_revision`` (its score's)
        down. The revisions are contiguous, so the page is the keys of the next ``limit``
        revisions: one ``_id $in``, never a filter on ``author_id`` (a scan of the whole
        history on FerretDB). A revision without an entry (the newest one while its change
        is being published) costs one more read of the keys below, not a short page."""
        top = newest_revision if before_revision is None else min(newest_revision, before_revision - 1)
        docs: list[dict[str, Any]] = []
        while top >= 1 and len(docs) < limit:
            want = min(limit - len(docs), IDS_PER_QUERY)
            found = await self._by_ids(
                self.history, [history_key(author_id, r) for r in range(top, max(0, top - want), -1)]
            )
            docs += sorted(found, key=lambda d: d["revision"], reverse=True)
            top -= want
        return [
            {**{k: v for k, v in doc.items() if k not in ("_id", "entry")}, **json.loads(doc["entry"])} for doc in docs
        ]
