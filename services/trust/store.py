"""Trust's projection in its own database: the one module that knows the stored shape.

``trust_authors``, one document per author, plain subdocuments::

    {_id: "openalex:A1",
     signals: {profile: {revision, works_count, works_by_year: {"2020": 16, ...}, topics,
                         close_collaborators, record_level},
               claim: {revision, claimed, level},
               followers: {revision, count}},           # each source present once seen
     score: {score, band, verification_level, components: [{name, signal, weight, cap, points}],
             formula_version, revision, inputs: {works_count, recent_works, topics,
             close_collaborators, verification_level, claimed, followers}},
     seq,                                               # + 1 with every signal change
     dirty, dirty_since, burst_from, due_at,            # coalescing: scored when due
     lease: {token, until},                             # a recompute pass holds the author
     outbox: [{topic, key, at, envelope}],              # TrustScoreChanged not published yet
     scored_at}

``trust_history``, one document per published change, made from the TrustScoreChanged
alone (so a rebuild writes the very same one): ``_id`` ``<author id>#<revision>`` (the
revision zero-padded: an event recorded twice is one entry), ``author_id``, ``revision``,
``event_id``, ``changed_at`` and the event's fields (score, band, verification level,
previous score and band, reason, components, formula version, inputs).

Every write is one single-document update, guarded where it decides something:

* a signal replaces a source's state only if its revision is newer than the one held
  (``is_newer`` in the filter) and increments ``seq``; a new author is inserted whole
  (an insert that loses to a concurrent one becomes the guarded update);
* a score is stored only if ``seq`` and the held score's revision are still the ones
  read (no signal and no other score arrived meanwhile), with its TrustScoreChanged
  pushed onto the outbox in the same update;
* a pass leases its authors with a guarded ``update_many`` (free, or expired) and reads
  back the ones it got.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.errors import BulkWriteError

from contracts.envelope import Envelope
from contracts.events.common import TrustBand, VerificationLevel
from contracts.events.trust import TrustScoreChanged
from service_runtime import outbox
from service_runtime.projection import Projection
from service_runtime.publishing import Outgoing
from service_runtime.store import Database, Document, StoreAdapter
from services.trust.signals import Projection as Signals

AUTHORS = "trust_authors"
HISTORY = "trust_history"
DUPLICATE_KEY = 11000
MARKS = ("dirty_since", "burst_from", "due_at")

# What a rebuild from the log must reproduce: each author's signals and published score,
# and the history. Left out: the coalescing, sequence and lease bookkeeping, the outbox,
# and when this copy computed the score.
PROJECTION = Projection.of(
    **{AUTHORS: ("seq", "dirty", *MARKS, "lease", "outbox", "scored_at"), HISTORY: ()},
)


class Score(TypedDict):
    """An author's current score as stored (the fields of its TrustScoreChanged that
    describe the score itself)."""

    score: int
    band: TrustBand
    verification_level: VerificationLevel
    components: list[dict[str, Any]]  # name, signal, weight, cap, points
    formula_version: int
    revision: int
    inputs: dict[str, Any] | None  # what it was computed from (None: an event of an older producer)


@dataclass(frozen=True, slots=True)
class Author:
    author_id: str
    signals: Signals
    score: Score | None
    dirty: bool
    seq: int | None  # the signals' sequence number as read (guards a score write)
    pending: tuple[Outgoing, ...]  # events stored with a score and not published yet

    @property
    def registered(self) -> bool:
        """The profile service has registered the author (only then is it scored)."""
        return "profile" in self.signals


@dataclass(frozen=True, slots=True)
class Held:
    """What the consumer reads of an author before writing its signals."""

    signals: Signals
    dirty_since: datetime | None
    burst_from: datetime | None


@dataclass(frozen=True, slots=True)
class SignalWrite:
    """An author's sources whose state is newer than the one read, and its coalescing marks."""

    author_id: str
    changed: Signals  # source -> new state (with its revision)
    exists: bool  # the author document was there when read
    dirty_since: datetime
    burst_from: datetime
    due_at: datetime


@dataclass(frozen=True, slots=True)
class ScoreWrite:
    author: Author  # as read under the lease: its seq and score revision guard the write
    score: Score | None  # None: not registered, nothing to score; only the dirty mark goes
    event: Outgoing | None  # the TrustScoreChanged when score or band moved
    release: bool  # give the lease back in the same update (nothing left to publish)


def history_key(author_id: str, revision: int) -> str:
    """The ``_id`` of an author's history entry of this revision: zero-padded, so the keys
    of one author sort as its revisions; ``#`` never occurs in an author id."""
    return f"{author_id}#{revision:010d}"


def history_document(envelope: Envelope, event: TrustScoreChanged) -> Document:
    """The history entry of a published TrustScoreChanged, made of the event alone."""
    data = event.model_dump(mode="json")
    return {
        "_id": history_key(event.author_id, event.revision),
        "event_id": str(envelope.event_id),
        "changed_at": envelope.occurred_at,
        **data,
    }


def _author(doc: Document) -> Author:
    return Author(
        author_id=doc["_id"],
        signals=doc.get("signals") or {},
        score=doc.get("score"),
        dirty=bool(doc.get("dirty")),
        seq=doc.get("seq"),
        pending=tuple(outbox.pending(doc)),
    )


def _ignoring_duplicates(exc: BulkWriteError) -> list[int]:
    """The indexes of the writes a bulk refused as duplicate keys; any other error is raised."""
    errors = exc.details.get("writeErrors", [])
    if any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return [e["index"] for e in errors]


class TrustStore(StoreAdapter):
    indexes = {
        AUTHORS: (
            # The sweep: dirty authors due before a moment (left by a restart or a dead replica).
            IndexModel([("dirty", ASCENDING), ("due_at", ASCENDING)], name="dirty_due"),
            # The rescore: authors scored by an older formula.
            IndexModel([("score.formula_version", ASCENDING)], name="formula_version"),
        ),
        # A page of an author's history: its revisions below a cursor, newest first.
        HISTORY: (IndexModel([("author_id", ASCENDING), ("revision", DESCENDING)], name="author_revision"),),
    }
    outbox_collections = (AUTHORS,)
    projection = PROJECTION

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.authors = db[AUTHORS]
        self.history = db[HISTORY]

    # --- signals (the consumer) -------------------------------------------------------

    async def load(self, author_ids: Sequence[str]) -> dict[str, Held]:
        """Each author's signals and coalescing marks."""
        docs = await self.authors.find(
            {"_id": {"$in": list(author_ids)}}, {"signals": 1, "dirty_since": 1, "burst_from": 1}
        ).to_list(None)
        return {d["_id"]: Held(d.get("signals") or {}, d.get("dirty_since"), d.get("burst_from")) for d in docs}

    async def save_signals(self, writes: Sequence[SignalWrite]) -> None:
        """One guarded update per changed source of an author the store holds (the state
        replaces the held one only if its revision is newer: a concurrent writer with a
        newer one wins), one insert per new author (whose loser to a concurrent insert is
        written as guarded updates). Each marks the author dirty and increments ``seq``."""
        created = [w for w in writes if not w.exists]
        updates = [op for w in writes if w.exists for op in self._signal_updates(w)]
        if created:
            try:
                await self.authors.insert_many(
                    [
                        {
                            "_id": w.author_id,
                            "signals": w.changed,
                            "seq": 1,
                            "dirty": True,
                            "dirty_since": w.dirty_since,
                            "burst_from": w.burst_from,
                            "due_at": w.due_at,
                        }
                        for w in created
                    ],
                    ordered=False,
                )
            except BulkWriteError as exc:
                updates += [op for i in _ignoring_duplicates(exc) for op in self._signal_updates(created[i])]
        if updates:
            await self.authors.bulk_write(updates, ordered=False)

    @staticmethod
    def _signal_updates(w: SignalWrite) -> list[UpdateOne]:
        return [
            UpdateOne(
                # is_newer(revision, held): no state held yet, or an older one.
                {"_id": w.author_id, f"signals.{source}.revision": {"$not": {"$gte": state["revision"]}}},
                {
                    "$set": {f"signals.{source}": state, "dirty": True, "due_at": w.due_at},
                    "$min": {"dirty_since": w.dirty_since, "burst_from": w.burst_from},
                    "$inc": {"seq": 1},
                },
            )
            for source, state in w.changed.items()
        ]

    # --- recomputation ----------------------------------------------------------------

    async def claim(self, author_ids: Sequence[str], now: datetime, lease_s: float) -> tuple[str, list[Author]]:
        """Lease these authors to this caller and read them; an author another pass holds
        (its lease not expired) is left out. The guarded update is atomic per document, so
        of two passes exactly one takes each author; an expired lease (its pass died) is
        simply taken over."""
        token = uuid.uuid4().hex
        if not author_ids:
            return token, []
        ids = list(author_ids)
        await self.authors.update_many(
            {"_id": {"$in": ids}, "lease.until": {"$not": {"$gt": now}}},
            {"$set": {"lease": {"token": token, "until": now + timedelta(seconds=lease_s)}}},
        )
        docs = await self.authors.find({"_id": {"$in": ids}, "lease.token": token}).to_list(None)
        return token, [_author(d) for d in docs]

    async def release(self, token: str, author_ids: Sequence[str]) -> None:
        if author_ids:
            await self.authors.update_many(
                {"_id": {"$in": list(author_ids)}, "lease.token": token}, {"$unset": {"lease": ""}}
            )

    async def save_scores(self, writes: Sequence[ScoreWrite], scored_at: datetime) -> int:
        """Per author, one update whose filter holds the ``seq`` and score revision read:
        the new score (its TrustScoreChanged pushed onto the outbox) and the dirty mark
        cleared, only if no signal and no other score was stored since the read. An author
        whose signals moved meanwhile keeps its old score and stays dirty: the writer of the
        newer signal scheduled it. Returns how many were stored."""
        ops = []
        for w in writes:
            a = w.author
            guard: Document = {
                "_id": a.author_id,
                "seq": {"$exists": False} if a.seq is None else a.seq,
                "score.revision": {"$exists": False} if a.score is None else a.score["revision"],
            }
            update: Document = {"$set": {"dirty": False}, "$unset": dict.fromkeys(MARKS, "")}
            if w.score is not None:
                update["$set"].update(score=w.score, scored_at=scored_at)
            if w.release:
                update["$unset"]["lease"] = ""
            if w.event is not None:
                outbox.push(update, [w.event], scored_at)
            ops.append(UpdateOne(guard, update))
        if not ops:
            return 0
        return (await self.authors.bulk_write(ops, ordered=False)).matched_count

    async def pending(self, author_ids: Sequence[str]) -> dict[str, list[Outgoing]]:
        """What these authors' outboxes hold (read again after a write that lost a guard)."""
        docs = await self.authors.find({"_id": {"$in": list(author_ids)}}, {"outbox": 1}).to_list(None)
        return {d["_id"]: outbox.pending(d) for d in docs}

    async def due(self, before: datetime, limit: int) -> dict[str, datetime]:
        """Dirty authors due before ``before``, with when each is due (index ``dirty_due``)."""
        docs = self.authors.find({"dirty": True, "due_at": {"$lte": before}}, {"due_at": 1}).limit(limit)
        return {d["_id"]: d["due_at"] async for d in docs}

    async def count_dirty(self) -> int:
        return await self.authors.count_documents({"dirty": True})

    async def count_scored(self) -> int:
        return await self.authors.count_documents({"score.formula_version": {"$gte": 1}})

    async def behind_ids(self, formula_version: int, limit: int) -> list[str]:
        """Authors whose score was computed by an older formula (index ``formula_version``).
        An author never scored is dirty, and the service scores it with its own formula."""
        docs = self.authors.find({"score.formula_version": {"$lt": formula_version}}, {"_id": 1}).limit(limit)
        return [d["_id"] async for d in docs]

    async def count_behind(self, formula_version: int) -> int:
        return await self.authors.count_documents({"score.formula_version": {"$lt": formula_version}})

    async def with_pending_events(self) -> list[str]:
        """Authors whose outbox still holds an event (index ``outbox_at``)."""
        return [d["_id"] async for d in self.authors.find({"outbox.at": {"$exists": True}}, {"_id": 1})]

    # --- from trust.events (the history, and a rebuild's scores) ---------------------

    async def record_history(self, entries: Sequence[Document]) -> None:
        """Insert the entries; one already there (the same change recorded before) stays."""
        if entries:
            try:
                await self.history.insert_many(list(entries), ordered=False)
            except BulkWriteError as exc:
                _ignoring_duplicates(exc)

    async def adopt_scores(self, scores: Mapping[str, Score]) -> None:
        """Rebuild: each author's score becomes the one given unless it holds a later
        revision (guarded in the filter); an author not there yet is inserted."""
        held = {d["_id"] for d in await self.authors.find({"_id": {"$in": list(scores)}}, {"_id": 1}).to_list(None)}
        new = [a for a in scores if a not in held]

        def adopt(author_id: str) -> UpdateOne:
            score = scores[author_id]
            return UpdateOne(
                {"_id": author_id, "score.revision": {"$not": {"$gte": score["revision"]}}}, {"$set": {"score": score}}
            )

        ops = [adopt(a) for a in scores if a in held]
        if new:
            try:
                await self.authors.insert_many([{"_id": a, "score": scores[a]} for a in new], ordered=False)
            except BulkWriteError as exc:
                ops += [adopt(new[i]) for i in _ignoring_duplicates(exc)]
        if ops:
            await self.authors.bulk_write(ops, ordered=False)

    # --- reads (HTTP, tests) ----------------------------------------------------------

    async def author(self, author_id: str) -> Author | None:
        doc = await self.authors.find_one({"_id": author_id})
        return None if doc is None else _author(doc)

    async def authors_by_id(self, author_ids: Sequence[str]) -> list[Author]:
        return [_author(d) for d in await self.authors.find({"_id": {"$in": list(author_ids)}}).to_list(None)]

    async def history_page(self, author_id: str, before_revision: int | None, limit: int) -> list[Document]:
        """Up to ``limit`` of the author's history entries, newest first, below
        ``before_revision`` (the cursor) if given (index ``author_revision``)."""
        query: Document = {"author_id": author_id}
        if before_revision is not None:
            query["revision"] = {"$lt": before_revision}
        docs = self.history.find(query, {"_id": 0}).sort("revision", DESCENDING).limit(limit)
        return await docs.to_list(None)
