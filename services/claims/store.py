"""The claims service's store: claims, the author records it knows, and users' claim slots.

Every read and write of the consumer's path is keyed by ``_id`` (FerretDB on SQLite uses
an index for ``_id`` equality and ``_id: {$in: [...]}`` only; any other filter reads the
whole collection):

* ``claims``: one document per claim: status, evidence, full history, the ids of the inputs
  already applied and an ``outbox`` of events written with the state, tagged with the
  token of the write that put them there.
* ``authors``: identity from profile.events, the record's claim state, and the ids of its
  open claims (``open_claims``): a batch loads its records by id, then their open claims
  by id.
* ``user_slots``: one document per slot a claim holds, per user and kind (open /
  approved), ``_id`` ``kind:user:n`` with n below the limit. Claims of one user live in
  several partitions (several replicas), so a slot is taken by inserting its numbered
  document: the unique _id lets only one writer have it. A user's slots are read by their
  ids.
* ``unpublished``: one document per write whose outbox events are not known to be
  published (``_id`` the token, the wall-clock time, the claims written). Inserted before
  the claims, deleted once their events are out: an outbox is live while its token is
  here, and the sweeper reads this small collection instead of every claim.
* ``waiting``: one document per claim waiting for its author (pending_author), so the
  sweeper finds the claims to expire without reading every claim.

Claims and authors are written with optimistic concurrency (a ``version`` per document):
a write that finds another version tells the caller to reload and decide again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from contracts.events.claims import AuthorClaimState
from contracts.registry import decode
from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from service_runtime.projection import Projection
from service_runtime.store import bulk_update
from services.claims.rules import OPEN_SLOT, AuthorRecord, Book, Claim, Identity, Limits, Slots

log = get_logger(__name__)
SlotOp = tuple[str, str, str]  # (kind, user, claim_id)
# Slots numbered up to this far above the configured limit are still read, so that
# lowering a limit keeps counting the slots users already hold.
SLOT_MARGIN = 4
INSERTS_PER_COMMAND = 500
# A ``waiting`` or ``unpublished`` document whose claims do not show it yet may belong to
# a write still under way: the sweeper deletes it only once it is this old.
ORPHAN_AFTER = timedelta(hours=1)


def slot_ids(kind: str, user: str, limits: Limits) -> list[str]:
    limit = limits.max_open_claims_per_user if kind == OPEN_SLOT else limits.max_approved_claims_per_user
    return [f"{kind}:{user}:{n}" for n in range(limit + SLOT_MARGIN)]


# What a rebuild from the log must reproduce: claims, the authors' claim state and open
# claims, and the slots. Left out: optimistic-write versions, the outbox, and the work
# lists (``unpublished`` tokens, ``waiting`` claims) that only say what is still to do.
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
        self.unpublished = db.unpublished
        self.waiting = db.waiting

    async def create_indexes(self) -> None:
        """Nothing to create: every query of the service is by ``_id``."""

    # --- rebuild: inputs kept aside until all are consumed (handlers.RebuildInLiveOrder)

    async def defer(self, items: list[Incoming]) -> None:
        docs = [
            {
                "_id": f"{i.topic}:{i.partition}:{i.offset}",
                "topic": i.topic,
                "partition": i.partition,
                "offset": i.offset,
                "timestamp_ms": i.timestamp_ms,
                "envelope": i.envelope.model_dump_json(),
            }
            for i in items
        ]
        for start in range(0, len(docs), INSERTS_PER_COMMAND):
            try:
                await self.db.rebuild_deferred.insert_many(docs[start : start + INSERTS_PER_COMMAND], ordered=False)
            except BulkWriteError as exc:  # a redelivered batch: those are kept already
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise

    async def deferred(self) -> list[Incoming]:
        """Every input kept aside, by topic, partition and offset."""
        docs = await self.db.rebuild_deferred.find({}).to_list(None)
        docs.sort(key=lambda d: (d["topic"], d["partition"], d["offset"]))
        items = []
        for d in docs:
            envelope, payload = decode(d["topic"], d["envelope"].encode())
            items.append(Incoming(envelope, payload, d["topic"], d["partition"], d["offset"], d.get("timestamp_ms")))
        return items

    # --- loading a book ---------------------------------------------------------------

    async def load_book(
        self, author_ids: Iterable[str], claim_ids: Iterable[str], user_ids: Iterable[str], limits: Limits
    ) -> Book:
        authors = await self._authors(set(author_ids))
        wanted = set(claim_ids) | {cid for a in authors.values() for cid in a.open_claims}
        claims = await self._claims(wanted)
        # A claim named by a command may belong to another record: load that one too, so
        # its open-claims list stays right.
        authors |= await self._authors({c.author_id for c in claims.values()} - authors.keys())
        await self._forget_published(claims.values())
        users = set(user_ids) | {c.user_id for c in claims.values()}
        return Book(authors, claims, Slots(await self.load_slots(users, limits), limits))

    async def _authors(self, ids: set[str]) -> dict[str, AuthorRecord]:
        if not ids:
            return {}
        return {d["_id"]: _author(d) async for d in self.authors.find({"_id": {"$in": sorted(ids)}})}

    async def _claims(self, ids: set[str]) -> dict[str, Claim]:
        if not ids:
            return {}
        return {d["_id"]: _claim(d) async for d in self.claims.find({"_id": {"$in": sorted(ids)}})}

    async def _slot_docs(self, users: Iterable[str], limits: Limits) -> list[dict[str, Any]]:
        ids = [
            sid for user in sorted(set(users)) for kind in ("open", "approved") for sid in slot_ids(kind, user, limits)
        ]
        return [d async for d in self.slots.find({"_id": {"$in": ids}})] if ids else []

    async def load_slots(self, users: Iterable[str], limits: Limits) -> dict[tuple[str, str], list[str]]:
        held: dict[tuple[str, str], list[str]] = {}
        for d in await self._slot_docs(users, limits):
            held.setdefault((d["kind"], d["user"]), []).append(d["claim_id"])
        return held

    # --- slots ------------------------------------------------------------------------

    async def acquire_all(self, ops: list[SlotOp], limits: Limits, releasing: Iterable[SlotOp] = ()) -> bool:
        """Take every slot (new ones in one insert); False if another writer took one
        meanwhile (the caller reloads: slots this call did get then count as held).

        ``releasing``: slots this attempt frees. When a user has no free slot left but one
        of theirs is being freed in the same attempt (a claim closed, then another opened
        in one batch), that slot is handed over to the new claim: the free happens only
        after the claims are saved, so waiting for it would fail every reload."""
        if not ops:
            return True
        taken: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
        for d in await self._slot_docs({user for _, user, _ in ops}, limits):
            taken[(d["kind"], d["user"])][int(d["_id"].rsplit(":", 1)[1])] = d["claim_id"]
        freed = {(kind, user, claim_id) for kind, user, claim_id in releasing}
        docs, handovers = [], []
        for kind, user, claim_id in ops:
            held = taken[(kind, user)]
            if claim_id in held.values():
                continue
            limit = limits.max_open_claims_per_user if kind == OPEN_SLOT else limits.max_approved_claims_per_user
            free = [n for n in range(limit) if n not in held]
            if len(held) < limit and free:
                held[free[0]] = claim_id
                docs.append({"_id": f"{kind}:{user}:{free[0]}", "kind": kind, "user": user, "claim_id": claim_id})
                continue
            reusable = [n for n, holder in sorted(held.items()) if (kind, user, holder) in freed]
            if not reusable:
                return False
            n = reusable[0]
            freed.discard((kind, user, held[n]))
            handovers.append(
                UpdateOne({"_id": f"{kind}:{user}:{n}", "claim_id": held[n]}, {"$set": {"claim_id": claim_id}})
            )
            held[n] = claim_id
        if handovers and not await self._conditional(self.slots.name, handovers):
            return False
        return await self._insert(self.slots.name, docs)

    async def acquire(self, kind: str, user: str, claim_id: str, limit: int) -> bool:
        """Take one of the user's ``limit`` numbered slots by inserting its document: the
        unique _id makes two writers racing for the last slot see one winner. (A counter
        updated with a conditional filter is not atomic on FerretDB under concurrency.)"""
        ids = [f"{kind}:{user}:{n}" for n in range(limit)]
        for _ in range(limit + 1):
            taken = {d["_id"]: d["claim_id"] async for d in self.slots.find({"_id": {"$in": ids}})}
            if claim_id in taken.values():
                return True
            free = [sid for sid in ids if sid not in taken]
            if not free:
                return False
            try:
                await self.slots.insert_one({"_id": free[0], "kind": kind, "user": user, "claim_id": claim_id})
                return True
            except DuplicateKeyError:
                continue  # another writer took that one: look again
        return False

    async def release_all(self, ops: list[SlotOp], limits: Limits) -> None:
        """Delete the slot documents these claims hold, found by their possible ids."""
        deletes = [
            {"q": {"_id": {"$in": slot_ids(kind, user, limits)}, "claim_id": claim_id}, "limit": 0}
            for kind, user, claim_id in ops
        ]
        if deletes:
            await self.db.command({"delete": self.slots.name, "deletes": deletes, "ordered": False})

    # --- saving -------------------------------------------------------------------------

    async def save(self, book: Book, token: str) -> bool:
        """Write dirty claims, then dirty authors; False on a concurrent change. ``token``
        tags the outboxes this attempt writes (``mark_published`` once they are out)."""
        dirty = sorted(book.dirty_claims)
        if dirty:
            await self.unpublished.insert_one({"_id": token, "at": datetime.now(UTC), "claims": dirty})
        now_waiting = [book.claims[cid] for cid in dirty if book.claims[cid].status == "pending_author"]
        await self._ensure_waiting(now_waiting)
        new_claims, claim_updates = [], []
        for cid in dirty:
            claim = book.claims[cid]
            claim.outbox_token = token
            doc = _claim_doc(claim) | {"version": claim.version + 1}
            if claim.version == 0:
                new_claims.append({"_id": cid, **doc})
            else:
                claim_updates.append(UpdateOne({"_id": cid, "version": claim.version}, {"$set": doc}))
        # Changed claims first: if another writer got there, nothing new is stored yet and
        # the reload decides every input again.
        if not await self._conditional(self.claims.name, claim_updates):
            return False
        if not await self._insert(self.claims.name, new_claims):
            return False
        for cid in dirty:
            book.claims[cid].version += 1
        left_waiting = [
            cid
            for cid in dirty
            if book.claims[cid].status != "pending_author"
            and any(h.get("status") == "pending_author" for h in book.claims[cid].history)
        ]
        if left_waiting:
            await self.waiting.delete_many({"_id": {"$in": left_waiting}})
        new_authors, author_updates = [], []
        for aid in sorted(book.dirty_authors):
            author = book.authors[aid]
            doc = _author_doc(author) | {"version": author.version + 1}
            if author.version == 0:
                new_authors.append({"_id": aid, **doc})
            else:
                author_updates.append(UpdateOne({"_id": aid, "version": author.version}, {"$set": doc}))
        if not await self._insert(self.authors.name, new_authors):
            return False
        if not await self._conditional(self.authors.name, author_updates):
            return False
        for aid in book.dirty_authors:
            book.authors[aid].version += 1
        return True

    async def _ensure_waiting(self, claims: list[Claim]) -> None:
        # ``at``: when the service started waiting (the first insert wins; the sweeper
        # measures the wait from it). ``since``: when the claim was requested.
        at = datetime.now(UTC)
        docs = [{"_id": c.claim_id, "since": c.created_at, "at": at} for c in claims]
        for start in range(0, len(docs), INSERTS_PER_COMMAND):
            # Already there (an earlier attempt, or the claim waited before): fine.
            await self.db.command(
                {"insert": self.waiting.name, "documents": docs[start : start + INSERTS_PER_COMMAND], "ordered": False}
            )

    async def _insert(self, collection: str, docs: list[dict[str, Any]]) -> bool:
        """Insert new documents in bulk; False if one exists already (another writer)."""
        for start in range(0, len(docs), INSERTS_PER_COMMAND):
            reply = await self.db.command(
                {"insert": collection, "documents": docs[start : start + INSERTS_PER_COMMAND], "ordered": False}
            )
            if reply.get("writeErrors"):
                return False
        return True

    async def _conditional(self, collection: str, updates: list[UpdateOne]) -> bool:
        """Version-guarded updates in commands FerretDB can take; every one must match
        exactly once (a miss means another writer changed the document)."""
        if not updates:
            return True
        done = await bulk_update(self.db[collection], updates)
        if done.matched_count != len(updates):
            log.info(
                "claims_guarded_write_missed", collection=collection, expected=len(updates), matched=done.matched_count
            )
            return False
        return True

    async def mark_published(self, tokens: Iterable[str | None]) -> None:
        done = sorted({t for t in tokens if t})
        if done:
            await self.unpublished.delete_many({"_id": {"$in": done}})

    async def covered_by(self, tokens: Iterable[str | None], claim_ids: Iterable[str]) -> list[str]:
        """Of these live outbox tokens, those every claim of which is among ``claim_ids``.

        A token tags every claim one write stored; a writer that republished the outboxes
        of only some of them (a batch or a sweep that loaded one record) must not mark the
        token published, or the other claims' events are forgotten unpublished. Those
        tokens stay for their own writer's retry or the sweeper, which reads all their claims."""
        wanted = sorted({t for t in tokens if t})
        if not wanted:
            return []
        have = set(claim_ids)
        return [
            d["_id"]
            async for d in self.unpublished.find({"_id": {"$in": wanted}}, {"claims": 1})
            if set(d.get("claims", [])) <= have
        ]

    async def _forget_published(self, claims: Iterable[Claim]) -> None:
        """An outbox whose token is no longer in ``unpublished`` holds nothing left to publish."""
        with_outbox = [c for c in claims if c.outbox]
        tokens = sorted({c.outbox_token for c in with_outbox if c.outbox_token})
        live = (
            {d["_id"] async for d in self.unpublished.find({"_id": {"$in": tokens}}, {"_id": 1})} if tokens else set()
        )
        for claim in with_outbox:
            if claim.outbox_token not in live:
                claim.outbox = []

    # --- the sweeper's queries (small collections) ------------------------------------

    async def pending_since_before(self, before: datetime, limit: int = 500) -> list[Claim]:
        """Claims this service has been holding for their author since before ``before``.

        The wait is measured on this service's clock from when it parked the claim
        (``at``), not from the request's ``occurred_at``: a request that reached the
        service late (consumer lag, a broker outage, a replay of old commands) must still
        get its full wait for an author whose record may be right behind it."""
        docs = [d async for d in self.waiting.find({"at": {"$lt": before}}).sort("at", 1).limit(limit)]
        claims = await self._claims({d["_id"] for d in docs})
        orphan_before = datetime.now(UTC) - ORPHAN_AFTER
        # Left by a writer that stopped before deleting it; a claim not stored yet may be
        # under way (the document is written first).
        done = [
            d["_id"]
            for d in docs
            if (d["_id"] in claims and claims[d["_id"]].status != "pending_author")
            or (d["_id"] not in claims and d.get("at", orphan_before) <= orphan_before)
        ]
        if done:
            await self.waiting.delete_many({"_id": {"$in": done}})
        return sorted(
            (c for c in claims.values() if c.status == "pending_author"), key=lambda c: (c.created_at, c.claim_id)
        )

    async def unpublished_before(self, before: datetime) -> list[Claim]:
        """Claims whose outbox a writer left unpublished for longer than the grace time."""
        docs = [d async for d in self.unpublished.find({"at": {"$lt": before}})]
        tokens = {d["_id"] for d in docs}
        claims = await self._claims({cid for d in docs for cid in d.get("claims", [])})
        stale = [c for c in claims.values() if c.outbox and c.outbox_token in tokens]
        # Tokens none of whose claims carry them: rewritten since, or never written (a
        # write still under way is given ORPHAN_AFTER to store its claims).
        carried = {c.outbox_token for c in stale}
        orphan_before = datetime.now(UTC) - ORPHAN_AFTER
        orphans = [d["_id"] for d in docs if d["_id"] not in carried and d["at"] <= orphan_before]
        if orphans:
            await self.mark_published(orphans)
        return stale

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
        if ident
        else None,
        claim=AuthorClaimState.model_validate(d["claim"])
        if d.get("claim")
        else AuthorClaimState(claimed=False, revision=1),
        open_claims=list(d.get("open_claims", [])),
        version=d.get("version", 0),
    )


def _author_doc(a: AuthorRecord) -> dict[str, Any]:
    ident = a.identity
    return {
        "identity": {
            "display_name": ident.display_name,
            "orcid": ident.orcid,
            "domains": list(ident.domains),
            "revision": ident.revision,
        }
        if ident
        else None,
        "claim": a.claim.model_dump(mode="python"),
        "open_claims": list(a.open_claims),
    }


_CLAIM_FIELDS = (
    "author_id",
    "user_id",
    "status",
    "created_at",
    "updated_at",
    "evidence",
    "show_owner",
    "level",
    "reason",
    "detail",
    "history",
    "applied",
    "outbox",
    "outbox_token",
)


def _claim(d: dict[str, Any]) -> Claim:
    return Claim(claim_id=d["_id"], version=d.get("version", 0), **{f: d.get(f) for f in _CLAIM_FIELDS if f in d})


def _claim_doc(c: Claim) -> dict[str, Any]:
    return {f: getattr(c, f) for f in _CLAIM_FIELDS}
