"""The profile service's projection: the only module that knows the driver and the stored shape.

Collections (plain documents, readable and queryable in a MongoDB shell):

* ``authors`` - one document per registered author::

      {_id, display_name, description, affiliation, orcid, open_to_collaborate,
       set_by_owner: [...], # the fields the record's owner set: importers leave them
       imported,            # identity from an AuthorImported (else from works' author lists)
       name_keys: [...],    # word-start suffixes of the folded name, for search (indexed)
       state: {...},        # the derived state, contracts' AuthorState as last published
       works: [{work_id, year, fingerprint, has_external_id, topics: [...],
                co_authors: [{author_id, display_name}]}, ...],   # newest first
       first_page: {limit, works: [{...Work...}], next_cursor},  # the page's first works
       graph: {coauthors: [{author_id, display_name, shared_works, close}],       # most shared first
               institutions: [{institution_id, display_name, works}]},          # most works first
                            # the research graph around the author, derived from the entries
       revision,            # = state.revision: one more with every published change
       outbox: [...]}       # service_runtime.outbox: events written, not yet published

* ``works`` - one document per work: ``{_id: work_id, work: {...Work...}, fingerprint,
  author_ids: [...]}`` (``author_ids`` indexed: a rebuild derives each author's works by it).
* ``standing`` - what other services decided about an author: ``{_id, claim: {...,
  revision}, trust: {score, band, verification_level, revision}, followers: {count,
  revision}}``. Each part is replaced only by a newer revision, in one conditional write;
  kept apart from ``authors`` so an event for an author not registered yet is kept until
  the author arrives.

Author writes are optimistic: a work touches co-authors that consumers of other
partitions may write at the same moment, so an author is updated only if it still has
the revision that was read (``WriteConflict`` otherwise: the caller reads and plans
again). No multi-document transactions.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel, InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError

from contracts.events.profile import AuthorState
from contracts.events.publications import Work
from service_runtime import outbox
from service_runtime.outbox import WriteConflict
from service_runtime.projection import Projection
from service_runtime.publishing import Outgoing
from service_runtime.store import (
    Collection,
    Database,
    Document,
    StoreAdapter,
    duplicate_positions,
    find_by_ids,
    upsert_where,
)
from services.profile.derive import Tally, WorkEntry, name_keys, newest_first
from services.profile.ingest import IDENTITY_FIELDS, AuthorRecord, FirstPage, NewWork, StoredWork
from services.profile.standing import Part

# Rebuild only: the authors an AuthorImported described, until the drain hook (then dropped).
IMPORTED = "rebuild_imported"


def first_page_doc(page: FirstPage) -> Document:
    return {"limit": page.limit, "works": page.works, "next_cursor": page.next_cursor}


def state_fields(state: AuthorState) -> Document:
    """What an author document holds of its published state: the state itself, and the
    identity and revision it names (so search and the planner read them as fields)."""
    doc = state.model_dump(mode="json")
    return {
        **{k: doc[k] for k in IDENTITY_FIELDS},
        "name_keys": name_keys(doc["display_name"]),
        "state": doc,
        "revision": doc["revision"],
    }


def author_fields(record: AuthorRecord, *, published: bool) -> Document:
    """The fields of an author document a change writes (``published``: with events, so its
    state, identity and revision too; else only what changed without an event)."""
    fields: Document = {"imported": record.imported, "works": newest_first(record.entries)}
    if record.first_page is not None:
        fields["first_page"] = first_page_doc(record.first_page)
    if record.tally is not None:  # every change of the entries derives a state, so a tally
        fields["graph"] = record.tally.graph()
    if published and record.state is not None:
        fields |= state_fields(record.state)
    return fields


def record_of(doc: Document, written: Written | None = None) -> AuthorRecord:
    """The record of a stored author document; its entries and first page are taken from
    ``written`` (what this process wrote at the same revision) when given, copied."""
    page = doc.get("first_page")
    record = AuthorRecord(
        author_id=doc["_id"],
        identity={k: doc.get(k) for k in IDENTITY_FIELDS} | {"author_id": doc["_id"]},
        entries=list(doc.get("works") or ()),
        revision=doc.get("revision", 0),
        pending=outbox.pending(doc),
        imported=doc.get("imported", False),
        first_page=FirstPage(page["limit"], page["works"], page["next_cursor"]) if page else None,
    )
    if written is not None:
        record.entries = list(written.entries)
        record.tally = written.tally.copy(record.entries) if written.tally is not None else None
        record.first_page = written.first_page
    return record


@dataclass(frozen=True, slots=True)
class Written:
    revision: int
    entries: list[WorkEntry]
    tally: Tally | None
    first_page: FirstPage | None

    @property
    def size(self) -> int:
        return len(self.entries) + (len(self.first_page.works) if self.first_page else 0)


class WrittenAuthors:
    """The entries (with their tally) and first page of the authors this process wrote
    last, at the revision it wrote, up to ``max_size`` entries and page works in all
    (least recently used dropped first).

    A batch reads every author it touches, and most of an author document is its entries
    and first page (~85%: the page's works are whole); the store's cost to read a document
    grows with its size. So authors held here are read without them, and taken from here
    only if the store still has the revision written: another writer's change (another
    replica) moved it on, and the author is then read whole."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._held: OrderedDict[str, Written] = OrderedDict()
        self._size = 0

    def get(self, author_id: str) -> Written | None:
        held = self._held.get(author_id)
        if held is not None:
            self._held.move_to_end(author_id)
        return held

    def moved(self, author_id: str, old: int, new: int) -> None:
        """The author's identity changed from revision ``old`` to ``new``, not its entries:
        what is held at ``old`` holds at ``new`` too (else it is dropped, for a whole read)."""
        held = self._held.get(author_id)
        if held is None:
            return
        if held.revision == old:
            self._held[author_id] = Written(new, held.entries, held.tally, held.first_page)
        else:
            self.drop(author_id)

    def __contains__(self, author_id: str) -> bool:
        return author_id in self._held

    def drop(self, author_id: str) -> None:
        if (old := self._held.pop(author_id, None)) is not None:
            self._size -= old.size

    def keep(self, records: Iterable[AuthorRecord]) -> None:
        for record in records:
            self.drop(record.author_id)
            # The planner's own lists: a later batch takes copies (``record_of``).
            held = Written(record.revision, record.entries, record.tally, record.first_page)
            if held.size <= self.max_size:
                self._held[record.author_id] = held
                self._size += held.size
        while self._size > self.max_size:
            _, old = self._held.popitem(last=False)
            self._size -= old.size


def work_doc(work: NewWork) -> Document:
    return {
        "_id": work.work.work_id,
        "work": work.work.model_dump(mode="json"),
        "fingerprint": work.fingerprint,
        "author_ids": list(work.author_ids),
    }


class ProfileStore(StoreAdapter):
    indexes: ClassVar[Mapping[str, Sequence[IndexModel]]] = {
        "authors": [
            IndexModel([("name_keys", ASCENDING)], name="name_keys"),
            # The research graph's topic and institution nodes: their authors, by _id pages.
            IndexModel([("state.topics.name", ASCENDING), ("_id", ASCENDING)], name="topics"),
            IndexModel([("graph.institutions.institution_id", ASCENDING), ("_id", ASCENDING)], name="institutions"),
        ],
        "works": [IndexModel([("author_ids", ASCENDING)], name="author_ids")],
    }
    outbox_collections = ("authors",)
    # What a rebuild must reproduce: everything but the outbox (events not published yet).
    projection = Projection.of(authors=("outbox",), works=(), standing=())

    def __init__(self, db: Database, written_cache_size: int = 0) -> None:
        super().__init__(db)
        self.written = WrittenAuthors(written_cache_size)
        self.authors: Collection = db["authors"]
        self.works: Collection = db["works"]
        self.standing: Collection = db["standing"]

    # --- ingestion ------------------------------------------------------------------

    async def load_works(self, work_ids: Iterable[str]) -> dict[str, StoredWork]:
        ids = list(set(work_ids))
        if not ids:
            return {}
        docs = await find_by_ids(self.works, ids, {"fingerprint": 1, "author_ids": 1})
        return {w: StoredWork(w, d["fingerprint"], tuple(d["author_ids"])) for w, d in docs.items()}

    async def load_authors(self, author_ids: Iterable[str]) -> dict[str, AuthorRecord]:
        """The authors by id, each with the events its outbox still holds. Those this
        process wrote last are read without their entries and first page, which are taken
        from memory if the store still has the revision written (``WrittenAuthors``)."""
        ids = set(author_ids)
        held = [a for a in ids if a in self.written]
        records: dict[str, AuthorRecord] = {}
        # ``graph`` is never read back: the planner derives it from the entries (``Tally``).
        if held:
            for doc in (await find_by_ids(self.authors, held, {"works": 0, "first_page": 0, "graph": 0})).values():
                written = self.written.get(doc["_id"])
                if written is not None and written.revision == doc.get("revision"):
                    records[doc["_id"]] = record_of(doc, written)
                else:
                    self.written.drop(doc["_id"])
        if rest := list(ids - set(records)):
            records |= {a: record_of(d) for a, d in (await find_by_ids(self.authors, rest, {"graph": 0})).items()}
        return records

    async def work_contents(self, work_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The works (``Work`` shape) by id."""
        ids = list(set(work_ids))
        if not ids:
            return {}
        return {w: d["work"] for w, d in (await find_by_ids(self.works, ids, {"work": 1})).items()}

    async def write_authors(
        self,
        records: Sequence[AuthorRecord],
        events: Mapping[str, Sequence[Outgoing]],
        read_revisions: Mapping[str, int | None],
        published: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Each changed author with its events appended to its outbox and its ``published``
        entries dropped from it, in one update per author, guarded by the revision read.
        Raises ``WriteConflict`` if another writer changed (or registered) one meanwhile:
        the others are written, and a new plan over what is stored then finds them
        unchanged and publishes their outbox. In ``_id`` order, as the outbox removes
        entries: two bulk writes taking the same rows in opposite orders deadlock."""
        at = datetime.now(UTC)
        ops: list[InsertOne[Document] | UpdateOne] = []
        updates = 0
        for record in sorted(records, key=lambda r: r.author_id):
            out = events.get(record.author_id, ())
            fields = author_fields(record, published=bool(out))
            expected = read_revisions.get(record.author_id)
            if expected is None:
                ops.append(InsertOne({"_id": record.author_id, **fields, "outbox": [outbox.entry(o, at) for o in out]}))
            else:
                guard = {"_id": record.author_id, "revision": expected}
                drop = (published or {}).get(record.author_id, ())
                ops.append(UpdateOne(guard, outbox.fold(fields, out, at, drop)))
                updates += 1
        if not ops:
            return
        try:
            matched = (await self.authors.bulk_write(ops, ordered=False)).matched_count
        except BulkWriteError as exc:
            duplicate_positions(exc)
            raise WriteConflict("an author was registered concurrently") from None
        if matched != updates:
            raise WriteConflict(f"{updates - matched} author(s) changed concurrently")
        self.written.keep(records)

    async def write_works(self, works: Mapping[str, NewWork], stored: set[str]) -> None:
        """New works are inserted, new versions of stored ones replace them."""
        ops: list[InsertOne[Document] | ReplaceOne[Document]] = [
            ReplaceOne({"_id": wid}, work_doc(w), upsert=True) if wid in stored else InsertOne(work_doc(w))
            for wid, w in works.items()
        ]
        if not ops:
            return
        try:
            await self.works.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            # Inserted meanwhile by a redelivery of the same input: the same content.
            duplicate_positions(exc)

    # --- the owners' edits ------------------------------------------------------------

    async def edit_sources(self, author_ids: Iterable[str]) -> dict[str, Document]:
        """What an edit needs of each author: its state, revision and outbox."""
        docs = await find_by_ids(self.authors, author_ids, {"state": 1, "revision": 1, "outbox": 1})
        return {a: d for a, d in docs.items() if "state" in d}

    async def claims_of(self, author_ids: Iterable[str]) -> dict[str, Document]:
        """Each author's claim part of its standing (owner, while claimed)."""
        docs = await find_by_ids(self.standing, author_ids, {"claim": 1})
        return {a: d["claim"] for a, d in docs.items() if d.get("claim")}

    async def write_edits(
        self, edited: Mapping[str, tuple[int, AuthorState]], events: Mapping[str, Sequence[Outgoing]]
    ) -> None:
        """Each edited author's new state (identity, name keys, revision) with its events in
        its outbox, guarded by the revision read (``WriteConflict`` if another writer moved it)."""
        if not edited:
            return
        at = datetime.now(UTC)
        ops = [
            UpdateOne({"_id": a, "revision": read}, outbox.push({"$set": state_fields(state)}, events.get(a, ()), at))
            for a, (read, state) in edited.items()
        ]
        matched = (await self.authors.bulk_write(ops, ordered=False)).matched_count
        if matched != len(ops):
            for a in edited:  # which one missed is unknown: each is read whole next time
                self.written.drop(a)
            raise WriteConflict(f"{len(ops) - matched} edited author(s) changed concurrently")
        for a, (read, state) in edited.items():
            self.written.moved(a, read, state.revision)

    # --- standing (claims, trust, followers) ------------------------------------------

    async def write_standing(self, parts: Sequence[Part]) -> None:
        """Each part replaces the one held only if its revision is newer, atomically."""
        await upsert_where(
            self.standing,
            [
                (
                    {
                        "_id": p.author_id,
                        "$or": [{f"{p.name}.revision": {"$lt": p.revision}}, {p.name: {"$exists": False}}],
                    },
                    {"$set": {p.name: p.value}},
                )
                for p in parts
            ],
        )

    # --- reads for HTTP -------------------------------------------------------------

    async def page_source(self, author_id: str) -> Document | None:
        """What the page needs of an author document: its state and first page."""
        return await self.authors.find_one({"_id": author_id}, {"state": 1, "first_page": 1})

    async def standing_of(self, author_id: str) -> Document | None:
        return await self.standing.find_one({"_id": author_id})

    async def entries_of(self, author_id: str) -> list[WorkEntry] | None:
        doc = await self.authors.find_one({"_id": author_id}, {"works": 1})
        return None if doc is None else list(doc.get("works") or ())

    async def search(self, folded_prefix: str, limit: int) -> list[Document]:
        cursor = (
            self.authors.find(
                {"name_keys": {"$regex": "^" + re.escape(folded_prefix)}},
                {"display_name": 1, "affiliation": 1, "state.works_count": 1},
            )
            .sort("display_name", ASCENDING)
            .limit(limit)
        )
        return [
            {
                "author_id": d["_id"],
                "display_name": d["display_name"],
                "affiliation": d.get("affiliation"),
                "works_count": (d.get("state") or {}).get("works_count", 0),
            }
            async for d in cursor
        ]

    # --- reads for the research graph ------------------------------------------------

    async def graph_source(self, author_id: str) -> Document | None:
        """What an author's neighbourhood is assembled from: its state, graph and entries
        (and its first page, whose works carry their titles)."""
        return await self.authors.find_one({"_id": author_id}, {"state": 1, "graph": 1, "works": 1, "first_page": 1})

    async def work_titles(self, work_ids: Iterable[str], source: Document | None = None) -> dict[str, str]:
        """Titles from the source's first page, the rest from ``works``. The page is written
        with the entries and the works just after, so a work a read finds in the entries
        may not be in ``works`` yet: its title comes from the page, where the newest are."""
        wanted = set(work_ids)
        page = ((source or {}).get("first_page") or {}).get("works") or ()
        titles = {w["work_id"]: w["title"] for w in page if w["work_id"] in wanted}
        if ids := list(wanted - titles.keys()):
            titles |= {
                w: d["work"]["title"] for w, d in (await find_by_ids(self.works, ids, {"work.title": 1})).items()
            }
        return titles

    async def work_content(self, work_id: str) -> dict[str, Any] | None:
        doc = await self.works.find_one({"_id": work_id}, {"work": 1})
        return None if doc is None else doc["work"]

    async def authors_with_topic(self, topic: str, after: str | None, limit: int) -> list[Document]:
        """Authors with works on ``topic``, by ``_id`` after ``after`` (the topics index)."""
        where: Document = {"state.topics.name": topic}
        if after:
            where["_id"] = {"$gt": after}
        cursor = self.authors.find(where, {"state.display_name": 1, "state.topics": 1}).sort("_id", ASCENDING)
        return [d async for d in cursor.limit(limit)]

    async def authors_at_institution(self, institution_id: str, after: str | None, limit: int) -> list[Document]:
        """Authors with works from ``institution_id``, by ``_id`` after ``after`` (the
        institutions index)."""
        where: Document = {"graph.institutions.institution_id": institution_id}
        if after:
            where["_id"] = {"$gt": after}
        cursor = self.authors.find(where, {"state.display_name": 1, "graph.institutions": 1}).sort("_id", ASCENDING)
        return [d async for d in cursor.limit(limit)]

    # --- rebuild (folds of the log) ---------------------------------------------------

    async def fold_states(self, states: Iterable[AuthorState]) -> None:
        """Each author's published state, identity and revision, where newer than held."""
        await upsert_where(
            self.authors,
            [
                (
                    {"_id": s.author_id, "$or": [{"revision": {"$lt": s.revision}}, {"revision": {"$exists": False}}]},
                    {"$set": state_fields(s)},
                )
                for s in states
            ],
            initial={"imported": False},
        )

    async def fold_imported(self, author_ids: Iterable[str]) -> None:
        """Rebuild only: authors an importer described, kept aside until the drain hook
        (``imported_in``): only ``fold_states`` creates author documents, since an upsert
        racing another writer's insert of the same ``_id`` can be lost without an error."""
        await upsert_where(self.db[IMPORTED], [({"_id": a}, {"$set": {"imported": True}}) for a in set(author_ids)])

    async def imported_in(self, author_ids: Sequence[str]) -> set[str]:
        return set(await find_by_ids(self.db[IMPORTED], author_ids, {"_id": 1}))

    async def forget_imported(self) -> None:
        await self.db[IMPORTED].drop()

    async def fold_works(self, works: Iterable[NewWork]) -> None:
        ops = [ReplaceOne({"_id": w.work.work_id}, work_doc(w), upsert=True) for w in works]
        if ops:
            await self.works.bulk_write(ops, ordered=False)

    async def states_after(self, last: str | None, limit: int) -> list[tuple[str, Document | None]]:
        """Authors in ``_id`` order after ``last``, each with its state."""
        where = {} if last is None else {"_id": {"$gt": last}}
        cursor = self.authors.find(where, {"state": 1}).sort("_id", ASCENDING).limit(limit)
        return [(d["_id"], d.get("state")) async for d in cursor]

    async def works_of(self, author_ids: Sequence[str]) -> list[NewWork]:
        """Every work on which one of these authors appears."""
        cursor = self.works.find({"author_ids": {"$in": list(author_ids)}}, {"work": 1, "fingerprint": 1})
        return [NewWork(Work.model_validate(d["work"]), d["fingerprint"]) async for d in cursor]

    async def set_works_of(
        self, derived: Mapping[str, tuple[list[WorkEntry], FirstPage, Document]], imported: set[str]
    ) -> None:
        ops = [
            UpdateOne(
                {"_id": a},
                {
                    "$set": {
                        "works": entries,
                        "first_page": first_page_doc(page),
                        "graph": graph,
                        "imported": a in imported,
                    }
                },
            )
            for a, (entries, page, graph) in derived.items()
        ]
        if ops:
            await self.authors.bulk_write(ops, ordered=False)
