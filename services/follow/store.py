"""The follow service's projection in MongoDB (FerretDB locally).

Layout, chosen so the hot paths (commands, fan-out) only ever look documents up by _id,
the one lookup FerretDB's SQLite backend answers without scanning the collection:

* ``authors``: one document per author: identity (known, display name, owner, with the
  revisions that guard them), the exact follower count with its revision, the offset of
  the last command applied, and ``pending``: the outbox of the last command batch (edge
  writes, events to publish, parked commands to drop), written in the same update as the
  count; once carried out, its id goes into ``outboxes_done`` (an insert). A crash
  anywhere is healed by the next batch of that author.
* ``follower_pages``: an author's follower index cut into pages by hash of user id
  (``<author_id>#<page>``), each one JSON string user -> [on, followed_at, unfollowed_at]. Unfollows keep the edge,
  marked, so a fan-out knows who followed at the moment of its source event.
* ``following``: per user, the authors they follow (the reverse index for HTTP).
* ``parked``: follow commands for authors not known yet, waiting for the author; the
  author document lists their ids (``parked_ids``, in offset order) and when the first
  expires (``parked_until``), and ``parked_authors`` has one document per author with
  parked commands: the sweeper's starting point, so no path scans ``parked`` or ``authors``.
* ``fanouts`` / ``fanout_chunks``: the plan of each fan-out and the members of its chunks;
  ``fanouts_published`` / ``fanout_chunks_done``: one marker document per plan whose chunks
  were published and per chunk notified (inserts, not updates of the plan).
* ``inbox``: notifications, ``_id`` = the deterministic notification id, so inserting one
  twice is a no-op.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from service_runtime.projection import Projection
from service_runtime.store import bulk_update
from services.follow.rules import Edge, field_key, from_field_key, page_of

DUPLICATE_KEY = 11000

# What a rebuild from the log must reproduce: authors (identity, owner, exact counts),
# the follower index both ways, and the inbox. Left out: where the command consumer
# stands, its outbox and parking marks; parked commands and fan-out plans are work in
# progress.
PROJECTION = Projection.of(
    authors=(
        "pending",
        "applied_partition",
        "applied_offset",
        "has_parked",
        "parked_ids",
        "parked_until",
        "nudged_at",
        "nudges",
    ),
    follower_pages=(),
    following=(),
    inbox=(),
)
_READ_CONCURRENCY = 32
# Ids per ``{_id: {$in: [...]}}`` read: FerretDB (patched) serves it from the _id index,
# ~55 ms for 500 ids on 100,000 documents; slices of this size keep each answer small.
_IDS_PER_READ = 128


_PROFILE_PROGRESS = "profile.events"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def edge_doc(edge: Edge) -> dict[str, Any]:
    return {"on": edge.active, "at": edge.followed_at, "un": edge.unfollowed_at}


def edge_from(doc: dict[str, Any]) -> Edge:
    return Edge(bool(doc.get("on")), doc.get("at"), doc.get("un"))


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + timedelta(microseconds=micros)


def encode_page(edges: dict[str, Edge]) -> str:
    """A page's edges as one JSON string: FerretDB reads one string many times faster than
    a map of sub-documents (measured: 30,000 edges in 256 pages, 5.5 s as sub-documents)."""
    return json.dumps(
        {u: [int(e.active), _micros(e.followed_at), _micros(e.unfollowed_at)] for u, e in edges.items()},
        separators=(",", ":"),
    )


def decode_page(doc: dict[str, Any] | None) -> dict[str, Edge]:
    if not doc or not doc.get("j"):
        return {}
    return {u: Edge(bool(on), _moment(at), _moment(un)) for u, (on, at, un) in json.loads(doc["j"]).items()}


def _only_duplicates(exc: BulkWriteError) -> bool:
    return all(e.get("code") == DUPLICATE_KEY for e in exc.details.get("writeErrors", []))


class FollowStore:
    def __init__(self, db: AsyncDatabase, pages: int) -> None:
        self.db = db
        self.pages = pages
        self.authors = db.authors
        self.follower_pages = db.follower_pages
        self.following = db.following
        self.parked = db.parked
        self.parked_authors = db.parked_authors
        self.source_progress = db.source_progress
        self.done_outboxes = db.outboxes_done
        self.fanouts = db.fanouts
        self.chunks = db.fanout_chunks
        self.chunks_done = db.fanout_chunks_done
        self.fanouts_published = db.fanouts_published
        self.inbox = db.inbox
        self._reads = asyncio.Semaphore(_READ_CONCURRENCY)
        # The command, source and sweeper consumers all update author documents; FerretDB
        # applies an update as a read-modify-write that is not atomic across connections,
        # so concurrent updates of one document could lose a change. One at a time here.
        self._author_writes = asyncio.Lock()

    async def create_indexes(self) -> None:
        # FerretDB keeps these without using them for ranges; MongoDB serves the reads with them.
        await self.parked.create_index([("author_id", ASCENDING), ("offset", ASCENDING)])
        await self.inbox.create_index([("user_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)])

    async def _find_one(self, collection: Any, _id: str) -> dict[str, Any] | None:
        async with self._reads:
            return await collection.find_one({"_id": _id})

    async def _find_many(self, collection: Any, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The documents with these ids (missing ones left out), read by ``_id $in`` in slices."""
        unique = list(dict.fromkeys(ids))

        async def read(part: list[str]) -> list[dict[str, Any]]:
            async with self._reads:
                return await collection.find({"_id": {"$in": part}}).to_list(None)

        parts = await asyncio.gather(
            *(read(unique[i : i + _IDS_PER_READ]) for i in range(0, len(unique), _IDS_PER_READ))
        )
        return {d["_id"]: d for part in parts for d in part}

    # --- authors --------------------------------------------------------------------

    async def author(self, author_id: str) -> dict[str, Any] | None:
        return await self._find_one(self.authors, author_id)

    async def authors_by_id(self, author_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return await self._find_many(self.authors, author_ids)

    async def set_author_fields(self, author_id: str, fields: dict[str, Any]) -> None:
        async with self._author_writes:
            await self.authors.update_one({"_id": author_id}, {"$set": fields}, upsert=True)

    async def set_authors_fields(self, changes: dict[str, dict[str, Any]]) -> None:
        """``$set`` each author's changed fields (upserting), all authors in bulk."""
        if not changes:
            return
        async with self._author_writes:
            await bulk_update(
                self.authors, [UpdateOne({"_id": a}, {"$set": fields}, upsert=True) for a, fields in changes.items()]
            )

    async def mark_outboxes_done(self, outbox_ids: Sequence[str]) -> None:
        """Record these outboxes as carried out. A marker document each rather than
        unsetting ``pending`` in the author documents: an insert costs a fraction of a
        whole-document update on FerretDB, and the outbox is replaced at the author's
        next commit anyway."""
        await self.insert_ignoring_duplicates(self.done_outboxes, [{"_id": i} for i in outbox_ids])

    async def outboxes_done(self, outbox_ids: Iterable[str]) -> set[str]:
        return set(await self._find_many(self.done_outboxes, outbox_ids))

    async def authors_with_parked(self) -> list[dict[str, Any]]:
        """The authors with parked commands: from ``parked_authors`` (one small document
        per such author), read by _id; an entry whose author has none left (a crash between
        the author's commit and the entry's removal) is passed over."""
        ids = [d["_id"] for d in await self.parked_authors.find({}).to_list(None)]
        docs = await self.authors_by_id(ids)
        return [d for d in docs.values() if d.get("has_parked")]

    async def add_parked_authors(self, author_ids: Sequence[str]) -> None:
        await self.insert_ignoring_duplicates(self.parked_authors, [{"_id": a} for a in author_ids])

    async def remove_parked_authors(self, author_ids: Sequence[str]) -> None:
        if author_ids:
            await self.parked_authors.delete_many({"_id": {"$in": list(author_ids)}})

    # --- follower index -------------------------------------------------------------

    def page_id(self, author_id: str, page: int) -> str:
        return f"{author_id}#{page}"

    async def edges_of(self, author_id: str, user_ids: Iterable[str]) -> dict[str, Edge]:
        return (await self.edges_of_many({author_id: user_ids}))[author_id]

    async def edges_of_many(self, user_ids: dict[str, Iterable[str]]) -> dict[str, dict[str, Edge]]:
        """The edges of these users, per author, from one read of the pages that hold them."""
        users = {a: set(u) for a, u in user_ids.items()}
        pages = await self._pages_of({a: {page_of(u, self.pages) for u in us} for a, us in users.items()})
        return {a: {u: e for page in pages[a].values() for u, e in page.items() if u in users[a]} for a in users}

    async def _pages_of(self, numbers: dict[str, Iterable[int]]) -> dict[str, dict[int, dict[str, Edge]]]:
        wanted = {a: sorted(set(ns)) for a, ns in numbers.items()}
        docs = await self._find_many(self.follower_pages, (self.page_id(a, p) for a, ns in wanted.items() for p in ns))
        return {a: {p: decode_page(docs.get(self.page_id(a, p))) for p in ns} for a, ns in wanted.items()}

    async def all_edges(self, author_id: str, pages: Sequence[int]) -> list[tuple[str, Edge]]:
        return (await self.edges_of_authors({author_id: pages}))[author_id]

    async def edges_of_authors(self, pages: dict[str, Sequence[int]]) -> dict[str, list[tuple[str, Edge]]]:
        """Every edge of each author's follower index (given the author's page numbers),
        all pages of all authors read together."""
        ids = {self.page_id(a, p): a for a, numbers in pages.items() for p in set(numbers)}
        docs = await self._find_many(self.follower_pages, ids)
        out: dict[str, list[tuple[str, Edge]]] = {a: [] for a in pages}
        for page_id, doc in docs.items():
            out[ids[page_id]].extend(decode_page(doc).items())
        return out

    async def write_edges(self, author_id: str, edges: dict[str, Edge]) -> None:
        await self.write_edges_many({author_id: edges})

    async def write_edges_many(self, edges: dict[str, dict[str, Edge]]) -> None:
        """Set each author's edges to their state after the batch (idempotent: a replay sets
        the same): one read of the pages concerned, one bulk write of the pages and one of
        the users' following documents (one update per user, whatever the authors).
        Pages are rewritten whole: the command consumer is the only writer of an author's."""
        touched: dict[str, dict[int, dict[str, Edge]]] = {}
        following: dict[str, dict[str, Any]] = {}
        for author_id, changes in edges.items():
            for user, edge in changes.items():
                touched.setdefault(author_id, {}).setdefault(page_of(user, self.pages), {})[user] = edge
                following.setdefault(user, {})[f"a.{field_key(author_id)}"] = {
                    "on": edge.active,
                    "at": edge.followed_at,
                }
        if not touched:
            return
        current = await self._pages_of({a: pages.keys() for a, pages in touched.items()})
        await bulk_update(
            self.follower_pages,
            [
                UpdateOne(
                    {"_id": self.page_id(a, p)},
                    {"$set": {"author_id": a, "j": encode_page({**current[a][p], **changes})}},
                    upsert=True,
                )
                for a, pages in touched.items()
                for p, changes in sorted(pages.items())
            ],
        )
        await bulk_update(
            self.following,
            [UpdateOne({"_id": user}, {"$set": fields}, upsert=True) for user, fields in following.items()],
        )

    def pages_with(self, existing: Sequence[int], users: Iterable[str]) -> list[int]:
        return sorted(set(existing) | {page_of(u, self.pages) for u in users})

    async def following_of(self, user_id: str) -> list[tuple[str, datetime | None]]:
        doc = await self._find_one(self.following, user_id)
        return sorted((from_field_key(k), v.get("at")) for k, v in ((doc or {}).get("a") or {}).items() if v.get("on"))

    # --- parked commands ------------------------------------------------------------

    async def park(self, docs: list[dict[str, Any]]) -> None:
        await self.insert_ignoring_duplicates(self.parked, docs)

    async def parked_for(self, author_id: str) -> list[dict[str, Any]]:
        """An author's parked commands by a scan of ``parked`` (tests and tools; the service
        reads them by the ids its author documents list: ``parked_by_id``)."""
        return await self.parked.find({"author_id": author_id}).sort("offset", ASCENDING).to_list(None)

    async def parked_by_id(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return await self._find_many(self.parked, ids)

    async def drop_parked(self, ids: Sequence[str]) -> None:
        if ids:
            await self.parked.delete_many({"_id": {"$in": list(ids)}})

    async def set_count_revisions(self, revisions: dict[str, int | None]) -> None:
        """Author -> count revision; None removes it (no count was ever published)."""
        if revisions:
            async with self._author_writes:
                await bulk_update(
                    self.authors,
                    [
                        UpdateOne(
                            {"_id": a},
                            {"$set": {"count_revision": r}} if r is not None else {"$unset": {"count_revision": ""}},
                        )
                        for a, r in revisions.items()
                    ],
                )

    async def authors_with_count_revision(self) -> list[str]:
        """Rebuild only (a scan): the authors holding a count revision."""
        return [d["_id"] async for d in self.authors.find({"count_revision": {"$exists": True}}, {"_id": 1})]

    async def sources_read_until(self) -> datetime | None:
        """The moment up to which the source consumer has handled every ``profile.events``
        record (see ``FollowCommands.sweep_once``); None until it is first established."""
        doc = await self._find_one(self.source_progress, _PROFILE_PROGRESS)
        return None if doc is None else doc.get("read_until")

    async def advance_sources_read_until(self, at: datetime) -> None:
        # $max: a sweeper of another replica that measured an earlier moment never moves it back.
        await self.source_progress.update_one({"_id": _PROFILE_PROGRESS}, {"$max": {"read_until": at}}, upsert=True)

    async def mark_nudged(self, nudges: dict[str, int], at: datetime) -> None:
        """Nudged now (author -> how many earlier nudges went unanswered)."""
        if nudges:
            async with self._author_writes:
                await bulk_update(
                    self.authors,
                    [UpdateOne({"_id": a}, {"$set": {"nudged_at": at, "nudges": n}}) for a, n in nudges.items()],
                )

    # --- fan-out --------------------------------------------------------------------

    async def fanout(self, fanout_id: str) -> dict[str, Any] | None:
        """The plan, with ``done``: the numbers of its finished chunks."""
        plan = (await self.fanouts_by_id([fanout_id])).get(fanout_id)
        if plan is not None:
            finished = await self.finished_chunks(f"{fanout_id}:{n}" for n in range(len(plan["chunks"])))
            plan["done"] = [n for n in range(len(plan["chunks"])) if f"{fanout_id}:{n}" in finished]
        return plan

    async def fanouts_by_id(self, fanout_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The plans that exist among these ids, with ``published`` (without ``done``:
        planning never needs it)."""
        plans = await self._find_many(self.fanouts, fanout_ids)
        marked = await self._find_many(self.fanouts_published, [f for f, p in plans.items() if not p.get("published")])
        for f in marked:
            plans[f]["published"] = True
        return plans

    async def create_fanouts(self, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Insert each plan unless one exists; return the plans that stand (the first ones)."""
        if not docs:
            return {}
        try:
            await self.fanouts.insert_many(docs, ordered=False)
            return {d["_id"]: d for d in docs}
        except BulkWriteError as exc:
            if not _only_duplicates(exc):
                raise
            taken = {docs[e["index"]]["_id"] for e in exc.details.get("writeErrors", [])}
        standing = await self.fanouts_by_id(taken)
        return {d["_id"]: standing.get(d["_id"], d) for d in docs}

    async def mark_fanouts_published(self, fanout_ids: Sequence[str]) -> None:
        # A marker document per plan rather than ``$set`` on the plan: FerretDB rewrites a
        # whole document per update (~3 ms each, a plan per new work), an insert of small
        # documents costs a fraction of a millisecond each.
        await self.insert_ignoring_duplicates(self.fanouts_published, [{"_id": f} for f in fanout_ids])

    async def finished_chunks(self, chunk_keys: Iterable[str]) -> set[str]:
        """Which of these chunks (``<fanout_id>:<n>``) are finished."""
        return set(await self._find_many(self.chunks_done, chunk_keys))

    async def chunks_by_id(self, chunk_keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        return await self._find_many(self.chunks, chunk_keys)

    async def mark_chunks_done(self, chunk_keys: Sequence[str]) -> None:
        # One document per finished chunk rather than $addToSet on the shared plan: FerretDB
        # applies an update as a read-modify-write that is not atomic across connections, so
        # two replicas finishing chunks of one fan-out at once lost each other's marks.
        await self.insert_ignoring_duplicates(self.chunks_done, [{"_id": k} for k in chunk_keys])

    async def save_chunks(self, docs: list[dict[str, Any]]) -> None:
        await self.insert_ignoring_duplicates(self.chunks, docs)

    # --- inbox ----------------------------------------------------------------------

    async def insert_notifications(self, docs: list[dict[str, Any]]) -> None:
        await self.insert_ignoring_duplicates(self.inbox, docs)

    async def notifications(
        self, user_id: str, *, unread_only: bool, before: tuple[datetime, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"user_id": user_id}
        if unread_only:
            query["read"] = False
        if before is not None:
            created_at, nid = before
            query["$or"] = [{"created_at": {"$lt": created_at}}, {"created_at": created_at, "_id": {"$lt": nid}}]
        cursor = self.inbox.find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return await cursor.to_list(None)

    async def mark_read(self, user_id: str, notification_ids: Sequence[str] | None) -> int:
        query: dict[str, Any] = {"user_id": user_id, "read": False}
        if notification_ids is not None:
            query["_id"] = {"$in": list(notification_ids)}
        result = await self.inbox.update_many(query, {"$set": {"read": True}})
        return result.modified_count

    # --- helpers --------------------------------------------------------------------

    async def insert_ignoring_duplicates(self, collection: Any, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        try:
            await collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if not _only_duplicates(exc):
                raise

    async def seed_followers(self, author_id: str, display_name: str, users: Sequence[str], at: datetime) -> None:
        """Write an author and its followers straight into the projection, in bulk: for
        benchmarks and fan-out tests that need 10^4-10^5 followers, not for the service."""
        by_page: dict[int, dict[str, Edge]] = {}
        for user in users:
            by_page.setdefault(page_of(user, self.pages), {})[user] = Edge(True, at, None)
        await self.follower_pages.insert_many(
            [
                {"_id": self.page_id(author_id, p), "author_id": author_id, "j": encode_page(e)}
                for p, e in by_page.items()
            ]
        )
        await self.set_author_fields(
            author_id,
            {
                "known": True,
                "display_name": display_name,
                "profile_revision": 1,
                "follower_count": len(users),
                "count_revision": 1,
                "pages": sorted(by_page),
            },
        )
