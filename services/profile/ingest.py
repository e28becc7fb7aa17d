"""Planning one batch of ``publications.ingested``: pure, no broker, no driver.

Given the batch (in partition order), the author records and stored works it touches,
``plan_batch`` decides every change and the event each change publishes. A batch of
500 works for 100 authors becomes: one read of the works, one read of the authors, one
bulk write of the changed authors (each with its events in its outbox), one bulk write of
the works.

Per author, every change increments ``revision`` by one and yields one event carrying
the state after that change: ``AuthorRegistered`` (first sight), ``WorkAdded`` /
``WorkUpdated`` (with the work's summary), ``AuthorUpdated`` (identity changed, or the
author was dropped from a corrected work's author list).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.envelope import Envelope, EventModel, deterministic_event_id
from contracts.events import profile as ev
from contracts.events.publications import AuthorImported, Work, WorkIngested
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from service_runtime.publishing import Outgoing
from services.profile.derive import Tally, fuller_name, work_entry, work_fingerprint, work_summary

# What an importer says of an author; its owner may set some of them (``owner_edit``), which
# importers then no longer change (``set_by_owner``, stored with them).
IMPORTED_FIELDS = ("display_name", "description", "affiliation", "orcid", "open_to_collaborate")
IDENTITY_FIELDS = (*IMPORTED_FIELDS, "set_by_owner")

# What ``publications.ingested`` carries that this service takes.
Ingested = WorkIngested | AuthorImported


@dataclass(frozen=True, slots=True)
class StoredWork:
    """What idempotence needs of a stored work: its fingerprint and author list."""

    work_id: str
    fingerprint: str
    author_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NewWork:
    """A work this batch writes (new, or a new version of a stored one)."""

    work: Work
    fingerprint: str

    @classmethod
    def of(cls, work: Work) -> NewWork:
        return cls(work, work_fingerprint(work))

    @property
    def author_ids(self) -> tuple[str, ...]:
        return tuple(a.author_id for a in self.work.authors)


@dataclass(slots=True)
class FirstPage:
    """The page's first works (whole, newest first, as the page shows them) and the cursor
    to the rest, cut for ``limit`` works: kept with the author so a page is one read."""

    limit: int
    works: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(slots=True)
class AuthorRecord:
    """An author as the planner sees it (store.py knows how it is stored)."""

    author_id: str
    identity: dict[str, Any]
    entries: list[dict[str, Any]]
    revision: int = 0
    state: ev.AuthorState | None = None
    # Events written with an earlier change and not published yet (oldest first): they go
    # out before this batch's own.
    pending: list[Outgoing] = field(default_factory=list)
    # This batch's events of this author, in order.
    events: list[PlannedEvent] = field(default_factory=list)
    changed: bool = False
    imported: bool = False  # identity from an AuthorImported (else only from works' author lists)
    first_page: FirstPage | None = None
    # While a batch is planned: the counts its state is derived from and where each work's
    # entry is (built on first use, kept up to date by add/replace/drop_entry).
    tally: Tally | None = None
    positions: dict[str, int] | None = None

    def position(self, work_id: str) -> int | None:
        if self.positions is None:
            self.positions = {e["work_id"]: i for i, e in enumerate(self.entries)}
        return self.positions.get(work_id)

    def add_entry(self, entry: dict[str, Any]) -> None:
        if self.positions is not None:
            self.positions[entry["work_id"]] = len(self.entries)
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


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    payload: ev.AuthorRegistered | ev.AuthorUpdated | ev.WorkAdded | ev.WorkUpdated
    cause: Envelope
    event_id: uuid.UUID


@dataclass(slots=True)
class BatchPlan:
    authors: dict[str, AuthorRecord]
    works: dict[str, NewWork]  # the works to write (new content only)
    # Author id -> revision it had when read (None: new), for the optimistic write.
    read_revisions: dict[str, int | None]

    @property
    def changed_authors(self) -> list[AuthorRecord]:
        return [a for a in self.authors.values() if a.changed]

    @property
    def events(self) -> list[PlannedEvent]:
        return [e for a in self.authors.values() for e in a.events]


class _Planner:
    def __init__(self, authors: dict[str, AuthorRecord], works: dict[str, StoredWork], min_shared_works: int) -> None:
        self.authors = authors
        self.stored_works = works
        self.changed_works: dict[str, NewWork] = {}
        self.min_shared = min_shared_works
        self.read_revisions = {a: r.revision if r.revision else None for a, r in authors.items()}

    def _emit(self, record: AuthorRecord, event_type: str, cause: Envelope, work: Work | None = None) -> None:
        record.revision += 1
        record.changed = True
        state = record.state = ev.AuthorState.model_validate(record.derive_state(self.min_shared))
        payload: ev.AuthorRegistered | ev.AuthorUpdated | ev.WorkAdded | ev.WorkUpdated
        if work is not None:
            summary = ev.WorkSummary.model_validate(work_summary(work))
            cls = ev.WorkAdded if event_type == "WorkAdded" else ev.WorkUpdated
            payload = cls(author_id=record.author_id, author=state, work=summary)
        elif event_type == "AuthorRegistered":
            payload = ev.AuthorRegistered(author_id=record.author_id, author=state)
        else:
            payload = ev.AuthorUpdated(author_id=record.author_id, author=state)
        event_id = deterministic_event_id(cause.event_id, event_type, record.author_id)
        record.events.append(PlannedEvent(payload, cause, event_id))

    def _register(self, author_id: str, identity: dict[str, Any], cause: Envelope) -> AuthorRecord:
        record = AuthorRecord(
            author_id=author_id, identity={"author_id": author_id, "set_by_owner": [], **identity}, entries=[]
        )
        self.authors[author_id] = record
        self._emit(record, "AuthorRegistered", cause)
        return record

    def author_imported(self, data: AuthorImported, item: Incoming[AuthorImported]) -> None:
        cause = item.envelope
        identity = {k: getattr(data, k) for k in IMPORTED_FIELDS}
        identity["affiliation"] = data.affiliation.model_dump(mode="json") if data.affiliation else None
        record = self.authors.get(data.author_id)
        if record is None:
            self._register(data.author_id, identity, cause).imported = True
            return
        # What the owner set stays as the owner set it (a re-import must not undo it).
        for owned in record.identity.get("set_by_owner") or ():
            identity.pop(owned, None)
        if not record.imported:
            record.imported = True
            record.changed = True  # stored even when the identity is already the same
        if any(record.identity.get(k) != v for k, v in identity.items()):
            record.identity.update(identity)
            self._emit(record, "AuthorUpdated", cause)

    def work_ingested(self, data: WorkIngested, item: Incoming[WorkIngested]) -> None:
        cause = item.envelope
        work = data.work
        fingerprint = work_fingerprint(work)
        changed = self.changed_works.get(work.work_id)
        previous = changed.author_ids if changed else None
        held = changed.fingerprint if changed else None
        if changed is None and (stored := self.stored_works.get(work.work_id)) is not None:
            previous, held = stored.author_ids, stored.fingerprint
        for author in work.authors:
            record = self.authors.get(author.author_id)
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
        for dropped in previous or ():
            record = self.authors.get(dropped)
            if dropped in current or record is None:
                continue
            if record.drop_entry(work.work_id):
                self._emit(record, "AuthorUpdated", cause)
        if held != fingerprint:
            self.changed_works[work.work_id] = NewWork(work, fingerprint)


def _authors_of_work(data: WorkIngested, item: Incoming[WorkIngested]) -> set[str]:
    return {a.author_id for a in data.work.authors}


def _authors_of_import(data: AuthorImported, item: Incoming[AuthorImported]) -> set[str]:
    return {data.author_id}


_NAMED_AUTHORS = (
    Dispatch[set[str]]().on(WorkIngested, handler=_authors_of_work).on(AuthorImported, handler=_authors_of_import)
)
_WORK_ID = (
    Dispatch[str | None]()
    .on(WorkIngested, handler=lambda data, item: data.work.work_id)
    .on(AuthorImported, handler=lambda data, item: None)
)
ACCEPTS: tuple[type[EventModel], ...] = _NAMED_AUTHORS.types


def works_named(batch: Sequence[Incoming[Ingested]]) -> set[str]:
    return {work_id for item in batch if (work_id := _WORK_ID(item)) is not None}


def authors_touched(batch: Sequence[Incoming[Ingested]], stored_works: dict[str, StoredWork]) -> set[str]:
    """Every author a batch may change: a work's authors, its previous authors, imported authors."""
    ids: set[str] = set()
    for item in batch:
        ids |= _NAMED_AUTHORS(item)
    for work_id in works_named(batch):
        if (stored := stored_works.get(work_id)) is not None:
            ids.update(stored.author_ids)
    return ids


def plan_batch(
    batch: Sequence[Incoming[Ingested]],
    authors: dict[str, AuthorRecord],
    stored_works: dict[str, StoredWork],
    *,
    min_shared_works: int,
) -> BatchPlan:
    """Apply the batch in order to the records read; the records are changed in place."""
    planner = _Planner(authors, stored_works, min_shared_works)
    apply = (
        Dispatch[None]()
        .on(WorkIngested, handler=planner.work_ingested)
        .on(AuthorImported, handler=planner.author_imported)
    )
    for item in batch:
        apply(item)
    return BatchPlan(planner.authors, planner.changed_works, planner.read_revisions)
