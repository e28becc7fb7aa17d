"""The follow service's store adapter: the one module that knows its collections, the shape
of their documents and the driver. Every document is plain fields and subdocuments.

* ``authors``, one per author (``_id`` = author id):
  - identity and owner, folds of profile.events and claims.events: ``known``,
    ``display_name``, ``profile_revision``, ``owner_user_id``, ``claim_revision``;
  - follow state, decided by the command consumer: ``follower_count`` (exact),
    ``revision`` (+1 per follow or unfollow applied), ``count_revision`` (the revision of the
    last ``FollowerCountChanged``), ``parked`` (follows waiting for the author to be known,
    in the order they came, each with the unfollow that joined it) and ``parked_until``
    (the earliest end of their waits; null when none);
  - bookkeeping: ``version`` (guards every decision's write), ``applied`` (partition and
    offset of the last command applied), ``edges_revision`` (the revision up to which the
    edges are written) and ``outbox`` (the runtime's: the events the last decisions caused).
* ``edges``, one per (author, user) (``_id`` = ``<author_id>/<user_id>``): ``author_id``,
  ``user_id``, ``active``, ``followed_at``, ``unfollowed_at``, ``revision``. An unfollow
  keeps the edge, marked, so a fan-out knows who followed at the moment of its source
  event. Indexed by (author_id, user_id) (followers, fan-out ranges) and by (user_id,
  author_id) (the authors a user follows).
* ``inbox``, one per notification of a user's own (``_id`` = the deterministic
  notification id): user, author, kind, title, source event, ``created_at``, ``read``; a
  notification of a shared entry that its user marked read is copied here, read, with
  ``shared_id`` naming the entry (the copy stands for it in that user's inbox).
* ``shared_inbox``, one per chunk of a large fan-out (``_id`` = ``<fanout_id>:<n>``): the
  notification (author, kind, title, source event, ``created_at``) and ``users``, the
  followers whose inbox holds it, sorted; indexed by (users, created_at desc), so a
  user's inbox reads its own entries and the shared entries it is in. ``published``
  says its NotificationCreated events are out (the entry is the chunk's commit point).
* ``fanouts``, one per fan-out plan (``_id`` = fanout id): the source event, the moment
  that decides who is notified, and the user-id ranges of its chunks; its ``outbox`` holds
  the chunk requests until they are published.
* ``fanout_chunks``, one per chunk notified (``_id`` = ``<fanout_id>:<n>``): how many it
  notified; its ``outbox`` holds the chunk's NotificationCreated events until they are
  published (a chunk whose outbox is empty is done).
* ``source_progress``: how far the sources group has read profile.events, as a moment.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne

from contracts.events.notifications import NotificationCreated, notification_id
from service_runtime import outbox
from service_runtime.projection import Projection
from service_runtime.publishing import Outgoing
from service_runtime.store import (
    Collection,
    Database,
    Document,
    StoreAdapter,
    find_all,
    find_by_ids,
    find_sorted,
    insert_missing,
    upsert_where,
)
from services.follow.rules import (
    AuthorFacts,
    Cause,
    ChunkNotified,
    ChunkRange,
    Edge,
    EdgeChange,
    FollowFold,
    FollowState,
    InboxItem,
    Parked,
    ParkedUnfollow,
    Plan,
    SharedEntry,
    before_cursor,
    in_range,
    merge_newest_first,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PROFILE_PROGRESS = "profile.events"

# What a rebuild from the log must reproduce: authors (identity, owner, exact count and
# its revisions, parked follows), every edge, and the inbox. Left out: how this copy got
# there (the write guard, the command position, how far the edges are written, outboxes).
# Fan-out plans and chunks are work in progress: the inbox is what they produced.
PROJECTION = Projection.of(
    authors=("version", "applied", "edges_revision", "outbox"),
    edges=(),
    inbox=(),
    shared_inbox=("notified_at", "published"),
)


@dataclass(frozen=True, slots=True)
class AuthorRecord:
    """An author document as the command consumer reads it."""

    author_id: str
    exists: bool
    state: FollowState
    version: int
    applied: tuple[int, int] | None  # (partition, offset) of the last command applied
    edges_revision: int
    pending: list[Outgoing]  # the outbox: events a decision wrote and nobody published yet

    @property
    def edges_behind(self) -> bool:
        """Edges of a committed decision not written yet (a crash before they were)."""
        return self.edges_revision < self.state.revision


@dataclass(frozen=True, slots=True)
class AuthorCommit:
    """One author's decision, written in ONE guarded update (its commit point)."""

    record: AuthorRecord
    after: FollowState
    edges_changed: bool
    count_revision: int | None  # set when the decision changed the count
    parked_changed: bool
    applied: tuple[int, int] | None
    events: list[Outgoing]


def edge_id(author_id: str, user_id: str) -> str:
    return f"{author_id}/{user_id}"


def inbox_doc(note: NotificationCreated) -> Document:
    return {
        "_id": str(note.notification_id),
        "user_id": note.user_id,
        "author_id": note.author_id,
        "kind": note.kind,
        "source_event_id": str(note.source_event_id),
        "title": note.title,
        "created_at": note.created_at,
        "read": False,
    }


def _shared_fields(entry: SharedEntry) -> Document:
    return {
        "_id": entry.shared_id,
        "fanout_id": entry.fanout_id,
        "author_id": entry.author_id,
        "kind": entry.kind,
        "source_event_id": str(entry.source_event_id),
        "title": entry.title,
        "created_at": entry.created_at,
    }


def _item(doc: Mapping[str, Any]) -> InboxItem:
    return InboxItem(doc["_id"], doc["created_at"], bool(doc.get("read")), None)


def _shared_item(doc: Mapping[str, Any], user_id: str) -> tuple[InboxItem, Document]:
    """A user's notification in a shared entry, as an item and as an entry of their own."""
    nid = str(notification_id(uuid.UUID(doc["source_event_id"]), user_id))
    own: Document = {
        "_id": nid,
        "user_id": user_id,
        "author_id": doc["author_id"],
        "kind": doc["kind"],
        "source_event_id": doc["source_event_id"],
        "title": doc["title"],
        "created_at": doc["created_at"],
        "read": False,
    }
    return InboxItem(nid, doc["created_at"], False, doc["_id"]), own


def _by_user(document: Document) -> str:
    return str(document["user_id"])


def _edge(doc: Mapping[str, Any]) -> Edge:
    return Edge(bool(doc.get("active")), doc.get("followed_at"), doc.get("unfollowed_at"))


def _cause(doc: Mapping[str, Any], id_field: str) -> Cause:
    return Cause(uuid.UUID(doc[id_field]), doc["correlation_id"])


def _parked(doc: Mapping[str, Any]) -> Parked:
    un = doc.get("unfollow")
    return Parked(
        user_id=doc["user_id"],
        at=doc["requested_at"],
        cause=_cause(doc, "follow_id"),
        wait_until=doc["wait_until"],
        unfollow=ParkedUnfollow(un["requested_at"], _cause(un, "unfollow_id")) if un else None,
    )


def _parked_doc(p: Parked) -> Document:
    return {
        "user_id": p.user_id,
        "requested_at": p.at,
        "follow_id": str(p.cause.id),
        "correlation_id": p.cause.correlation_id,
        "wait_until": p.wait_until,
        "unfollow": (
            {
                "requested_at": p.unfollow.at,
                "unfollow_id": str(p.unfollow.cause.id),
                "correlation_id": p.unfollow.cause.correlation_id,
            }
            if p.unfollow
            else None
        ),
    }


def _parked_fields(parked: Sequence[Parked]) -> Document:
    return {
        "parked": [_parked_doc(p) for p in parked],
        "parked_until": min((p.wait_until for p in parked), default=None),
    }


def _follow_state(doc: Mapping[str, Any]) -> FollowState:
    return FollowState(
        known=bool(doc.get("known")),
        owner_user_id=doc.get("owner_user_id"),
        count=int(doc.get("follower_count") or 0),
        revision=int(doc.get("revision") or 0),
        parked=tuple(_parked(p) for p in doc.get("parked") or ()),
    )


def _record(author_id: str, doc: Mapping[str, Any] | None) -> AuthorRecord:
    doc = doc or {}
    applied = doc.get("applied")
    return AuthorRecord(
        author_id=author_id,
        exists=bool(doc),
        state=_follow_state(doc),
        version=int(doc.get("version") or 0),
        applied=(int(applied["partition"]), int(applied["offset"])) if applied else None,
        edges_revision=int(doc.get("edges_revision") or 0),
        pending=outbox.pending(doc),
    )


def _facts(doc: Mapping[str, Any] | None) -> AuthorFacts:
    doc = doc or {}
    return AuthorFacts(
        known=bool(doc.get("known")),
        display_name=doc.get("display_name"),
        profile_revision=doc.get("profile_revision"),
        owner_user_id=doc.get("owner_user_id"),
        claim_revision=doc.get("claim_revision"),
    )


def _older(field: str, revision: int) -> Document:
    """A guard: the stored ``field`` is older than ``revision`` (or absent)."""
    return {"$or": [{field: {"$lt": revision}}, {field: None}]}


class FollowStore(StoreAdapter):
    indexes: ClassVar[Mapping[str, Sequence[IndexModel]]] = {
        "edges": [
            IndexModel([("author_id", ASCENDING), ("user_id", ASCENDING)], name="followers"),
            IndexModel([("user_id", ASCENDING), ("author_id", ASCENDING)], name="following"),
        ],
        # The parked-follow sweeper's starting point: only authors with parked follows have one.
        "authors": [IndexModel([("parked_until", ASCENDING)], name="parked_until")],
        "inbox": [IndexModel([("user_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)], name="newest")],
        "fanout_chunks": [IndexModel([("fanout_id", ASCENDING)], name="of_fanout")],
        "shared_inbox": [
            IndexModel([("users", ASCENDING), ("created_at", DESCENDING)], name="member_newest"),
            IndexModel([("fanout_id", ASCENDING)], name="of_fanout"),
        ],
    }
    # A chunk's outbox is not swept: its events are published only by the chunk worker,
    # after the inbox documents they stand for (the chunk message comes again until then).
    outbox_collections: ClassVar[tuple[str, ...]] = ("authors", "fanouts")
    projection: ClassVar[Projection] = PROJECTION

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.authors: Collection = db["authors"]
        self.edges: Collection = db["edges"]
        self.inbox: Collection = db["inbox"]
        self.fanouts: Collection = db["fanouts"]
        self.chunks: Collection = db["fanout_chunks"]
        self.shared: Collection = db["shared_inbox"]
        self.source_progress: Collection = db["source_progress"]

    # --- authors: follow state ------------------------------------------------------

    async def author(self, author_id: str) -> Document | None:
        return await self.authors.find_one({"_id": author_id})

    async def follower_count(self, author_id: str) -> int | None:
        """The exact follower count of a known author; None: the author is not known."""
        doc = await self.authors.find_one({"_id": author_id}, {"known": 1, "follower_count": 1})
        return int(doc.get("follower_count") or 0) if doc and doc.get("known") else None

    async def follower_counts(self, author_ids: Iterable[str]) -> dict[str, int]:
        """The exact follower counts of these authors (0 for one without a document)."""
        ids = list(dict.fromkeys(author_ids))
        docs = await find_by_ids(self.authors, ids, {"follower_count": 1})
        counts = {a: int(d.get("follower_count") or 0) for a, d in docs.items()}
        return {a: counts.get(a, 0) for a in ids}

    async def author_records(self, author_ids: Iterable[str]) -> dict[str, AuthorRecord]:
        ids = list(dict.fromkeys(author_ids))
        docs = await find_by_ids(self.authors, ids)
        return {a: _record(a, docs.get(a)) for a in ids}

    async def commit(self, commits: Sequence[AuthorCommit]) -> set[str]:
        """Write each author's decision in one update guarded by the version it was taken
        against (state, command position and the events it causes, in the outbox); returns
        the authors another writer changed meanwhile (nothing of theirs was written)."""
        writes: list[tuple[Document, Document]] = []
        now = datetime.now(UTC)
        for c in commits:
            fields: Document = {"version": c.record.version + 1}
            if c.applied is not None:
                fields["applied"] = {"partition": c.applied[0], "offset": c.applied[1]}
            if c.edges_changed:
                fields.update(follower_count=c.after.count, revision=c.after.revision)
            if c.count_revision is not None:
                fields["count_revision"] = c.count_revision
            if c.parked_changed:
                fields.update(_parked_fields(c.after.parked))
            guard = {"_id": c.record.author_id, "version": c.record.version or None}
            writes.append((guard, outbox.push({"$set": fields}, c.events, now)))
        failed = await upsert_where(self.authors, writes)
        return {commits[i].record.author_id for i in failed}

    async def authors_with_parked(self) -> list[Document]:
        """The authors with parked follows (by the ``parked_until`` index)."""
        cursor = self.authors.find({"parked_until": {"$gte": _EPOCH}}, {"known": 1, "parked_until": 1})
        return await cursor.to_list(None)

    async def edges_revisions(self, author_ids: Iterable[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(author_ids))
        if not ids:
            return {}
        docs = await find_by_ids(self.authors, ids, {"edges_revision": 1})
        return {a: int(d.get("edges_revision") or 0) for a, d in docs.items()}

    # --- authors: identity and owner --------------------------------------------------

    async def author_facts(self, author_ids: Iterable[str]) -> dict[str, AuthorFacts]:
        ids = list(dict.fromkeys(author_ids))
        docs = await find_by_ids(self.authors, ids)
        return {a: _facts(docs.get(a)) for a in ids}

    async def write_facts(self, named: Mapping[str, AuthorFacts], owned: Mapping[str, AuthorFacts]) -> None:
        """Set the names and owners that changed, each guarded by its revision (a write
        older than the stored one is passed over)."""
        writes = [
            (
                {"_id": a, **_older("profile_revision", f.profile_revision)},
                {"$set": {"known": f.known, "display_name": f.display_name, "profile_revision": f.profile_revision}},
            )
            for a, f in named.items()
            if f.profile_revision is not None
        ]
        writes += [
            (
                {"_id": a, **_older("claim_revision", f.claim_revision)},
                {"$set": {"owner_user_id": f.owner_user_id, "claim_revision": f.claim_revision}},
            )
            for a, f in owned.items()
            if f.claim_revision is not None
        ]
        await upsert_where(self.authors, writes)

    # --- authors: the follow state a rebuild folds --------------------------------------

    async def follow_folds(self, author_ids: Iterable[str]) -> dict[str, FollowFold]:
        ids = list(dict.fromkeys(author_ids))
        docs = await find_by_ids(self.authors, ids)
        out = {}
        for a in ids:
            doc = docs.get(a) or {}
            out[a] = FollowFold(
                count=doc.get("follower_count"),
                revision=doc.get("revision"),
                count_revision=doc.get("count_revision"),
                parked=[_parked(p) for p in doc.get("parked") or ()],
            )
        return out

    async def write_follow_folds(self, folds: Mapping[str, FollowFold]) -> None:
        writes: list[tuple[Document, Document]] = []
        for a, f in folds.items():
            fields: Document = {}
            if f.count is not None:
                fields["follower_count"] = f.count
            if f.revision is not None:
                fields["revision"] = f.revision
            if f.count_revision is not None:
                fields["count_revision"] = f.count_revision
            if f.parked_changed:
                fields.update(_parked_fields(f.parked))
            if fields:
                writes.append(({"_id": a}, {"$set": fields}))
        await upsert_where(self.authors, writes)

    # --- edges ----------------------------------------------------------------------

    async def edges_of(self, users: Mapping[str, Iterable[str]]) -> dict[str, dict[str, Edge]]:
        """The current edges of these users, per author (absent: never followed)."""
        ids = [edge_id(a, u) for a, us in users.items() for u in set(us)]
        out: dict[str, dict[str, Edge]] = {a: {} for a in users}
        for d in (await find_by_ids(self.edges, ids)).values():
            out[d["author_id"]][d["user_id"]] = _edge(d)
        return out

    async def write_edges(self, changes: Mapping[tuple[str, str], EdgeChange], revisions: Mapping[str, int]) -> None:
        """Write edges as their events say, each guarded by its revision (an edge already
        written at that revision or a newer one is left alone), then record per author the
        revision up to which its edges are written.

        Several writers can write one new edge at once (the consumer of its author's
        partition, the healer, another replica delivering an outbox left behind), from
        different runs of its events: each edge is inserted as its change says, and only
        the edges that existed are updated, so a stale write never stands on a new edge."""
        docs: list[Document] = []
        for (author_id, user_id), c in changes.items():
            doc: Document = {
                "_id": edge_id(author_id, user_id),
                "author_id": author_id,
                "user_id": user_id,
                "active": c.active,
                "unfollowed_at": c.unfollowed_at,
            }
            if c.sets_followed_at:
                doc["followed_at"] = c.followed_at
            if c.revision is not None:
                doc["revision"] = c.revision
            docs.append(doc)
        existed = await insert_missing(self.edges, docs)
        ops = []
        for doc in (docs[i] for i in existed):
            guard: Document = {"_id": doc["_id"]}
            if "revision" in doc:
                guard.update(_older("revision", doc["revision"]))
            ops.append(UpdateOne(guard, {"$set": {k: v for k, v in doc.items() if k != "_id"}}))
        if ops:
            await self.edges.bulk_write(ops, ordered=False)
        if revisions:
            await self.authors.bulk_write(
                [UpdateOne({"_id": a}, {"$max": {"edges_revision": r}}) for a, r in revisions.items()],
                ordered=False,
            )

    async def author_edges(self, author_id: str) -> list[tuple[str, Edge]]:
        """Every edge of an author (followers, and who unfollowed), by user id."""
        cursor = self.edges.find({"author_id": author_id}).sort("user_id", ASCENDING)
        return [(d["user_id"], _edge(d)) async for d in cursor]

    async def edges_in_ranges(
        self, ranges: Sequence[tuple[str, str | None, str | None]], whole: Set[str] = frozenset()
    ) -> list[list[tuple[str, Edge]]]:
        """For each (author, after, upto), the author's edges with user ids in (after, upto]
        (None: unbounded), by user id. The authors read whole (unbounded, or in ``whole``:
        small ones) are one read (``$in``); each other author's span of ranges is a read of
        its own, all at once. Not one ``$or`` of the ranges: FerretDB 2.5 answered such a
        query without some documents of a branch (an ``{author, user_id <= x}`` branch lost
        the users below another branch's ``$gt`` bound; docs/architecture.md, the store)."""
        spans: dict[str, tuple[str | None, str | None]] = {}
        for author, after, upto in ranges:
            if author in whole:
                spans[author] = (None, None)
            elif author not in spans:
                spans[author] = (after, upto)
            else:
                low, high = spans[author]
                spans[author] = (
                    None if low is None or after is None else min(low, after),
                    None if high is None or upto is None else max(high, upto),
                )
        fields = {"author_id": 1, "user_id": 1, "active": 1, "followed_at": 1, "unfollowed_at": 1}
        queries: list[Document] = []
        unbounded = [a for a, (low, high) in spans.items() if low is None and high is None]
        if unbounded:
            queries.append({"author_id": {"$in": unbounded}})
        for author, (low, high) in spans.items():
            if low is not None or high is not None:
                users: Document = {}
                if low is not None:
                    users["$gt"] = low
                if high is not None:
                    users["$lte"] = high
                queries.append({"author_id": author, "user_id": users})
        by_author: dict[str, list[Document]] = {}
        for docs in await asyncio.gather(*(find_all(self.edges, q, fields) for q in queries)):
            for d in docs:
                by_author.setdefault(d["author_id"], []).append(d)
        for docs in by_author.values():
            docs.sort(key=_by_user)
        return [
            [(d["user_id"], _edge(d)) for d in by_author.get(author, ()) if in_range(d["user_id"], after, upto)]
            for author, after, upto in ranges
        ]

    async def iter_edge_cuts(
        self, author_id: str, every: int, after: str | None = None
    ) -> AsyncIterator[tuple[str, int]]:
        """The cut points of a large fan-out past ``after``: every ``every``-th user id among
        the author's edges, and the last, each with the number of edges since the previous
        one. Read by the (author_id, user_id) index with nothing but the user id, streamed
        (a million in ~20 s here; skips over the index, one query per cut, took FerretDB
        ~90 s: it walks the skipped documents)."""
        seen = 0
        last = after
        query: Document = {"author_id": author_id}
        if after is not None:
            query["user_id"] = {"$gt": after}
        async for d in find_sorted(self.edges, query, {"_id": 0, "user_id": 1}, key="user_id", batch_size=10_000):
            last = d["user_id"]
            seen += 1
            if seen == every:
                yield last, seen
                seen = 0
        if seen and last is not None:
            yield last, seen

    async def range_edges(self, author_id: str, after: str | None, upto: str) -> list[tuple[str, Edge]]:
        """The edges of an author in the user-id range (after, upto], by user id."""
        return (await self.edges_in_ranges([(author_id, after, upto)]))[0]

    async def followers(self, author_id: str, after: str | None, limit: int) -> list[tuple[str, datetime | None]]:
        query: Document = {"author_id": author_id, "active": True}
        if after is not None:
            query["user_id"] = {"$gt": after}
        cursor = (
            self.edges.find(query, {"user_id": 1, "followed_at": 1}, batch_size=limit)
            .sort("user_id", ASCENDING)
            .limit(limit)
        )
        return [(d["user_id"], d.get("followed_at")) async for d in cursor]

    async def following(self, user_id: str) -> list[tuple[str, datetime | None]]:
        cursor = self.edges.find({"user_id": user_id, "active": True}, {"author_id": 1, "followed_at": 1})
        return [(d["author_id"], d.get("followed_at")) async for d in cursor.sort("author_id", ASCENDING)]

    # --- how far profile.events has been read -----------------------------------------

    async def sources_read_until(self) -> datetime | None:
        """The moment up to which the source consumer has handled every ``profile.events``
        record (see ``FollowCommands.sweep_once``); None until it is first established."""
        doc = await self.source_progress.find_one({"_id": _PROFILE_PROGRESS})
        return None if doc is None else doc.get("read_until")

    async def advance_sources_read_until(self, at: datetime) -> None:
        # $max: a sweeper of another replica that measured an earlier moment never moves it back.
        await self.source_progress.update_one({"_id": _PROFILE_PROGRESS}, {"$max": {"read_until": at}}, upsert=True)

    # --- fan-out --------------------------------------------------------------------

    async def insert_plans(self, plans: Sequence[tuple[Plan, Sequence[Outgoing]]]) -> set[str]:
        """Insert each plan with its chunk requests in its outbox, unless one stands;
        returns the ids of the plans that stood already (the first one stands)."""
        now = datetime.now(UTC)
        docs: list[Document] = [
            {
                "_id": p.fanout_id,
                "author_id": p.author_id,
                "kind": p.kind,
                "title": p.title,
                "source_event_id": str(p.source_event_id),
                "followed_before": p.followed_before,
                "followers": p.followers,
                "shared": p.shared,
                "chunks": [_chunk_doc(c) for c in p.chunks],
                "chunks_cut": len(p.chunks),
                "cut": p.cut,
                "planned_at": now,
                outbox.FIELD: [outbox.entry(o, now) for o in events],
            }
            for p, events in plans
        ]
        return {docs[i]["_id"] for i in await insert_missing(self.fanouts, docs)}

    async def plan_outboxes(self, fanout_ids: Iterable[str]) -> dict[str, list[Outgoing]]:
        """The plans that exist among these, with the chunk requests still to publish."""
        ids = list(dict.fromkeys(fanout_ids))
        if not ids:
            return {}
        return {a: outbox.pending(d) for a, d in (await find_by_ids(self.fanouts, ids, {"outbox": 1})).items()}

    async def plan_cuts(self, fanout_id: str) -> tuple[bool, list[ChunkRange]] | None:
        """A plan's chunks as cut so far, and whether the cutting is over (None: no plan)."""
        doc = await self.fanouts.find_one({"_id": fanout_id}, {"chunks": 1, "cut": 1})
        if doc is None:
            return None
        chunks = [ChunkRange(c["number"], c["after_user_id"], c["upto_user_id"], c["followers"]) for c in doc["chunks"]]
        return doc.get("cut", True), chunks

    async def add_cut(self, fanout_id: str, chunk: ChunkRange, request: Outgoing) -> bool:
        """Record the plan's next chunk with its request in the outbox, if the plan holds
        exactly the chunks before it and is still being cut; False if not (another attempt
        recorded it: its cuts stand)."""
        update = outbox.push({"$push": {"chunks": _chunk_doc(chunk)}, "$inc": {"chunks_cut": 1}}, [request])
        guard = {"_id": fanout_id, "chunks_cut": chunk.number, "cut": False}
        return (await self.fanouts.update_one(guard, update)).modified_count == 1

    async def cuts_done(self, fanout_id: str, chunks: int) -> bool:
        """The plan is cut: ``chunks`` chunks in all (False: it holds another number)."""
        guard = {"_id": fanout_id, "chunks_cut": chunks}
        return (await self.fanouts.update_one(guard, {"$set": {"cut": True}})).matched_count == 1

    async def fanout(self, fanout_id: str) -> Document | None:
        """The plan (tests, benchmarks), with ``published`` (cut, its chunk requests out) and
        ``done``: the numbers of the chunks whose notifications are in the inbox and out."""
        plan = await self.fanouts.find_one({"_id": fanout_id})
        if plan is None:
            return None
        if plan.get("shared"):
            done = self.shared.find({"fanout_id": fanout_id, "published": True}, {"_id": 1})
            numbers = {int(d["_id"].rsplit(":", 1)[1]) async for d in done}
        else:
            done = self.chunks.find({"fanout_id": fanout_id, f"{outbox.FIELD}.0": {"$exists": False}}, {"number": 1})
            numbers = {c["number"] async for c in done}
        plan["published"] = plan.get("cut", True) and not plan.get(outbox.FIELD)
        plan["done"] = sorted(numbers)
        return plan

    async def chunks_notified(self, chunk_keys: Iterable[str]) -> dict[str, bool]:
        """The chunks notified among these: key -> whether its outbox still holds
        notifications to publish (read without the outboxes themselves)."""
        keys = list(dict.fromkeys(chunk_keys))
        if not keys:
            return {}
        docs = await find_by_ids(self.chunks, keys, {outbox.FIELD: {"$slice": 1}})
        return {k: bool(d.get(outbox.FIELD)) for k, d in docs.items()}

    async def chunk_outboxes(self, chunk_keys: Iterable[str]) -> dict[str, list[Outgoing]]:
        """The notifications these chunks still have to publish."""
        docs = await find_by_ids(self.chunks, chunk_keys, {outbox.FIELD: 1})
        return {k: outbox.pending(d) for k, d in docs.items()}

    async def insert_chunks(self, chunks: Sequence[tuple[ChunkNotified, Sequence[Outgoing]]]) -> set[str]:
        """Insert each chunk with its notifications in its outbox (its commit point: the set
        notified), unless one stands; returns the keys of those that stood already (another
        attempt's decision stands)."""
        now = datetime.now(UTC)
        docs: list[Document] = [
            {
                "_id": chunk.chunk_key,
                "fanout_id": chunk.fanout_id,
                "author_id": chunk.author_id,
                "number": chunk.number,
                "notified": chunk.notified,
                "notified_at": now,
                outbox.FIELD: [outbox.entry(o, now) for o in events],
            }
            for chunk, events in chunks
        ]
        return {docs[i]["_id"] for i in await insert_missing(self.chunks, docs)}

    # --- shared inbox entries (large fan-outs) ------------------------------------------

    async def insert_shared(self, entry: SharedEntry, users: Sequence[str], at: datetime) -> bool:
        """Insert a chunk's shared entry with its followers (the set it notifies), unless
        one stands; False if one stood already (another attempt's decision stands)."""
        doc = {**_shared_fields(entry), "users": list(users), "notified_at": at, "published": False}
        return not await insert_missing(self.shared, [doc])

    async def shared_published(self, keys: Iterable[str]) -> dict[str, bool]:
        """The shared entries that exist among these: key -> whether their notifications
        are published (read without the member lists)."""
        ids = list(dict.fromkeys(keys))
        if not ids:
            return {}
        docs = await find_by_ids(self.shared, ids, {"published": 1})
        return {k: bool(d.get("published")) for k, d in docs.items()}

    async def shared_members(self, key: str) -> tuple[list[str], datetime]:
        """A shared entry's followers and when it was written (the moment its events carry)."""
        doc = await self.shared.find_one({"_id": key}, {"users": 1, "notified_at": 1})
        assert doc is not None, f"shared entry {key} read before it was written"
        return list(doc["users"]), doc["notified_at"]

    async def shared_done(self, key: str) -> None:
        await self.shared.update_one({"_id": key}, {"$set": {"published": True}})

    async def add_shared_members(self, members: Mapping[str, tuple[SharedEntry, set[str]]]) -> None:
        """A rebuild: put users back into the shared entries their notifications name. Only
        the rebuild's one inbox consumer writes these, so a read, a merge and a plain upsert
        are safe; the member lists stay sorted, as live."""
        if not members:
            return
        held = {k: d.get("users") or [] for k, d in (await find_by_ids(self.shared, members, {"users": 1})).items()}
        ops = [
            UpdateOne(
                {"_id": key},
                {"$set": {**_shared_fields(entry), "users": sorted(set(held.get(key, ())) | users)}},
                upsert=True,
            )
            for key, (entry, users) in sorted(members.items())
        ]
        await self.shared.bulk_write(ops, ordered=False)

    # --- inbox ----------------------------------------------------------------------

    async def insert_notifications(self, notes: Iterable[NotificationCreated]) -> None:
        await insert_missing(self.inbox, [inbox_doc(n) for n in notes])

    async def notifications(
        self, user_id: str, *, unread_only: bool, before: tuple[datetime, str] | None, limit: int
    ) -> list[Document]:
        """A page of the user's inbox, newest first: their own entries and the shared
        entries they are in, merged (the same page for either kind of entry)."""
        query: Document = {"user_id": user_id}
        if unread_only:
            query["read"] = False
        if before is not None:
            created_at, nid = before
            query["$or"] = [{"created_at": {"$lt": created_at}}, {"created_at": created_at, "_id": {"$lt": nid}}]
        cursor = (
            self.inbox.find(query, batch_size=limit)
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        own = {d["_id"]: d for d in await cursor.to_list(None)}
        shared, materialized = await self._shared_page(user_id, before, limit)
        page = merge_newest_first(
            (_item(d) for d in own.values()), (i for i, _ in shared.values()), materialized=materialized, limit=limit
        )
        return [own[i.notification_id] if i.shared_id is None else shared[i.notification_id][1] for i in page]

    async def _shared_page(
        self, user_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> tuple[dict[str, tuple[InboxItem, Document]], set[str]]:
        """Up to ``limit`` notifications of shared entries the user is in, older than the
        cursor and not marked read (those are entries of the user's own), each as an item
        and as the document an entry of the user's own would be; and the ids passed over."""
        wanted = limit
        while True:
            docs = await self._shared_entries(user_id, before, wanted)
            items = {}
            for d in docs:
                item, doc = _shared_item(d, user_id)
                if before_cursor(item, before):
                    items[item.notification_id] = (item, doc)
            materialized = await self._own_among(list(items))
            if len(items) - len(materialized) >= limit or len(docs) < wanted:
                return items, materialized
            wanted += len(materialized) or limit

    async def _shared_entries(self, user_id: str, before: tuple[datetime, str] | None, limit: int) -> list[Document]:
        """The newest ``limit`` shared entries of the user at or before the cursor's moment
        (without their member lists), and every other one at the last moment taken: ties
        are ordered by notification id, which only the user's id gives."""
        query: Document = {"users": user_id}
        if before is not None:
            query["created_at"] = {"$lte": before[0]}
        without_members = {"users": 0}
        docs = (
            await self.shared.find(query, without_members, batch_size=limit)
            .sort("created_at", DESCENDING)
            .limit(limit)
            .to_list(None)
        )
        if len(docs) == limit:
            tied = self.shared.find({"users": user_id, "created_at": docs[-1]["created_at"]}, without_members)
            docs += [d async for d in tied]
        return list({d["_id"]: d for d in docs}.values())

    async def _own_among(self, notification_ids: list[str]) -> set[str]:
        if not notification_ids:
            return set()
        return set(await find_by_ids(self.inbox, notification_ids, {"_id": 1}))

    async def mark_read(self, user_id: str, notification_ids: Sequence[str] | None) -> int:
        """Mark the user's notifications read (all when ``notification_ids`` is None). One of
        a shared entry gets an entry of the user's own, read, that stands for it."""
        query: Document = {"user_id": user_id, "read": False}
        if notification_ids is not None:
            query["_id"] = {"$in": list(notification_ids)}
        result = await self.inbox.update_many(query, {"$set": {"read": True}})
        wanted = None if notification_ids is None else set(notification_ids)
        copies = []
        async for d in self.shared.find({"users": user_id}, {"users": 0}):
            item, doc = _shared_item(d, user_id)
            if wanted is None or item.notification_id in wanted:
                copies.append({**doc, "read": True, "shared_id": d["_id"]})
        if copies:
            await insert_missing(self.inbox, copies)
        return result.modified_count + len(copies)

    # --- seeding (benchmarks and fan-out tests) -------------------------------------------

    async def seed_followers(
        self, author_id: str, display_name: str, users: Sequence[str], at: datetime, *, count: int | None = None
    ) -> None:
        """Write an author and its followers straight into the projection, in bulk: for
        benchmarks and fan-out tests that need 10^4-10^6 followers, not for the service.
        ``count``: the follower count, when the edges were seeded apart (``seed_edges``)."""
        await self.seed_edges(
            [
                {
                    "_id": edge_id(author_id, u),
                    "author_id": author_id,
                    "user_id": u,
                    "active": True,
                    "followed_at": at,
                    "unfollowed_at": None,
                    "revision": 1,
                }
                for u in users
            ]
        )
        await self.authors.update_one(
            {"_id": author_id},
            {
                "$set": {
                    "known": True,
                    "display_name": display_name,
                    "profile_revision": 1,
                    "follower_count": len(users) if count is None else count,
                    "revision": 1,
                    "count_revision": 1,
                    "edges_revision": 1,
                }
            },
            upsert=True,
        )

    async def seed_edges(self, edges: Sequence[Document], *, batch: int = 10_000, writers: int = 4) -> None:
        """Edge documents inserted in bulk, a few batches at once (seeding only)."""
        slots = asyncio.Semaphore(writers)

        async def one(start: int) -> None:
            async with slots:
                await self.edges.insert_many(list(edges[start : start + batch]), ordered=False)

        await asyncio.gather(*(one(start) for start in range(0, len(edges), batch)))


def _chunk_doc(c: ChunkRange) -> Document:
    return {
        "number": c.number,
        "after_user_id": c.after_user_id,
        "upto_user_id": c.upto_user_id,
        "followers": c.followers,
    }
