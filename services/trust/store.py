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
     outbox: [{topic, key, at, envelope}],              # TrustScoreChanged not published yet
     scored_at}

``trust_history``, one document per published change, made from the TrustScoreChanged
alone (so a rebuild writes the very same one): ``_id`` ``<author id>#<revision>`` (the
revision zero-padded: an event recorded twice is one entry), ``author_id``, ``revision``,
``event_id``, ``changed_at`` and the event's fields (score, band, verification level,
previous score and band, reason, components, formula version, inputs).

``trust_leases``: ``{_id: author id, token, until}`` while a recompute pass holds the
author (see ``claim``).

Every write is one single-document update, guarded where it decides something:

* a signal replaces a source's state only if its revision is newer than the one held
  (``is_newer`` in the filter) and increments ``seq``; a new author is inserted whole
  (an insert that loses to a concurrent one becomes the guarded update);
* a score is stored only if ``seq`` and the held score's revision are still the ones
  read (no signal and no other score arrived meanwhile), with its TrustScoreChanged
  pushed onto the outbox in the same update;
* a pass leases its authors by inserting a lease document each: the unique ``_id``
  lets one pass win.
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
from service_runtime.store import DUPLICATE_KEY, Database, Document, StoreAdapter, find_by_ids, first_batch
from services.trust.scoring import CURRENT
from services.trust.signals import Projection as Signals

AUTHORS = "trust_authors"
HISTORY = "trust_history"
LEASES = "trust_leases"
MARKS = ("dirty_since", "burst_from", "due_at")

# What a rebuild from the log must reproduce: each author's signals and published score,
# and the history. Left out: the coalescing and sequence bookkeeping, the outbox, when
# this copy computed the score, and the leases.
PROJECTION = Projection.of(
    **{AUTHORS: ("seq", "dirty", *MARKS, "outbox", "scored_at"), HISTORY: ()},
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
    due_at: datetime | None  # set while dirty


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
    """Bulk writes of author documents go in ``_id`` order, as the outbox's removals do:
    two bulk writes that take the same documents' row locks in opposite orders deadlock
    in the store (it answers one of them "deadlock detected", retried like an outage)."""

    # Both indexes of trust_authors are partial: they hold only the documents the query
    # looks for (the dirty ones; those scored by an older formula), so the many writes of
    # documents outside them cost no index entry (every update of a document writes an
    # entry into each index that holds it: measured on 1,000 updates, a full (dirty,
    # due_at) index added about half to their cost, the same index partial nothing).
    indexes = {
        AUTHORS: (
            # The sweep (and a rebuild's settling): dirty authors due before a moment.
            IndexModel([("due_at", ASCENDING)], name="due_dirty", partialFilterExpression={"dirty": True}),
            # The rescore: authors scored by an older formula than the current one. Empty
            # once they are rescored; a new formula version adds its own.
            IndexModel(
                [("score.formula_version", ASCENDING)],
                name=f"behind_v{CURRENT.version}",
                partialFilterExpression={"score.formula_version": {"$lt": CURRENT.version}},
            ),
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
        self.leases = db[LEASES]

    # --- signals (the consumer) -------------------------------------------------------

    async def load(self, author_ids: Sequence[str]) -> dict[str, Held]:
        """Each author's signals and coalescing marks."""
        docs = await self.authors.find(
            {"_id": {"$in": list(author_ids)}}, {"signals": 1, "dirty_since": 1, "burst_from": 1, "due_at": 1}
        ).to_list(None)
        return {
            d["_id"]: Held(d.get("signals") or {}, d.get("dirty_since"), d.get("burst_from"), d.get("due_at"))
            for d in docs
        }

    async def save_signals(self, writes: Sequence[SignalWrite]) -> None:
        """One guarded update per author the store holds: each changed source's state
        replaces the held one only if its revision is newer (in the filter: a concurrent
        writer holding a newer one wins); one insert per new author. Each marks the author
        dirty and increments ``seq``.

        An author with several changed sources is one update guarded on all of them; if
        any guard fails (a concurrent writer, rare) that update matches nothing, and the
        sources are then written one by one, each under its own guard (a source already
        written fails its guard: nothing is written twice). An insert that loses to a
        concurrent one is written the same way."""
        writes = sorted(writes, key=lambda w: w.author_id)  # every bulk write in _id order (see class doc)
        created = [w for w in writes if not w.exists]
        updates = [self._signal_update(w, w.changed) for w in writes if w.exists]
        several = [w for w in writes if w.exists and len(w.changed) > 1]
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
                several = sorted(
                    [*several, *(created[i] for i in _ignoring_duplicates(exc))], key=lambda w: w.author_id
                )
        if updates and (await self.authors.bulk_write(updates, ordered=False)).matched_count == len(updates):
            several = [w for w in several if not w.exists]  # only inserts that lost a race are left
        one_by_one = [self._signal_update(w, {s: state}) for w in several for s, state in w.changed.items()]
        if one_by_one:
            await self.authors.bulk_write(one_by_one, ordered=False)

    @staticmethod
    def _signal_update(w: SignalWrite, sources: Signals) -> UpdateOne:
        # is_newer(revision, held) for each source: no state held yet, or an older one.
        guard = {f"signals.{s}.revision": {"$not": {"$gte": state["revision"]}} for s, state in sources.items()}
        return UpdateOne(
            {"_id": w.author_id, **guard},
            {
                "$set": {**{f"signals.{s}": state for s, state in sources.items()}, "dirty": True, "due_at": w.due_at},
                "$min": {"dirty_since": w.dirty_since, "burst_from": w.burst_from},
                "$inc": {"seq": 1},
            },
        )

    # --- recomputation ----------------------------------------------------------------

    async def claim(self, author_ids: Sequence[str], now: datetime, lease_s: float) -> tuple[str, list[Author]]:
        """Lease these authors to this caller and read them; an author another pass holds
        is left out. A lease is a document inserted with the author's id: of two passes
        inserting it, exactly one succeeds. A lease left by a dead pass expires after
        ``lease_s`` and is removed here. (A guarded lease field on the author document
        would be as correct now that a conditional update is atomic, but it rewrites the
        whole author document and its index entries twice per pass: measured on 1,000
        authors, 547 ms against 58 ms for inserting and deleting the lease documents.)"""
        token = uuid.uuid4().hex
        if not author_ids:
            return token, []
        until = now + timedelta(seconds=lease_s)
        held = await self._lease(list(author_ids), token, until)
        if held:  # some held already: those whose lease expired are taken over
            await self.leases.delete_many({"_id": {"$in": held}, "until": {"$lt": now}})
            held = await self._lease(held, token, until)
        taken = set(held)
        mine = [a for a in author_ids if a not in taken]
        if not mine:
            return token, []
        return token, [_author(d) for d in (await find_by_ids(self.authors, mine)).values()]

    async def _lease(self, author_ids: list[str], token: str, until: datetime) -> list[str]:
        """Insert a lease for each author; returns the authors already leased."""
        try:
            await self.leases.insert_many(
                [{"_id": a, "token": token, "until": until} for a in author_ids], ordered=False
            )
        except BulkWriteError as exc:
            return [author_ids[i] for i in _ignoring_duplicates(exc)]
        return []

    async def release(self, token: str, author_ids: Sequence[str]) -> None:
        if author_ids:
            await self.leases.delete_many({"_id": {"$in": list(author_ids)}, "token": token})

    async def save_scores(self, writes: Sequence[ScoreWrite], scored_at: datetime) -> int:
        """Per author, one update whose filter holds the ``seq`` and score revision read:
        the new score (its TrustScoreChanged pushed onto the outbox) and the dirty mark
        cleared, only if no signal and no other score was stored since the read. An author
        whose signals moved meanwhile keeps its old score and stays dirty: the writer of the
        newer signal scheduled it. Returns how many were stored."""
        ops = []
        for w in sorted(writes, key=lambda w: w.author.author_id):  # _id order (see class doc)
            a = w.author
            guard: Document = {
                "_id": a.author_id,
                "seq": {"$exists": False} if a.seq is None else a.seq,
                "score.revision": {"$exists": False} if a.score is None else a.score["revision"],
            }
            update: Document = {"$set": {"dirty": False}, "$unset": dict.fromkeys(MARKS, "")}
            if w.score is not None:
                update["$set"].update(score=w.score, scored_at=scored_at)
            if w.event is not None:
                outbox.push(update, [w.event], scored_at)
            ops.append(UpdateOne(guard, update))
        if not ops:
            return 0
        return (await self.authors.bulk_write(ops, ordered=False)).matched_count

    async def pending(self, author_ids: Sequence[str]) -> dict[str, list[Outgoing]]:
        """What these authors' outboxes hold (read again after a write that lost a guard)."""
        docs = await find_by_ids(self.authors, author_ids, {"outbox": 1})
        return {a: outbox.pending(d) for a, d in docs.items()}

    async def due(self, before: datetime, limit: int) -> dict[str, datetime]:
        """Dirty authors due before ``before``, with when each is due (index ``due_dirty``)."""
        docs, _ = await first_batch(
            self.authors, {"dirty": True, "due_at": {"$lte": before}}, {"due_at": 1}, size=limit
        )
        return {d["_id"]: d["due_at"] for d in docs}

    async def count_dirty(self) -> int:
        return await self.authors.count_documents({"dirty": True})

    async def count_scored(self) -> int:
        return await self.authors.count_documents({"score.formula_version": {"$gte": 1}})

    async def behind_ids(self, formula_version: int, limit: int) -> list[str]:
        """Authors whose score was computed by an older formula (index ``behind_v<version>``).
        An author never scored is dirty, and the service scores it with its own formula."""
        docs, _ = await first_batch(
            self.authors, {"score.formula_version": {"$lt": formula_version}}, {"_id": 1}, size=limit
        )
        return [d["_id"] for d in docs]

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
        held = set(await find_by_ids(self.authors, scores, {"_id": 1}))
        new = [a for a in scores if a not in held]

        def adopt(author_id: str) -> UpdateOne:
            score = scores[author_id]
            return UpdateOne(
                {"_id": author_id, "score.revision": {"$not": {"$gte": score["revision"]}}}, {"$set": {"score": score}}
            )

        update = [a for a in scores if a in held]
        if new:
            try:
                await self.authors.insert_many([{"_id": a, "score": scores[a]} for a in new], ordered=False)
            except BulkWriteError as exc:  # inserted meanwhile (by the signals' consumer)
                update += [new[i] for i in _ignoring_duplicates(exc)]
        if update:
            await self.authors.bulk_write([adopt(a) for a in sorted(update)], ordered=False)

    # --- reads (HTTP, tests) ----------------------------------------------------------

    async def author(self, author_id: str) -> Author | None:
        doc = await self.authors.find_one({"_id": author_id})
        return None if doc is None else _author(doc)

    async def authors_by_id(self, author_ids: Sequence[str]) -> list[Author]:
        return [_author(d) for d in (await find_by_ids(self.authors, author_ids)).values()]

    async def history_page(self, author_id: str, before_revision: int | None, limit: int) -> list[Document]:
        """Up to ``limit`` of the author's history entries, newest first, below
        ``before_revision`` (the cursor) if given (index ``author_revision``)."""
        query: Document = {"author_id": author_id}
        if before_revision is not None:
            query["revision"] = {"$lt": before_revision}
        docs = self.history.find(query, {"_id": 0}).sort("revision", DESCENDING).limit(limit)
        return await docs.to_list(None)
