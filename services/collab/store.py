"""The collab service's store: the only module that knows the driver and the stored shape.

* ``invitations``: one document per invitation, in plain fields: what the events carry
  (``author_id``, ``sender_id``, ``owner_user_id``, ``status``, ``reason``, ``detail``,
  ``message``, ``created_at``, ``updated_at``, ``answered_at``, ``message_count``,
  ``revision``), its ``thread`` (the messages, oldest first: ``message_id``, ``user_id``,
  ``text``, ``posted_at``), ``applied`` (the ids of the inputs of its steps, in order) and
  ``outbox`` (``service_runtime.outbox``: events written with the state, not known to be
  published yet).
* ``authors``: one document per record the service heard of: ``owner`` (``claimed``,
  ``owner_user_id``, ``revision``: from claims.events) and ``profile`` (``display_name``,
  ``open_to_collaborate``, ``revision``: from profile.events), each the newest revision seen.
* ``senders``: one document per user with invitations waiting for an answer: ``pending``,
  their ids, sorted; deleted when none is left. A sender's invitations go to records in
  other partitions (other consumers, other replicas): a slot is taken by one atomic
  conditional update of this document, so two consumers racing for a sender's last slot
  see one winner.

Writes are guarded, never read-modify-write under a lock: an invitation by the revision
read, a fold by the revision held (an older state never replaces a newer one), a slot by
the length of ``pending``. A guarded write that finds the document changed raises
``WriteConflict``: the caller reads again and decides again (``retry_conflicts``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from pymongo import ASCENDING, DESCENDING, DeleteOne, IndexModel, InsertOne, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from contracts.events.collab import InvitationState, ThreadMessage
from service_runtime import outbox
from service_runtime.outbox import WriteConflict
from service_runtime.projection import Projection
from service_runtime.publishing import Outgoing
from service_runtime.store import DUPLICATE_KEY, Collection, Database, Document, StoreAdapter, find_all, upsert_where
from services.collab.rules import ACTIVE, PENDING, AuthorFacts, Book, Invitation, Limits, Owner, Profile

STATE_FIELDS = tuple(f for f in InvitationState.model_fields if f != "invitation_id")
# What the consumer reads of an invitation: everything but the thread (only ever appended).
WITHOUT_THREAD = {"thread": 0}
# What a list of invitations shows: the state, not the thread and the bookkeeping.
SUMMARY = {"thread": 0, "applied": 0, outbox.FIELD: 0}
Op = InsertOne[Document] | UpdateOne | DeleteOne


@dataclass
class Loaded:
    """A book and what its guarded writes must find unchanged."""

    book: Book
    revisions: dict[str, int] = field(default_factory=dict)  # each invitation's revision as read
    applied: dict[str, int] = field(default_factory=dict)  # how many input ids each held as read
    pending: dict[str, list[Outgoing]] = field(default_factory=dict)  # outbox entries still to publish


@dataclass(frozen=True, slots=True)
class Step:
    """One decision read back from collab.events (a rebuild): the invitation after it, the
    input it came from, and the message it added to the thread, if any."""

    state: InvitationState
    cause: str
    message: ThreadMessage | None = None


class CollabStore(StoreAdapter):
    indexes: ClassVar[Mapping[str, Sequence[IndexModel]]] = {
        "invitations": [
            # A record's live invitations: what a request (one per sender) and a change of
            # owner (closing them) must see.
            IndexModel([("author_id", ASCENDING), ("status", ASCENDING)], name="by_author_status"),
            # A user's sent invitations, newest first; their declines (the cooldown).
            IndexModel([("sender_id", ASCENDING), ("created_at", DESCENDING)], name="by_sender"),
            # A user's received invitations, newest first.
            IndexModel([("owner_user_id", ASCENDING), ("created_at", DESCENDING)], name="by_owner"),
        ],
    }
    outbox_collections: ClassVar[tuple[str, ...]] = ("invitations",)
    # What a rebuild from the log must reproduce: all of it but the outbox (what is still
    # to publish says how this copy got there, not what the log says).
    projection: ClassVar[Projection] = Projection.of(invitations=("outbox",), authors=(), senders=())

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.invitations: Collection = db.invitations
        self.authors: Collection = db.authors
        self.senders: Collection = db.senders

    # --- loading a book -----------------------------------------------------------------

    async def load(
        self,
        author_ids: Iterable[str],
        invitation_ids: Iterable[str],
        *,
        live_of: Iterable[str],
        senders: Iterable[str],
        declined_since: datetime | None,
        limits: Limits,
    ) -> Loaded:
        """The records, the invitations named, every live invitation of the records in
        ``live_of``, and the recent declines of the ``senders``."""
        authors = await _find(self.authors, {"_id": {"$in": sorted(set(author_ids))}})
        named = await _find(self.invitations, {"_id": {"$in": sorted(set(invitation_ids))}}, WITHOUT_THREAD)
        live = await _find(
            self.invitations,
            {"author_id": {"$in": sorted(set(live_of))}, "status": {"$in": sorted(ACTIVE)}},
            WITHOUT_THREAD,
        )
        declines: dict[tuple[str, str], datetime] = {}
        if declined_since is not None:
            for d in await _find(
                self.invitations,
                {
                    "sender_id": {"$in": sorted(set(senders))},
                    "status": "declined",
                    "answered_at": {"$gte": declined_since},
                },
                {"sender_id": 1, "owner_user_id": 1, "answered_at": 1},
            ):
                key = (d["sender_id"], d["owner_user_id"])
                if key not in declines or declines[key] < d["answered_at"]:
                    declines[key] = d["answered_at"]
        docs = {d["_id"]: d for d in named + live}
        loaded = Loaded(
            Book(
                {d["_id"]: _author(d) for d in authors},
                {iid: Invitation(_state(d), list(d.get("applied", []))) for iid, d in docs.items()},
                declines,
                limits,
            )
        )
        loaded.revisions = {iid: d["revision"] for iid, d in docs.items()}
        loaded.applied = {iid: len(d.get("applied", [])) for iid, d in docs.items()}
        loaded.pending = {iid: outbox.pending(d) for iid, d in docs.items() if d.get(outbox.FIELD)}
        return loaded

    # --- the senders' slots ---------------------------------------------------------------

    async def take_slots(self, sender: str, invitation_ids: Sequence[str], limit: int) -> dict[str, bool]:
        """Slots of the sender's ``limit`` for these invitations, in their order: for each,
        True if it holds one now (taken, or held already), False if every slot is held by
        another pending invitation.

        First one conditional update of the sender's document for all of them: add the ids
        only while ``pending`` has room for every one. When it does not match (no room, or
        no document: creating it by upsert could race another writer's creation and lose
        one's ids without an error), read it and take what room there is with an update
        guarded by the list as read, or an insert (another writer that changed or created
        it meanwhile makes it miss: read again). A full list is healed of invitations no
        longer pending (a writer that stopped between an invitation's answer and freeing
        its slot) before the rest are refused."""
        wanted = list(dict.fromkeys(invitation_ids))
        taken: dict[str, bool] = {}
        if 0 < len(wanted) <= limit:
            added = await self.senders.update_one(
                {"_id": sender, "pending": {"$nin": wanted}, f"pending.{limit - len(wanted)}": {"$exists": False}},
                {"$push": {"pending": {"$each": wanted, "$sort": 1}}},
            )
            if added.matched_count:
                return dict.fromkeys(wanted, True)
        while wanted:
            doc = await self.senders.find_one({"_id": sender})
            held = list(doc.get("pending", [])) if doc else []
            taken |= {iid: True for iid in wanted if iid in held}
            wanted = [iid for iid in wanted if iid not in held]
            room = limit - len(held)
            if not wanted:
                break
            if room <= 0:
                stale = await _find(self.invitations, {"_id": {"$in": held}, "status": {"$ne": PENDING}}, {"_id": 1})
                if stale:
                    await self.release_slots([(sender, d["_id"]) for d in stale])
                    continue
                taken |= dict.fromkeys(wanted, False)
                break
            now = wanted[:room]
            if doc is None:
                try:
                    await self.senders.insert_one({"_id": sender, "pending": sorted(now)})
                except DuplicateKeyError:
                    continue  # created meanwhile: read again
            elif (
                await self.senders.update_one(
                    {"_id": sender, "pending": held}, {"$push": {"pending": {"$each": now, "$sort": 1}}}
                )
            ).matched_count == 0:
                continue  # changed meanwhile: read again
            taken |= dict.fromkeys(now, True)
            wanted = wanted[room:]
        return taken

    async def held_slots(self, senders: Iterable[str]) -> dict[str, list[str]]:
        """The invitations holding each sender's slots."""
        docs = await _find(self.senders, {"_id": {"$in": sorted(set(senders))}})
        return {d["_id"]: list(d.get("pending", [])) for d in docs}

    async def release_slots(self, held: Iterable[tuple[str, str]]) -> None:
        """Free the slots of these (sender, invitation) pairs; a sender left with none loses
        the document. Idempotent. (Two commands, not one ordered bulk of pulls and deletes:
        the driver sends an ordered bulk as one command per run of one kind of write.)"""
        by_sender: dict[str, list[str]] = {}
        for sender, iid in held:
            by_sender.setdefault(sender, []).append(iid)
        if not by_sender:
            return
        pulls = [UpdateOne({"_id": s}, {"$pull": {"pending": {"$in": sorted(ids)}}}) for s, ids in by_sender.items()]
        await self.senders.bulk_write(pulls, ordered=False)
        await self.senders.delete_many({"_id": {"$in": sorted(by_sender)}, "pending": {"$size": 0}})

    async def hold_slots(self, held: Iterable[tuple[str, str]]) -> None:
        """Record these (sender, invitation) slots as held, whatever the limit says (a
        rebuild: the limit was applied live, and its refusals are in the log). One write
        per sender adds the ids (idempotent), one more keeps the list sorted."""
        by_sender: dict[str, set[str]] = {}
        for sender, iid in held:
            by_sender.setdefault(sender, set()).add(iid)
        if not by_sender:
            return
        adds = [
            UpdateOne({"_id": s}, {"$addToSet": {"pending": {"$each": sorted(ids)}}}, upsert=True)
            for s, ids in sorted(by_sender.items())
        ]
        await self.senders.bulk_write(adds, ordered=False)
        sorts = [UpdateOne({"_id": s}, {"$push": {"pending": {"$each": [], "$sort": 1}}}) for s in sorted(by_sender)]
        await self.senders.bulk_write(sorts, ordered=False)

    async def pending_count(self, sender: str) -> int:
        doc = await self.senders.find_one({"_id": sender})
        return len(doc.get("pending", [])) if doc else 0

    # --- writing a book ---------------------------------------------------------------------

    async def save(self, loaded: Loaded, outboxes: Mapping[str, Sequence[Outgoing]]) -> None:
        """Write what the book changed: the folds (never older over newer), then each
        changed invitation with its new events in its outbox, guarded by the revision read
        (``WriteConflict`` when another writer got there first)."""
        book = loaded.book
        missing = set(outboxes) - book.dirty
        assert not missing, f"events for invitations not written: {sorted(missing)}"
        await self.fold_authors(
            {a: book.authors[a].owner for a in book.dirty_owners if book.authors[a].owner is not None},
            {a: book.authors[a].profile for a in book.dirty_profiles if book.authors[a].profile is not None},
        )
        at = datetime.now(UTC)
        ops: list[Op] = []
        for iid in sorted(book.dirty):
            invitation = book.invitations[iid]
            posted = [m.model_dump(mode="python") for m in book.posted.get(iid, [])]
            events = outboxes.get(iid, ())
            read = loaded.revisions.get(iid)
            if read is None:
                ops.append(
                    InsertOne(
                        {
                            "_id": iid,
                            **_state_doc(invitation.state),
                            "thread": posted,
                            "applied": list(invitation.applied),
                            outbox.FIELD: [outbox.entry(e, at) for e in events],
                        }
                    )
                )
                continue
            new_applied = invitation.applied[loaded.applied[iid] :]
            update: dict[str, Any] = {
                "$set": _state_doc(invitation.state),
                "$push": {"applied": {"$each": new_applied}},
            }
            if posted:
                update["$push"]["thread"] = {"$each": posted}
            outbox.push(update, events, at)
            ops.append(UpdateOne({"_id": iid, "revision": read}, update))
        await _guarded(self.invitations, ops)

    async def fold_authors(self, owners: Mapping[str, Owner | None], profiles: Mapping[str, Profile | None]) -> None:
        """Keep each record's newest owner and profile: an update that applies only while
        the revision held is older (two consumers write a record: ``upsert_where``)."""
        writes: list[tuple[Document, Document]] = []
        for field_name, states in (("owner", owners), ("profile", profiles)):
            for author_id, state in sorted(states.items()):
                if state is not None:
                    writes.append(
                        (
                            {"_id": author_id, f"{field_name}.revision": {"$not": {"$gte": state.revision}}},
                            {"$set": {field_name: _fact_doc(state)}},
                        )
                    )
        await upsert_where(self.authors, writes)

    # --- a rebuild: folding collab.events -------------------------------------------------

    async def fold_invitations(self, steps: Sequence[Step]) -> dict[str, tuple[str, str]]:
        """Apply the decisions read back from collab.events (in partition order) that are
        newer than what each invitation holds; returns each touched invitation's sender and
        status after it (what its sender's slots follow)."""
        ids = sorted({s.state.invitation_id for s in steps})
        held = {
            d["_id"]: d
            for d in await _find(self.invitations, {"_id": {"$in": ids}}, {"revision": 1, "status": 1, "sender_id": 1})
        }
        per: dict[str, list[Step]] = {}
        for step in steps:
            per.setdefault(step.state.invitation_id, []).append(step)
        ops: list[Op] = []
        final: dict[str, tuple[str, str]] = {}
        for iid, its in sorted(per.items()):
            top = held[iid]["revision"] if iid in held else 0
            newer = []
            for step in its:
                if step.state.revision > top:
                    newer.append(step)
                    top = step.state.revision
            if not newer:
                final[iid] = (held[iid]["sender_id"], held[iid]["status"])
                continue
            state = newer[-1].state
            final[iid] = (state.sender_id, state.status)
            causes = [s.cause for s in newer]
            posted = [s.message.model_dump(mode="python") for s in newer if s.message is not None]
            if iid not in held:
                ops.append(InsertOne({"_id": iid, **_state_doc(state), "thread": posted, "applied": causes}))
                continue
            update: dict[str, Any] = {"$set": _state_doc(state), "$push": {"applied": {"$each": causes}}}
            if posted:
                update["$push"]["thread"] = {"$each": posted}
            ops.append(UpdateOne({"_id": iid, "revision": held[iid]["revision"]}, update))
        await _guarded(self.invitations, ops)
        return final

    # --- HTTP reads ---------------------------------------------------------------------------

    async def get_author(self, author_id: str) -> AuthorFacts | None:
        doc = await self.authors.find_one({"_id": author_id})
        return _author(doc) if doc else None

    async def get_invitation(self, invitation_id: str) -> tuple[InvitationState, list[ThreadMessage]] | None:
        doc = await self.invitations.find_one({"_id": invitation_id}, {"applied": 0, outbox.FIELD: 0})
        if doc is None:
            return None
        return _state(doc), [ThreadMessage.model_validate(m) for m in doc.get("thread", [])]

    async def has_live_invitation(self, author_id: str, sender: str) -> bool:
        query = {"author_id": author_id, "sender_id": sender, "status": {"$in": sorted(ACTIVE)}}
        return await self.invitations.find_one(query, {"_id": 1}) is not None

    async def latest_decline(self, sender: str, owner: str) -> datetime | None:
        doc = await self.invitations.find_one(
            {"sender_id": sender, "owner_user_id": owner, "status": "declined"},
            {"answered_at": 1},
            sort=[("answered_at", DESCENDING)],
        )
        return doc["answered_at"] if doc else None

    async def sent(self, user: str, limit: int) -> list[InvitationState]:
        docs = self.invitations.find({"sender_id": user}, SUMMARY).sort("created_at", DESCENDING).limit(limit)
        return [_state(d) for d in await docs.to_list()]

    async def received(self, user: str, limit: int) -> list[InvitationState]:
        query = {"owner_user_id": user, "status": {"$ne": "rejected"}}
        docs = self.invitations.find(query, SUMMARY).sort("created_at", DESCENDING).limit(limit)
        return [_state(d) for d in await docs.to_list()]


async def _find(collection: Collection, query: dict[str, Any], fields: dict[str, Any] | None = None) -> list[Document]:
    if any(isinstance(v, dict) and v.get("$in") == [] for v in query.values()):
        return []
    return await find_all(collection, query, fields)


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


# --- documents <-> domain -------------------------------------------------------------------


def _state_doc(state: InvitationState) -> dict[str, Any]:
    return state.model_dump(mode="python", exclude={"invitation_id"})


def _state(doc: Document) -> InvitationState:
    return InvitationState.model_validate({"invitation_id": doc["_id"], **{k: doc.get(k) for k in STATE_FIELDS}})


def _fact_doc(state: Owner | Profile) -> dict[str, Any]:
    if isinstance(state, Owner):
        return {"claimed": state.claimed, "owner_user_id": state.owner_user_id, "revision": state.revision}
    return {
        "display_name": state.display_name,
        "open_to_collaborate": state.open_to_collaborate,
        "revision": state.revision,
    }


def _author(doc: Document) -> AuthorFacts:
    owner, profile = doc.get("owner"), doc.get("profile")
    return AuthorFacts(
        author_id=doc["_id"],
        owner=Owner(owner["claimed"], owner.get("owner_user_id"), owner["revision"]) if owner else None,
        profile=Profile(profile["display_name"], profile["open_to_collaborate"], profile["revision"])
        if profile
        else None,
    )
