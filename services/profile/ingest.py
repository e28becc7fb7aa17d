"""Planning one batch of ``publications.ingested``: pure, no broker, no driver.

Given the batch (in partition order), the author records and stored works it touches,
``plan_batch`` decides every change and the event each change publishes. A batch of
500 works for 100 authors becomes: one read of the works, one read of the authors, one
bulk write of the changed authors (each with its outbox), one bulk write of the works.

Per author, every change increments ``revision`` by one and yields one event carrying
the state after that change: ``AuthorRegistered`` (first sight), ``WorkAdded`` /
``WorkUpdated`` (with the work's summary), ``AuthorUpdated`` (identity changed, or the
author was dropped from a corrected work's author list).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from contracts.envelope import Envelope, EventModel, deterministic_event_id
from contracts.events import profile as ev
from contracts.events.publications import AuthorImported, Work, WorkIngested
from service_runtime import compact
from services.profile.derive import Tally, fuller_name, name_keys, newest_first, work_entry, work_fingerprint
from services.profile.page import pack_works

IDENTITY_FIELDS = ("display_name", "description", "affiliation", "orcid", "open_to_collaborate")


@dataclass(slots=True)
class AuthorRecord:
    """An author document as the planner sees it (see store.py for its stored shape)."""

    author_id: str
    identity: dict[str, Any]
    entries: list[dict[str, Any]]
    revision: int = 0
    state: dict[str, Any] | None = None
    outbox: list[str] = field(default_factory=list)  # serialized events (handlers.to_outbox)
    outbox_token: str | None = None
    changed: bool = False
    imported: bool = False  # identity from an AuthorImported (else only from works' author lists)
    # The page's first works (newest first), whole, and the cursor to the rest: kept in the
    # author document so the page is one read (see page.first_page). None: not stored yet.
    first_page: list[dict[str, Any]] | None = None
    first_page_cursor: str | None = None
    first_page_limit: int | None = None  # the page size it was cut for
    # While a batch is planned: the counts its state is derived from and where each work's
    # entry is (built on first use, kept up to date by add/replace/drop_entry).
    tally: Tally | None = None
    positions: dict[str, int] | None = None

    def position(self, work_id: str) -> int | None:
        if self.positions is None:
            self.positions = {e["id"]: i for i, e in enumerate(self.entries)}
        return self.positions.get(work_id)

    def add_entry(self, entry: dict[str, Any]) -> None:
        if self.positions is not None:
            self.positions[entry["id"]] = len(self.entries)
        self.entries.append(entry)
        if self.tally is not None:
            self.tally.add(entry)

    def replace_entry(self, position: int, entry: dict[str, Any]) -> None:
        old, self.entries[position] = self.entries[position], entry
        if self.tally is not None:
            self.tally.remove(old, self.entries)
            self.tally.add(entry)

    def drop_entry(self, work_id: str) -> bool:
        position = self.position(work_id)
        if position is None:
            return False
        old = self.entries[position]
        self.entries = self.entries[:position] + self.entries[position + 1 :]
        self.positions = None
        if self.tally is not None:
            self.tally.remove(old, self.entries)
        return True

    def derive_state(self, min_shared_works: int) -> dict[str, Any]:
        if self.tally is None:
            self.tally = Tally(self.entries, min_shared_works)
        return self.tally.state(self.identity, self.revision)

    @classmethod
    def from_doc(cls, doc: dict[str, Any], written: AuthorRecord | None = None) -> AuthorRecord:
        """The record of a stored document. ``written``: this process's record of the same
        revision, as it wrote it; its entries, counts and page are taken (copied: the
        planner changes them) instead of decoded again."""
        if written is not None and written.revision == doc.get("revision", 0):
            entries = list(written.entries)
            tally = written.tally.copy(entries) if written.tally is not None else None
            state = compact.loads(doc["state_json"])
            first_page = written.first_page
        else:
            entries, state = stored_entries_and_state(doc)
            tally = None
            first_page = compact.unpack(doc["page_works"]) if "page_works" in doc else None
        return cls(
            author_id=doc["_id"],
            identity={k: doc.get(k) for k in IDENTITY_FIELDS} | {"author_id": doc["_id"]},
            entries=entries,
            revision=doc.get("revision", 0),
            state=state,
            outbox=stored_outbox(doc),
            outbox_token=doc.get("outbox_token"),
            imported=doc.get("imported", False),
            first_page=first_page,
            first_page_cursor=doc.get("page_cursor"),
            first_page_limit=doc.get("page_limit"),
            tally=tally,
        )

    def to_doc(self, outbox_token: str) -> dict[str, Any]:
        identity = {k: self.identity.get(k) for k in IDENTITY_FIELDS}
        return {
            "_id": self.author_id,
            **identity,
            "name_keys": name_keys(identity["display_name"]),
            "works_count": len(self.entries),
            # Entries kept newest first (the page's order): the stored list then depends on
            # the set of works only, not on the order their partitions were consumed in.
            "entries_z": compact.pack(newest_first(self.entries)),
            "state_json": compact.dumps(self.state),
            # Packed: one author's events of a batch repeat its state, and FerretDB's cost
            # grows with the bytes of a document (read or written, even when not projected).
            "revision": self.revision,
            "outbox_z": compact.pack_texts(self.outbox),
            "outbox_token": outbox_token,
            "imported": self.imported,
            **(
                {}
                if self.first_page is None
                else {
                    "page_works": pack_works(self.first_page),
                    "page_limit": self.first_page_limit,
                    "page_cursor": self.first_page_cursor,
                }
            ),
        }


def stored_outbox(doc: dict[str, Any]) -> list[str]:
    """The events (``handlers.to_outbox`` items) a stored author document carries
    (documents written before kept them as a list of strings, ``outbox``)."""
    if doc.get("outbox_z") is not None:
        return compact.unpack_texts(doc["outbox_z"])
    return list(doc.get("outbox") or [])


def stored_entries_and_state(doc: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The work entries and derived state of a stored author document: the entries packed
    (``entries_z``), the state a JSON string (``state_json``). FerretDB's cost to read or
    rewrite a document grows with its number of nested values (one string is one value: a
    20-work author reads and rewrites several times faster) and with its bytes (an author
    of 700 works holds ~150 KB of entries, ~4x less packed). Documents written before kept
    the entries as a JSON string (``entries_json``) or both as nested values."""
    if "entries_z" in doc:
        return compact.unpack(doc["entries_z"]), compact.loads(doc["state_json"])
    if "entries_json" in doc:
        return compact.loads(doc["entries_json"]), compact.loads(doc["state_json"])
    return list(doc.get("works", [])), doc.get("state")


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    payload: EventModel
    cause: Envelope
    event_id: uuid.UUID


@dataclass(slots=True)
class BatchPlan:
    authors: dict[str, AuthorRecord]
    works: dict[str, dict[str, Any]]  # work_id -> stored work document, changed ones only
    events: list[PlannedEvent]
    # Author id -> revision it had when read (None: new), for the optimistic write.
    read_revisions: dict[str, int | None]

    @property
    def changed_authors(self) -> list[AuthorRecord]:
        return [a for a in self.authors.values() if a.changed]


def work_summary(work: Work) -> dict[str, Any]:
    return {
        "work_id": work.work_id,
        "type": work.type,
        "year": work.year,
        "title": work.title,
        "venue": work.venue,
        "external_ids": work.external_ids.model_dump(mode="json"),
    }


def work_document(work: Work, fingerprint: str) -> dict[str, Any]:
    """The stored work: the work itself as one JSON string (``stored_work``), which FerretDB
    reads many times faster than the same work as nested values (the page reads 20)."""
    return {
        "_id": work.work_id,
        "fingerprint": fingerprint,
        "work_json": work.model_dump_json(),
        "author_ids": [a.author_id for a in work.authors],
    }


def stored_work(doc: dict[str, Any]) -> dict[str, Any]:
    """The work of a stored work document (documents written before kept it nested)."""
    return compact.loads(doc["work_json"]) if "work_json" in doc else doc["work"]


class _Planner:
    def __init__(
        self, authors: dict[str, AuthorRecord], works: dict[str, dict[str, Any]], min_shared_works: int
    ) -> None:
        self.authors = authors
        self.stored_works = works
        self.changed_works: dict[str, dict[str, Any]] = {}
        self.min_shared = min_shared_works
        self.events: list[PlannedEvent] = []
        self.read_revisions = {a: r.revision if r.revision else None for a, r in authors.items()}

    def _record(self, author_id: str) -> AuthorRecord | None:
        return self.authors.get(author_id)

    def _emit(self, record: AuthorRecord, event_type: str, cause: Envelope, work: Work | None = None) -> None:
        record.revision += 1
        record.changed = True
        record.state = record.derive_state(self.min_shared)
        state = ev.AuthorState.model_validate(record.state)
        payload: EventModel
        if event_type in ("WorkAdded", "WorkUpdated"):
            assert work is not None
            cls = ev.WorkAdded if event_type == "WorkAdded" else ev.WorkUpdated
            payload = cls(
                author_id=record.author_id, author=state, work=ev.WorkSummary.model_validate(work_summary(work))
            )
        else:
            cls = ev.AuthorRegistered if event_type == "AuthorRegistered" else ev.AuthorUpdated
            payload = cls(author_id=record.author_id, author=state)
        event_id = deterministic_event_id(cause.event_id, event_type, record.author_id)
        self.events.append(PlannedEvent(payload, cause, event_id))

    def _register(self, author_id: str, identity: dict[str, Any], cause: Envelope) -> AuthorRecord:
        record = AuthorRecord(author_id=author_id, identity={"author_id": author_id, **identity}, entries=[])
        self.authors[author_id] = record
        self._emit(record, "AuthorRegistered", cause)
        return record

    def author_imported(self, data: AuthorImported, cause: Envelope) -> None:
        identity = {k: getattr(data, k) for k in IDENTITY_FIELDS}
        identity["affiliation"] = data.affiliation.model_dump(mode="json") if data.affiliation else None
        record = self._record(data.author_id)
        if record is None:
            self._register(data.author_id, identity, cause).imported = True
            return
        record.imported = True
        if any(record.identity.get(k) != v for k, v in identity.items()):
            record.identity.update(identity)
            self._emit(record, "AuthorUpdated", cause)

    def work_ingested(self, data: WorkIngested, cause: Envelope) -> None:
        work = data.work
        fingerprint = work_fingerprint(work)
        previous = self.changed_works.get(work.work_id) or self.stored_works.get(work.work_id)
        for author in work.authors:
            record = self._record(author.author_id)
            if record is None:
                record = self._register(
                    author.author_id,
                    {
                        "display_name": author.display_name,
                        "description": None,
                        "affiliation": None,
                        "orcid": author.orcid,
                        "open_to_collaborate": False,
                    },
                    cause,
                )
            else:
                if author.orcid and not record.identity.get("orcid"):
                    record.identity["orcid"] = author.orcid  # an iD seen on a work links the record
                if not record.imported and fuller_name(author.display_name, record.identity.get("display_name")):
                    # Known from works only: the fullest name seen wins ("Benjamin Caine" over
                    # "Ben Caine"), whatever order the works arrive in.
                    record.identity["display_name"] = author.display_name
                    self._emit(record, "AuthorUpdated", cause)
            entry = work_entry(work, author.author_id, fingerprint)
            position = record.position(work.work_id)
            if position is None:
                record.add_entry(entry)
                self._emit(record, "WorkAdded", cause, work)
            elif record.entries[position] != entry:
                record.replace_entry(position, entry)
                self._emit(record, "WorkUpdated", cause, work)
        # A corrected author list: whoever was dropped loses the work from their record.
        current = {a.author_id for a in work.authors}
        for dropped in (previous or {}).get("author_ids", []):
            record = self._record(dropped)
            if dropped in current or record is None:
                continue
            if record.drop_entry(work.work_id):
                self._emit(record, "AuthorUpdated", cause)
        if previous is None or previous.get("fingerprint") != fingerprint:
            self.changed_works[work.work_id] = work_document(work, fingerprint)


def authors_touched(batch: list[tuple[Envelope, EventModel]], stored_works: dict[str, dict[str, Any]]) -> set[str]:
    """Every author a batch may change: a work's authors, its previous authors, imported authors."""
    ids: set[str] = set()
    for _, data in batch:
        if isinstance(data, WorkIngested):
            ids.update(a.author_id for a in data.work.authors)
            ids.update(stored_works.get(data.work.work_id, {}).get("author_ids", []))
        elif isinstance(data, AuthorImported):
            ids.add(data.author_id)
    return ids


def plan_batch(
    batch: list[tuple[Envelope, EventModel]],
    authors: dict[str, AuthorRecord],
    stored_works: dict[str, dict[str, Any]],
    *,
    min_shared_works: int,
) -> BatchPlan:
    """Apply the batch in order to the records read; the records are changed in place."""
    planner = _Planner(authors, stored_works, min_shared_works)
    for cause, data in batch:
        if isinstance(data, WorkIngested):
            planner.work_ingested(data, cause)
        elif isinstance(data, AuthorImported):
            planner.author_imported(data, cause)
    return BatchPlan(planner.authors, planner.changed_works, planner.events, planner.read_revisions)
