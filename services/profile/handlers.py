"""Live batch handlers: plan (pure), one guarded bulk write with the events in each author's
outbox, publish through the runtime outbox; the owners' edits, the same way; and the
standing fold."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from contracts.envelope import deterministic_event_id
from contracts.events.profile import AuthorState, AuthorUpdated, ProfileEditRejected, ProfileEditRequested
from service_runtime import outbox
from service_runtime.delivery import Incoming
from service_runtime.outbox import Outbox, retry_conflicts
from service_runtime.publishing import EventPublisher, Outgoing
from services.profile.ingest import (
    ACCEPTS,
    BatchPlan,
    Ingested,
    authors_touched,
    plan_batch,
    works_named,
)
from services.profile.owner_edit import Refused, decide
from services.profile.page import cut_first_page
from services.profile.settings import ProfileSettings
from services.profile.standing import PARTS, newest
from services.profile.store import ProfileStore

Deliveries = dict[str, list[Outgoing]]


class IngestPublications:
    """``publications.ingested`` -> works and author records, events on ``profile.events``.

    Exactly-once effects without transactions: each changed author is written together
    with the events of its change (in its ``outbox``, in the same update), then the events
    are published and removed from the outbox (``Outbox.deliver``). If the process
    dies in between, the redelivered batch finds nothing new to change and publishes what
    the authors' outboxes still hold, first, under the same event ids; the runtime's
    sweeper publishes what is never redelivered."""

    accepts = ACCEPTS

    def __init__(self, store: ProfileStore, publisher: EventPublisher, outbox: Outbox, settings: ProfileSettings):
        self.store = store
        self.publisher = publisher
        self.outbox = outbox
        self.settings = settings

    async def __call__(self, batch: Sequence[Incoming[Any]]) -> None:
        deliveries = await retry_conflicts(
            lambda: self.write(batch), attempts=self.settings.write_conflict_attempts, what="profile authors"
        )
        await self.outbox.deliver(self.store.authors, deliveries)

    async def write(self, batch: Sequence[Incoming[Ingested]]) -> Deliveries:
        """Plan the batch over what is stored and write it; returns, per author touched, what
        its outbox holds to publish (what was pending when read first, then the new)."""
        stored = await self.store.load_works(works_named(batch))
        records = await self.store.load_authors(authors_touched(batch, stored))
        plan = plan_batch(batch, records, stored, min_shared_works=self.settings.close_collaborator_min_shared_works)
        fresh = {
            author_id: [self.publisher.outgoing(e.payload, cause=e.cause, event_id=e.event_id) for e in record.events]
            for author_id, record in plan.authors.items()
            if record.events
        }
        await self._cut_first_pages(plan)
        # Authors before works: a redelivery reads the old work again and so still knows
        # which authors a corrected author list dropped.
        async with self.outbox.dropping(self.store.authors, (r.author_id for r in plan.changed_authors)) as published:
            await self.store.write_authors(plan.changed_authors, fresh, plan.read_revisions, published)
        await self.store.write_works(plan.works, stored=set(stored))
        # What each author held first (the outbox skips what this process published), then the new.
        deliveries = {a: r.pending + fresh.get(a, []) for a, r in plan.authors.items()}
        return {a: events for a, events in deliveries.items() if events}

    async def _cut_first_pages(self, plan: BatchPlan) -> None:
        """Each changed author's first page, from the works this batch writes and the page it
        had; only works neither holds (an author dropped from a work brings an older one
        up, or a page cut for another size) are read, all in one read."""
        limit = self.settings.page_works
        changed = plan.changed_authors
        known = {work_id: w.work.model_dump(mode="json") for work_id, w in plan.works.items()}
        for record in changed:
            for work in record.first_page.works if record.first_page else ():
                known.setdefault(work["work_id"], work)
        cuts = {record.author_id: cut_first_page(record.entries, limit, known) for record in changed}
        if missing := {work_id for cut in cuts.values() if isinstance(cut, list) for work_id in cut}:
            known |= await self.store.work_contents(missing)
            cuts = {record.author_id: cut_first_page(record.entries, limit, known) for record in changed}
        for record in changed:
            cut = cuts[record.author_id]
            if isinstance(cut, list):
                raise LookupError(f"works {cut} of {record.author_id} are not stored")
            record.first_page = cut


class RecordStanding:
    """``claims.events``, ``trust.events``, ``follows.events`` -> the ``standing`` projection:
    a fold (each part kept at its newest revision), the same live and in a rebuild."""

    accepts = PARTS.types

    def __init__(self, store: ProfileStore) -> None:
        self.store = store

    async def __call__(self, batch: Sequence[Incoming[Any]]) -> None:
        await self.store.write_standing(newest(PARTS(item) for item in batch))


class ApplyOwnerEdits:
    """``webapp.profile`` -> the owners' edits of their own records: applied when the user
    owns the record (the standing's claim), published as ``AuthorUpdated`` with the new
    state on ``profile.events``; refused with ``ProfileEditRejected`` otherwise.

    Applied with the same guarded author write and outbox as ingestion (the two consumers
    may write one author at the same moment: the loser reads and decides again). A refusal
    changes nothing, so it is published directly: a redelivered command decides it again
    under the same event id."""

    accepts = (ProfileEditRequested,)

    def __init__(self, store: ProfileStore, publisher: EventPublisher, outbox: Outbox, settings: ProfileSettings):
        self.store = store
        self.publisher = publisher
        self.outbox = outbox
        self.settings = settings

    async def __call__(self, batch: Sequence[Incoming[Any]]) -> None:
        deliveries, refusals = await retry_conflicts(
            lambda: self.write(batch), attempts=self.settings.write_conflict_attempts, what="profile edits"
        )
        await self.publisher.publish(refusals)
        await self.outbox.deliver(self.store.authors, deliveries)

    async def write(self, batch: Sequence[Incoming[ProfileEditRequested]]) -> tuple[Deliveries, list[Outgoing]]:
        named = {item.payload.author_id for item in batch}
        docs, claims = await asyncio.gather(self.store.edit_sources(named), self.store.claims_of(named))
        states = {a: d["state"] for a, d in docs.items()}
        edited: dict[str, tuple[int, AuthorState]] = {}
        fresh: Deliveries = {}
        refusals: list[Outgoing] = []
        for item in batch:
            edit, cause = item.payload, item.envelope
            decided = decide(edit, states.get(edit.author_id), claims.get(edit.author_id))
            if isinstance(decided, Refused):
                refused = ProfileEditRejected(
                    author_id=edit.author_id, user_id=edit.user_id, reason=decided.reason, detail=decided.detail
                )
                event_id = deterministic_event_id(cause.event_id, refused.event_type)
                refusals.append(self.publisher.outgoing(refused, cause=cause, event_id=event_id))
            elif decided is not None:
                state = AuthorState.model_validate(decided)
                states[edit.author_id] = state.model_dump(mode="json")
                edited[edit.author_id] = (docs[edit.author_id]["revision"], state)
                updated = AuthorUpdated(author_id=edit.author_id, author=state)
                event_id = deterministic_event_id(cause.event_id, updated.event_type, edit.author_id)
                fresh.setdefault(edit.author_id, []).append(
                    self.publisher.outgoing(updated, cause=cause, event_id=event_id)
                )
        await self.store.write_edits(edited, fresh)
        # What each author held first (the outbox skips what this process published), then the new.
        deliveries = {a: outbox.pending(d) + fresh.get(a, []) for a, d in docs.items()}
        return {a: events for a, events in deliveries.items() if events}, refusals
