"""The claims service's store: the only module that knows the driver and the stored shape.

* ``claims``: one document per claim, in plain fields: ``author_id``, ``user_id``,
  ``status``, ``level``, ``reason``, ``detail``, ``evidence`` (a subdocument),
  ``show_owner``, ``created_at``, ``updated_at``, ``waiting_since`` (only while it waits
  for its author), ``revision`` (inputs that changed it), ``history`` (one subdocument per
  step), ``applied`` (ids of those inputs), ``author_claim`` (the record's claim state after
  the claim's last step) and ``outbox`` (``service_runtime.outbox``: events written with
  the state, not known to be published yet).
* ``authors``: one document per author record: ``identity`` (from profile.events:
  ``display_name``, ``orcid``, ``domains``, ``revision``; null while only a claim names the
  record) and ``claim`` (the record's claim state, as ``AuthorClaimState``).
* ``users``: one document per user holding open or approved claims: ``open`` and
  ``approved``, the claim ids, sorted; deleted when both are empty.

Writes are guarded, never read-modify-write under a lock: a claim by its ``revision``, an
author record by its two revisions (identity and claim), a user's slots by the arrays
read. A write that finds the document changed raises ``WriteConflict``: the caller reads
again and decides again (``retry_conflicts``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from pymongo import ASCENDING, DeleteOne, IndexModel, InsertOne, UpdateOne
from pymongo.errors import BulkWriteError

from contracts.events.claims import AuthorClaimState, ClaimHistoryEntry, Evidence
from service_runtime import outbox
from service_runtime.outbox import WriteConflict
from service_runtime.projection import Projection
from service_runtime.publishing import Outgoing
from service_runtime.store import DUPLICATE_KEY, Collection, Database, Document, StoreAdapter, find_all
from services.claims.rules import (
    APPROVED_SLOT,
    HELD,
    OPEN_SLOT,
    PENDING_AUTHOR,
    UNCLAIMED,
    AuthorRecord,
    Book,
    Claim,
    Identity,
    Limits,
    Slots,
)

KINDS = (OPEN_SLOT, APPROVED_SLOT)
Op = InsertOne[Document] | UpdateOne | DeleteOne


@dataclass(frozen=True, slots=True)
class _ReadClaim:
    revision: int
    history: int  # entries stored
    applied: int
    waiting: bool


@dataclass
class Loaded:
    """A book and what its guarded writes must find unchanged."""

    book: Book
    claims: dict[str, _ReadClaim] = field(default_factory=dict)
    authors: dict[str, tuple[int | None, int]] = field(default_factory=dict)  # identity, claim revision
    users: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # slots as read
    pending: dict[str, list[Outgoing]] = field(default_factory=dict)  # outbox events still to publish


class ClaimsStore(StoreAdapter):
    indexes: ClassVar[Mapping[str, Sequence[IndexModel]]] = {
        "claims": [
            # A record's open and approved claims: what a decision on the record must see.
            IndexModel([("author_id", ASCENDING), ("status", ASCENDING)], name="by_author_status"),
            # Claims waiting for their author, longest wait first: the sweeper's. Sparse:
            # only those claims have the field (every index costs each update of a claim).
            IndexModel([("waiting_since", ASCENDING)], name="by_waiting_since", sparse=True),
        ],
    }
    outbox_collections: ClassVar[tuple[str, ...]] = ("claims",)
    # What a rebuild from the log must reproduce: all of it but the outbox (what is still
    # to publish says how this copy got there, not what the log says).
    projection: ClassVar[Projection] = Projection.of(claims=("outbox",), authors=(), users=())

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.claims: Collection = db.claims
        self.authors: Collection = db.authors
        self.users: Collection = db.users

    # --- loading a book -----------------------------------------------------------------

    async def load_book(
        self,
        author_ids: Iterable[str],
        claim_ids: Iterable[str],
        user_ids: Iterable[str],
        limits: Limits,
        *,
        clock: datetime,
        causes: Iterable[str] = (),
    ) -> Loaded:
        """What deciding for these inputs needs: the records, the claims named, every open
        or approved claim of the records and every claim of theirs these inputs (``causes``:
        their ids) changed already, the slots of every user concerned, and the claims
        holding those slots.

        The claims these inputs changed already, and the claims holding the slots: an
        earlier attempt that stopped after writing its claims and before freeing their
        slots left slots held by claims that no longer hold them (a claim rejected when
        its author arrived); the book frees them (``Slots.reconcile``)."""
        authors = sorted(set(author_ids))
        of_records: Document = {"author_id": {"$in": authors}, "status": {"$in": sorted(HELD)}}
        if wanted_causes := sorted(set(causes)):
            of_records = {
                "author_id": {"$in": authors},
                "$or": [{"status": {"$in": sorted(HELD)}}, {"applied": {"$in": wanted_causes}}],
            }
        author_docs, named, held = await asyncio.gather(
            _by_ids(self.authors, authors),
            _by_ids(self.claims, claim_ids),
            _find(self.claims, of_records, authors),
        )
        claim_docs = {d["_id"]: d for d in named + held}
        # A record whose write an earlier attempt did not finish may name a claim that is
        # neither named nor held any more (withdrawn): its state is in that claim.
        stale = {d["claim"]["claim_id"] for d in author_docs if d["claim"].get("claim_id")} - claim_docs.keys()
        if stale:
            claim_docs |= {d["_id"]: d for d in await _by_ids(self.claims, stale)}
        user_docs = await _by_ids(self.users, {*user_ids, *(d["user_id"] for d in claim_docs.values())})
        holding = {cid for d in user_docs for kind in KINDS for cid in d[kind]} - claim_docs.keys()
        more = await _by_ids(self.claims, holding)
        # Their records too: the book heals a record from its claims' states.
        author_docs += await _by_ids(self.authors, {d["author_id"] for d in more} - set(authors))
        loaded = _loaded(author_docs, [*claim_docs.values(), *more], user_docs, limits, clock)
        for d in more:  # their outboxes are their own writers' (or the sweeper's) to publish
            loaded.pending.pop(d["_id"], None)
        return loaded

    async def load_records(
        self,
        author_ids: Iterable[str],
        claim_ids: Iterable[str],
        user_ids: Iterable[str],
        limits: Limits,
        *,
        clock: datetime,
    ) -> Loaded:
        """Records, claims and users' slots by id, nothing else (what a rebuild folds into)."""
        author_docs, claim_docs, user_docs = await asyncio.gather(
            _by_ids(self.authors, author_ids), _by_ids(self.claims, claim_ids), _by_ids(self.users, user_ids)
        )
        return _loaded(author_docs, claim_docs, user_docs, limits, clock)

    # --- saving -------------------------------------------------------------------------

    async def save(self, loaded: Loaded, outboxes: Mapping[str, Sequence[Outgoing]]) -> None:
        """Write what the book changed, each write guarded by what was read; raise
        ``WriteConflict`` when another writer got there first.

        In this order, so that an interruption anywhere is healed by the next attempt:
        slots taken (before the claims that take them: no user is ever over a limit),
        claims with their new events in their outbox, author records (an attempt that
        stops before them leaves each claim's ``author_claim``, also in its events, for
        the next to heal from), slots freed."""
        book = loaded.book
        missing = set(outboxes) - book.dirty_claims
        assert not missing, f"events for claims not written: {sorted(missing)}"
        slot_writes = self._slot_writes(loaded)
        await _guarded(self.users, slot_writes.taken)
        at = datetime.now(UTC)
        await _guarded(
            self.claims,
            [self._claim_write(loaded, cid, outboxes.get(cid, ()), at) for cid in sorted(book.dirty_claims)],
        )
        await _guarded(self.authors, [self._author_write(loaded, aid) for aid in sorted(book.dirty_authors)])
        for ops in await slot_writes.freeing(self.users):
            if ops:
                await self.users.bulk_write(ops, ordered=False)

    def _claim_write(self, loaded: Loaded, claim_id: str, events: Sequence[Outgoing], at: datetime) -> Op:
        claim = loaded.book.claims[claim_id]
        doc = _claim_doc(claim)
        read = loaded.claims.get(claim_id)
        if read is None:
            return InsertOne({"_id": claim_id, **doc, outbox.FIELD: [outbox.entry(e, at) for e in events]})
        update: dict[str, Any] = {"$set": {k: v for k, v in doc.items() if k not in ("history", "applied")}}
        pushes = {"history": doc["history"][read.history :], "applied": doc["applied"][read.applied :]}
        update["$push"] = {name: {"$each": new} for name, new in pushes.items() if new}
        if not update["$push"]:
            del update["$push"]
        if read.waiting and "waiting_since" not in doc:
            update["$unset"] = {"waiting_since": ""}
        outbox.push(update, events, at)
        return UpdateOne({"_id": claim_id, "revision": read.revision}, update)

    def _author_write(self, loaded: Loaded, author_id: str) -> Op:
        doc = _author_doc(loaded.book.authors[author_id])
        read = loaded.authors.get(author_id)
        if read is None:
            return InsertOne({"_id": author_id, **doc})
        identity, claim = read
        guard = {"identity.revision": identity} if identity is not None else {"identity": None}
        return UpdateOne({"_id": author_id, **guard, "claim.revision": claim}, {"$set": doc})

    def _slot_writes(self, loaded: Loaded) -> SlotWrites:
        """The guarded writes that take slots, and the writes that free the rest.

        A slot freed in this batch is handed over at once to a claim that takes it in the
        same batch (a claim closed, another opened) when the user has no other free slot;
        every other slot is freed only after the claims are written."""
        slots = loaded.book.slots
        acquired: dict[str, dict[str, list[str]]] = {}
        released: dict[str, dict[str, list[str]]] = {}
        for ops, into in ((slots.acquired, acquired), (slots.released, released)):
            for kind, user, claim_id in ops:
                into.setdefault(user, {k: [] for k in KINDS})[kind].append(claim_id)
        writes = SlotWrites()
        for user, new in sorted(acquired.items()):
            read = loaded.users.get(user)
            held = read or {k: [] for k in KINDS}
            after: dict[str, list[str]] = {}
            for kind in KINDS:
                ids = [*held[kind], *new[kind]]
                freeing = released.get(user, {}).get(kind, [])
                while len(ids) > slots.limit(kind) and freeing:
                    handed = freeing.pop(0)
                    ids.remove(handed)
                after[kind] = sorted(ids)
            if read is None:
                writes.taken.append(InsertOne({"_id": user, **after}))
            else:
                writes.taken.append(UpdateOne({"_id": user, **read}, {"$set": after}))
        for user, left in sorted(released.items()):
            read = loaded.users.get(user)
            pulls, deletes = writes.pulls, writes.deletes
            if user not in acquired and read is not None and not slots.holding(user):
                # Left holding nothing: one delete guarded by the slots as read, so no
                # emptied document waits between two writes for a crash to keep it.
                writes.dropped.append(DeleteOne({"_id": user, **read}))
                pulls, deletes = writes.dropped_pulls, writes.dropped_deletes
            pull = {kind: {"$in": claim_ids} for kind, claim_ids in left.items() if claim_ids}
            if pull:
                pulls.append(UpdateOne({"_id": user}, {"$pull": pull}))
            if not slots.holding(user):  # (unless another writer took one meanwhile)
                deletes.append(_delete_if_empty(user))
        # A user read holding nothing: an earlier attempt freed the slots and stopped before
        # deleting the document; the input comes again and names the user: it goes now.
        for user, read in sorted(loaded.users.items()):
            if user not in released and user not in acquired and not any(read.values()) and not slots.holding(user):
                writes.deletes.append(_delete_if_empty(user))
        return writes

    # --- the sweeper --------------------------------------------------------------------

    async def waiting_before(self, before: datetime, limit: int = 500) -> list[Claim]:
        """Claims this service has been holding for their author since before ``before``,
        longest first."""
        query = {"waiting_since": {"$lt": before}, "status": PENDING_AUTHOR}
        docs = await self.claims.find(query, {outbox.FIELD: 0}).sort("waiting_since", ASCENDING).limit(limit).to_list()
        return [_claim(d) for d in docs]

    # --- HTTP reads ---------------------------------------------------------------------

    async def get_claim(self, claim_id: str) -> Claim | None:
        doc = await self.claims.find_one({"_id": claim_id}, {outbox.FIELD: 0})
        return _claim(doc) if doc else None

    async def get_author(self, author_id: str) -> AuthorRecord | None:
        doc = await self.authors.find_one({"_id": author_id})
        return _author(doc) if doc else None


def _delete_if_empty(user: str) -> DeleteOne:
    return DeleteOne({"_id": user, **{kind: {"$size": 0} for kind in KINDS}})


@dataclass
class SlotWrites:
    """A save's writes of the users' slots: ``taken`` before the claims, the rest after."""

    taken: list[Op] = field(default_factory=list)
    # Users left holding nothing, deleted as read; if another writer changed one meanwhile,
    # those users are freed the long way too (``dropped_pulls``, ``dropped_deletes``).
    dropped: list[Op] = field(default_factory=list)
    dropped_pulls: list[Op] = field(default_factory=list)
    dropped_deletes: list[Op] = field(default_factory=list)
    pulls: list[Op] = field(default_factory=list)
    deletes: list[Op] = field(default_factory=list)  # each once its document holds nothing

    async def freeing(self, users: Collection) -> list[list[Op]]:
        """Deletes the users left holding nothing; what remains to write, in order."""
        if self.dropped and (await users.bulk_write(self.dropped, ordered=False)).deleted_count < len(self.dropped):
            return [[*self.dropped_pulls, *self.pulls], [*self.dropped_deletes, *self.deletes]]
        return [self.pulls, self.deletes]


async def _find(collection: Collection, query: dict[str, Any], keys: Sequence[str]) -> list[Document]:
    """The documents a query over ``keys`` finds (none asked: no query)."""
    return await find_all(collection, query) if keys else []


async def _by_ids(collection: Collection, ids: Iterable[str]) -> list[Document]:
    wanted = sorted(set(ids))
    return await _find(collection, {"_id": {"$in": wanted}}, wanted)


def _loaded(
    author_docs: list[Document], claim_docs: list[Document], user_docs: list[Document], limits: Limits, clock: datetime
) -> Loaded:
    loaded = Loaded(
        Book(
            {d["_id"]: _author(d) for d in author_docs},
            {d["_id"]: _claim(d) for d in claim_docs},
            Slots({(kind, d["_id"]): list(d[kind]) for d in user_docs for kind in KINDS}, limits),
            clock=clock,
        )
    )
    loaded.claims = {d["_id"]: _read_claim(d) for d in claim_docs}
    loaded.authors = {d["_id"]: _read_author(d) for d in author_docs}
    loaded.users = {d["_id"]: {kind: list(d[kind]) for kind in KINDS} for d in user_docs}
    loaded.pending = {d["_id"]: outbox.pending(d) for d in claim_docs if d.get(outbox.FIELD)}
    return loaded


async def _guarded(collection: Collection, ops: list[Op]) -> None:
    """Every write or none of the guarded ones missed: an insert of a document another
    writer created, an update whose guard another writer changed, are a ``WriteConflict``
    (the writes that did succeed are what the next attempt reads)."""
    if not ops:
        return
    updates = sum(isinstance(op, UpdateOne) for op in ops)
    try:
        result = await collection.bulk_write(ops, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        raise WriteConflict(f"{collection.name}: {len(errors)} documents written by another writer") from None
    if result.matched_count != updates:
        raise WriteConflict(f"{collection.name}: {updates - result.matched_count} documents changed meanwhile")


# --- documents <-> domain ---------------------------------------------------------------


def _identity_doc(identity: Identity | None) -> dict[str, Any] | None:
    if identity is None:
        return None
    return {
        "display_name": identity.display_name,
        "orcid": identity.orcid,
        "domains": list(identity.domains),
        "revision": identity.revision,
    }


def _author_doc(author: AuthorRecord) -> dict[str, Any]:
    return {"identity": _identity_doc(author.identity), "claim": author.claim.model_dump(mode="python")}


def _author(doc: Document) -> AuthorRecord:
    ident = doc.get("identity")
    return AuthorRecord(
        author_id=doc["_id"],
        identity=Identity(ident["display_name"], ident.get("orcid"), tuple(ident.get("domains", [])), ident["revision"])
        if ident
        else None,
        claim=AuthorClaimState.model_validate(doc["claim"]) if doc.get("claim") else UNCLAIMED,
    )


def _read_author(doc: Document) -> tuple[int | None, int]:
    return ((doc.get("identity") or {}).get("revision"), doc["claim"]["revision"])


def _claim_doc(claim: Claim) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "author_id": claim.author_id,
        "user_id": claim.user_id,
        "status": claim.decided,
        "level": claim.level,
        "reason": claim.reason,
        "detail": claim.detail,
        "evidence": claim.evidence.model_dump(mode="json"),
        "show_owner": claim.show_owner,
        "created_at": claim.created_at,
        "updated_at": claim.updated_at,
        "revision": claim.revision,
        "history": [entry.model_dump(mode="python", exclude_none=True) for entry in claim.history],
        "applied": list(claim.applied),
        "author_claim": claim.author_claim.model_dump(mode="python") if claim.author_claim else None,
    }
    if claim.waiting_since is not None:
        doc["waiting_since"] = claim.waiting_since
    return doc


def _claim(doc: Document) -> Claim:
    return Claim(
        claim_id=doc["_id"],
        author_id=doc["author_id"],
        user_id=doc["user_id"],
        status=doc["status"],
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        evidence=Evidence.model_validate(doc.get("evidence") or {}),
        show_owner=doc.get("show_owner", False),
        level=doc.get("level"),
        reason=doc.get("reason"),
        detail=doc.get("detail"),
        history=[ClaimHistoryEntry.model_validate(h) for h in doc.get("history", [])],
        applied=list(doc.get("applied", [])),
        revision=doc["revision"],
        waiting_since=doc.get("waiting_since"),
        author_claim=AuthorClaimState.model_validate(doc["author_claim"]) if doc.get("author_claim") else None,
    )


def _read_claim(doc: Document) -> _ReadClaim:
    return _ReadClaim(doc["revision"], len(doc.get("history", [])), len(doc.get("applied", [])), "waiting_since" in doc)
