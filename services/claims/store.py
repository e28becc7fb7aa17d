"""The claims service's store: claims, the author records it knows, and users' claim slots.

* ``claims``: one document per claim: status, evidence, full history, the ids of the inputs
  already applied and an ``outbox`` of events written with the state, tagged with the
  token of the write that put them there.
* ``published``: the tokens whose events are all published. Marking a token is one small
  insert, where clearing every outbox would be one slow update per claim on FerretDB.
* ``authors``: identity from profile.events and the record's claim state.
* ``user_slots``: one document per slot a claim holds, per user and kind (open /
  approved), numbered below the limit. Claims of one user live in several partitions
  (several replicas), so a slot is taken by inserting its numbered document: the unique
  _id lets only one writer have it.

Claims and authors are written with optimistic concurrency (a ``version`` per document):
a write that finds another version tells the caller to reload and decide again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from contracts.events.claims import AuthorClaimState
from contracts.registry import decode
from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from service_runtime.projection import Projection
from services.claims.rules import OPEN, AuthorRecord, Book, Claim, Identity, Limits, Slots

log = get_logger(__name__)
SlotOp = tuple[str, str, str]  # (kind, user, claim_id)
UPDATES_PER_COMMAND = 25

# What a rebuild from the log must reproduce: claims, the authors' claim state and the
# slots. Left out: optimistic-write versions, the outbox and its ``published`` markers.
PROJECTION = Projection.of(
    claims=("version", "outbox", "outbox_token"),
    authors=("version",),
    user_slots=(),
)


class ClaimsStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.claims = db.claims
        self.authors = db.authors
        self.slots = db.user_slots
        self.published = db.published

    async def create_indexes(self) -> None:
        await self.claims.create_index([("author_id", ASCENDING), ("status", ASCENDING)])
        await self.claims.create_index([("status", ASCENDING), ("created_at", ASCENDING)])
        await self.claims.create_index([("user_id", ASCENDING)])
        await self.slots.create_index([("user", ASCENDING), ("kind", ASCENDING)])

    # --- rebuild: commands kept aside until the profile events are in (handlers.DeferredCommands)

    async def defer(self, items: list[Incoming]) -> None:
        docs = [{"_id": f"{i.partition}:{i.offset}", "topic": i.topic, "partition": i.partition, "offset": i.offset,
                 "envelope": i.envelope.model_dump_json()} for i in items]
        if docs:
            try:
                await self.db.rebuild_deferred.insert_many(docs, ordered=False)
            except BulkWriteError as exc:  # a redelivered batch: those are kept already
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise

    async def deferred(self) -> list[Incoming]:
        docs = await self.db.rebuild_deferred.find({}).to_list(None)
        docs.sort(key=lambda d: (d["partition"], d["offset"]))
        items = []
        for d in docs:
            envelope, payload = decode(d["topic"], d["envelope"].encode())
            items.append(Incoming(envelope, payload, d["topic"], d["partition"], d["offset"]))
        return items

    # --- loading a book ---------------------------------------------------------------

    async def load_book(
        self, author_ids: Iterable[str], claim_ids: Iterable[str], user_ids: Iterable[str], limits: Limits
    ) -> Book:
        author_ids, claim_ids = list(set(author_ids)), list(set(claim_ids))
        authors = {d["_id"]: _author(d) async for d in self.authors.find({"_id": {"$in": author_ids}})}
        query: dict[str, Any] = {"$or": [
            {"_id": {"$in": claim_ids}},
            {"author_id": {"$in": author_ids}, "status": {"$in": sorted(OPEN)}},
        ]}
        claims = {d["_id"]: _claim(d) async for d in self.claims.find(query)}
        await self._forget_published(claims.values())
        users = set(user_ids) | {c.user_id for c in claims.values()}
        return Book(authors, claims, Slots(await self.load_slots(users), limits))

    async def load_slots(self, users: Iterable[str]) -> dict[tuple[str, str], list[str]]:
        held: dict[tuple[str, str], list[str]] = {}
        async for d in self.slots.find({"user": {"$in": list(set(users))}}):
            held.setdefault((d["kind"], d["user"]), []).append(d["claim_id"])
        return held

    # --- slots ------------------------------------------------------------------------

    async def acquire_all(self, ops: list[SlotOp], limits: Limits) -> bool:
        """Take every slot in one insert; False if another writer took one meanwhile (the
        caller reloads: slots this call did get then count as held)."""
        if not ops:
            return True
        users = {user for _, user, _ in ops}
        taken: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
        async for d in self.slots.find({"user": {"$in": list(users)}}):
            taken[(d["kind"], d["user"])][int(d["_id"].rsplit(":", 1)[1])] = d["claim_id"]
        docs = []
        for kind, user, claim_id in ops:
            held = taken[(kind, user)]
            if claim_id in held.values():
                continue
            limit = limits.max_open_claims_per_user if kind == "open" else limits.max_approved_claims_per_user
            free = [n for n in range(limit) if n not in held]
            if not free:
                return False
            held[free[0]] = claim_id
            docs.append({"_id": f"{kind}:{user}:{free[0]}", "kind": kind, "user": user, "claim_id": claim_id})
        return await self._insert(self.slots.name, docs)

    async def acquire(self, kind: str, user: str, claim_id: str, limit: int) -> bool:
        """Take one of the user's ``limit`` numbered slots by inserting its document: the
        unique _id makes two writers racing for the last slot see one winner. (A counter
        updated with a conditional filter is not atomic on FerretDB under concurrency.)"""
        for _ in range(limit + 1):
            taken = {d["_id"]: d["claim_id"] async for d in self.slots.find({"kind": kind, "user": user})}
            if claim_id in taken.values():
                return True
            free = [n for n in range(limit) if f"{kind}:{user}:{n}" not in taken]
            if not free:
                return False
            try:
                await self.slots.insert_one(
                    {"_id": f"{kind}:{user}:{free[0]}", "kind": kind, "user": user, "claim_id": claim_id})
                return True
            except DuplicateKeyError:
                continue  # another writer took that one: look again
        return False

    async def release_all(self, ops: list[SlotOp]) -> None:
        by_kind: dict[str, list[str]] = defaultdict(list)
        for kind, _, claim_id in ops:
            by_kind[kind].append(claim_id)
        for kind, claim_ids in by_kind.items():
            await self.slots.delete_many({"kind": kind, "claim_id": {"$in": claim_ids}})

    # --- saving -------------------------------------------------------------------------

    async def save(self, book: Book, token: str) -> bool:
        """Write dirty claims, then dirty authors; False on a concurrent change. ``token``
        tags the outboxes this attempt writes (``mark_published`` once they are out)."""
        new_claims, claim_updates = [], []
        for cid in sorted(book.dirty_claims):
            claim = book.claims[cid]
            claim.outbox_token = token
            doc = _claim_doc(claim) | {"version": claim.version + 1}
            if claim.version == 0:
                new_claims.append({"_id": cid, **doc})
            else:
                claim_updates.append({"q": {"_id": cid, "version": claim.version}, "u": {"$set": doc}})
        # Changed claims first: if another writer got there, nothing new is stored yet and
        # the reload decides every input again.
        if not await self._conditional(self.claims.name, claim_updates):
            return False
        if not await self._insert(self.claims.name, new_claims):
            return False
        for cid in book.dirty_claims:
            book.claims[cid].version += 1
        new_authors, author_updates = [], []
        for aid in sorted(book.dirty_authors):
            author = book.authors[aid]
            doc = _author_doc(author) | {"version": author.version + 1}
            if author.version == 0:
                new_authors.append({"_id": aid, **doc})
            else:
                author_updates.append({"q": {"_id": aid, "version": author.version}, "u": {"$set": doc}})
        if not await self._insert(self.authors.name, new_authors):
            return False
        if not await self._conditional(self.authors.name, author_updates):
            return False
        for aid in book.dirty_authors:
            book.authors[aid].version += 1
        return True

    async def _insert(self, collection: str, docs: list[dict[str, Any]]) -> bool:
        """Insert new documents in bulk; False if one exists already (another writer)."""
        for start in range(0, len(docs), 500):
            reply = await self.db.command({"insert": collection, "documents": docs[start:start + 500], "ordered": False})
            if reply.get("writeErrors"):
                return False
        return True

    async def _conditional(self, collection: str, updates: list[dict[str, Any]]) -> bool:
        """One round trip for many version-guarded updates (FerretDB is fast on batches).
        The raw command is used because the driver's bulk helper cannot read FerretDB's
        reply when some updates fail; every update must match exactly once. Chunks stay
        small: FerretDB 1.24 (SQLite) stops answering, for every client, when one update
        command carries about a hundred updates."""
        for start in range(0, len(updates), UPDATES_PER_COMMAND):
            chunk = updates[start:start + UPDATES_PER_COMMAND]
            reply = await self.db.command({"update": collection, "updates": chunk, "ordered": False})
            if reply.get("writeErrors") or reply.get("n", 0) != len(chunk):
                log.info("claims_guarded_write_missed", collection=collection, expected=len(chunk), reply=str(reply)[:300])
                return False
        return True

    async def mark_published(self, tokens: Iterable[str | None]) -> None:
        for token in {t for t in tokens if t}:
            await self.published.update_one({"_id": token}, {"$setOnInsert": {"at": datetime.now(UTC)}}, upsert=True)

    async def _forget_published(self, claims: Iterable[Claim]) -> None:
        """Outboxes whose token is marked published hold nothing left to publish."""
        with_outbox = [c for c in claims if c.outbox]
        tokens = list({c.outbox_token for c in with_outbox if c.outbox_token})
        if not tokens:
            return
        done = {d["_id"] async for d in self.published.find({"_id": {"$in": tokens}})}
        for claim in with_outbox:
            if claim.outbox_token in done:
                claim.outbox = []

    # --- the sweeper's queries ----------------------------------------------------------

    async def pending_since_before(self, before: datetime, limit: int = 500) -> list[Claim]:
        cursor = self.claims.find({"status": "pending_author", "created_at": {"$lt": before}}).sort("created_at", 1).limit(limit)
        return [_claim(d) async for d in cursor]

    async def unpublished_before(self, before: datetime) -> list[Claim]:
        cursor = self.claims.find({"outbox.0": {"$exists": True}, "updated_at": {"$lt": before}})
        claims = [_claim(d) async for d in cursor]
        await self._forget_published(claims)
        return [c for c in claims if c.outbox]

    # --- HTTP reads --------------------------------------------------------------------

    async def get_claim(self, claim_id: str) -> Claim | None:
        doc = await self.claims.find_one({"_id": claim_id})
        return _claim(doc) if doc else None

    async def get_author(self, author_id: str) -> AuthorRecord | None:
        doc = await self.authors.find_one({"_id": author_id})
        return _author(doc) if doc else None


# --- documents <-> domain -------------------------------------------------------------


def _author(d: dict[str, Any]) -> AuthorRecord:
    ident = d.get("identity")
    return AuthorRecord(
        author_id=d["_id"],
        identity=Identity(ident["display_name"], ident.get("orcid"), tuple(ident.get("domains", [])), ident["revision"])
        if ident else None,
        claim=AuthorClaimState.model_validate(d["claim"]) if d.get("claim") else AuthorClaimState(claimed=False, revision=1),
        version=d.get("version", 0),
    )


def _author_doc(a: AuthorRecord) -> dict[str, Any]:
    ident = a.identity
    return {
        "identity": {"display_name": ident.display_name, "orcid": ident.orcid, "domains": list(ident.domains),
                     "revision": ident.revision} if ident else None,
        "claim": a.claim.model_dump(mode="python"),
    }


_CLAIM_FIELDS = ("author_id", "user_id", "status", "created_at", "updated_at", "evidence", "show_owner", "level",
                 "reason", "detail", "history", "applied", "outbox", "outbox_token")


def _claim(d: dict[str, Any]) -> Claim:
    return Claim(claim_id=d["_id"], version=d.get("version", 0), **{f: d.get(f) for f in _CLAIM_FIELDS if f in d})


def _claim_doc(c: Claim) -> dict[str, Any]:
    return {f: getattr(c, f) for f in _CLAIM_FIELDS}
