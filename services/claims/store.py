"""The claims service's store: claims, the author records it knows, and users' claim slots.

* ``claims``: one document per claim: status, evidence, full history, the ids of the inputs
  already applied and an ``outbox`` of events written with the state, cleared once published.
* ``authors``: identity from profile.events and the record's claim state.
* ``user_slots``: per user and kind (open / approved), the claims held. Claims of one user
  live in several partitions (several replicas), so a slot is taken with one atomic
  conditional write, never by reading and then writing.

Claims and authors are written with optimistic concurrency (a ``version`` per document):
a write that finds another version tells the caller to reload and decide again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from contracts.events.claims import AuthorClaimState
from services.claims.rules import OPEN, AuthorRecord, Book, Claim, Identity, Limits, Slots

SlotOp = tuple[str, str, str]  # (kind, user, claim_id)


class ClaimsStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.claims = db.claims
        self.authors = db.authors
        self.slots = db.user_slots

    async def create_indexes(self) -> None:
        await self.claims.create_index([("author_id", ASCENDING), ("status", ASCENDING)])
        await self.claims.create_index([("status", ASCENDING), ("created_at", ASCENDING)])
        await self.claims.create_index([("user_id", ASCENDING)])

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
        users = set(user_ids) | {c.user_id for c in claims.values()}
        return Book(authors, claims, Slots(await self.load_slots(users), limits))

    async def load_slots(self, users: Iterable[str]) -> dict[tuple[str, str], list[str]]:
        ids = [f"{kind}:{u}" for u in users for kind in ("open", "approved")]
        held: dict[tuple[str, str], list[str]] = {}
        async for d in self.slots.find({"_id": {"$in": ids}}):
            kind, user = d["_id"].split(":", 1)
            held[(kind, user)] = list(d.get("holders", []))
        return held

    # --- slots ------------------------------------------------------------------------

    async def acquire_all(self, ops: list[SlotOp], limits: Limits) -> bool:
        """Take every slot; False if any was taken meanwhile by another writer."""
        by_user: dict[str, list[SlotOp]] = defaultdict(list)
        for op in ops:
            by_user[op[1]].append(op)

        async def one_user(user_ops: list[SlotOp]) -> bool:
            ok = True
            for kind, user, claim_id in user_ops:
                limit = limits.max_open_claims_per_user if kind == "open" else limits.max_approved_claims_per_user
                ok = await self.acquire(kind, user, claim_id, limit) and ok
            return ok

        results = await asyncio.gather(*(one_user(u) for u in by_user.values()))
        return all(results)

    async def acquire(self, kind: str, user: str, claim_id: str, limit: int) -> bool:
        slot_id = f"{kind}:{user}"
        try:
            # Matches only while the user is under the limit; otherwise the upsert tries to
            # insert a second document with the same _id and fails: the limit holds atomically.
            await self.slots.update_one(
                {"_id": slot_id, "count": {"$lt": limit}, "holders": {"$ne": claim_id}},
                {"$addToSet": {"holders": claim_id}, "$inc": {"count": 1}}, upsert=True,
            )
            return True
        except DuplicateKeyError:
            return await self.slots.count_documents({"_id": slot_id, "holders": claim_id}, limit=1) > 0

    async def release_all(self, ops: list[SlotOp]) -> None:
        await asyncio.gather(*(
            self.slots.update_one(
                {"_id": f"{kind}:{user}", "holders": claim_id},
                {"$pull": {"holders": claim_id}, "$inc": {"count": -1}},
            )
            for kind, user, claim_id in ops
        ))

    # --- saving -------------------------------------------------------------------------

    async def save(self, book: Book) -> bool:
        """Write dirty claims, then dirty authors; False on a concurrent change."""
        claim_updates = []
        for cid in sorted(book.dirty_claims):
            claim = book.claims[cid]
            doc = _claim_doc(claim)
            doc["version"] = claim.version + 1
            claim_updates.append({"q": {"_id": cid, "version": claim.version}, "u": {"$set": doc}, "upsert": claim.version == 0})
        if not await self._conditional(self.claims.name, claim_updates):
            return False
        for cid in book.dirty_claims:
            book.claims[cid].version += 1
        author_updates = []
        for aid in sorted(book.dirty_authors):
            author = book.authors[aid]
            doc = _author_doc(author)
            doc["version"] = author.version + 1
            author_updates.append({"q": {"_id": aid, "version": author.version}, "u": {"$set": doc}, "upsert": author.version == 0})
        if not await self._conditional(self.authors.name, author_updates):
            return False
        for aid in book.dirty_authors:
            book.authors[aid].version += 1
        return True

    async def _conditional(self, collection: str, updates: list[dict[str, Any]]) -> bool:
        """One round trip for many version-guarded updates (FerretDB is fast on batches).
        The raw command is used because the driver's bulk helper cannot read FerretDB's
        reply when some updates fail; every update must match (or insert) exactly once."""
        for start in range(0, len(updates), 200):
            chunk = updates[start:start + 200]
            reply = await self.db.command({"update": collection, "updates": chunk, "ordered": False})
            if reply.get("writeErrors") or reply.get("n", 0) != len(chunk):
                return False
        return True

    async def clear_outboxes(self, claims: Iterable[Claim]) -> None:
        """The events are published: forget them (only if nobody changed the claim since)."""
        updates = [{"q": {"_id": c.claim_id, "version": c.version}, "u": {"$set": {"outbox": []}}} for c in claims]
        for start in range(0, len(updates), 200):
            await self.db.command({"update": self.claims.name, "updates": updates[start:start + 200], "ordered": False})

    # --- the sweeper's queries ----------------------------------------------------------

    async def pending_since_before(self, before: datetime, limit: int = 500) -> list[Claim]:
        cursor = self.claims.find({"status": "pending_author", "created_at": {"$lt": before}}).sort("created_at", 1).limit(limit)
        return [_claim(d) async for d in cursor]

    async def unpublished_before(self, before: datetime, limit: int = 500) -> list[Claim]:
        cursor = self.claims.find({"outbox.0": {"$exists": True}, "updated_at": {"$lt": before}}).limit(limit)
        return [_claim(d) async for d in cursor]

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
                 "reason", "detail", "history", "applied", "outbox")


def _claim(d: dict[str, Any]) -> Claim:
    return Claim(claim_id=d["_id"], version=d.get("version", 0), **{f: d.get(f) for f in _CLAIM_FIELDS if f in d})


def _claim_doc(c: Claim) -> dict[str, Any]:
    return {f: getattr(c, f) for f in _CLAIM_FIELDS}
