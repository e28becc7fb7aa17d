"""Batch handlers: decode -> plan (pure) -> bulk write with outbox -> publish -> clear outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from contracts.envelope import Envelope, EventModel
from contracts.events.publications import AuthorImported, WorkIngested
from contracts.topics import Topic
from service_runtime import compact
from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from service_runtime.publishing import EventPublisher, Outgoing
from service_runtime.replay import published_revisions
from services.profile.ingest import BatchPlan, authors_touched, plan_batch, stored_work
from services.profile.page import first_page
from services.profile.settings import ProfileSettings
from services.profile.standing import merge, newest, standing_update
from services.profile.store import ProfileStore, WriteConflict

log = get_logger(__name__)


def to_outbox(out: Outgoing) -> str:
    # One JSON string per event: FerretDB rewrites a document several times faster when
    # the outbox is a list of strings than when it is deeply nested documents. The envelope
    # is serialized by pydantic straight to JSON (no dict in between).
    topic, key = compact.dumps(out.topic), compact.dumps(out.key)
    return f'{{"topic":{topic},"key":{key},"envelope":{out.envelope.model_dump_json()}}}'


def from_outbox(item: str) -> Outgoing:
    doc = compact.loads(item)
    return Outgoing(doc["topic"], doc["key"], Envelope.model_validate(doc["envelope"]))


class IngestPublications:
    """``publications.ingested`` -> works and author records, events on ``profile.events``.

    Exactly-once effects without transactions: each changed author document is written
    together with its outbox (the events of that change) in one single-document
    replace; the events are published, then the outbox is cleared. If the process dies
    in between, the redelivered batch touches the same authors, finds nothing new to
    change, and publishes what their outboxes still hold (same event ids); the startup
    sweep (``flush_pending``) publishes outboxes of batches that are never redelivered.
    An outbox is pending while its token is listed in the store's ``outboxes``; marking
    the token published is one delete per batch, not one update per author.
    """

    def __init__(self, store: ProfileStore, publisher: EventPublisher, settings: ProfileSettings) -> None:
        self.store = store
        self.publisher = publisher
        self.settings = settings

    async def __call__(self, batch: Sequence[Incoming]) -> None:
        items = [(i.envelope, i.payload) for i in batch if isinstance(i.payload, (WorkIngested, AuthorImported))]
        if not items:
            return
        for attempt in range(1, self.settings.write_conflict_attempts + 1):
            try:
                outgoing, tokens = await self._apply(items)
                break
            except WriteConflict as exc:
                log.info("write_conflict_replanning", attempt=attempt, error=str(exc))
                if attempt == self.settings.write_conflict_attempts:
                    raise
        await self._publish(outgoing, tokens)

    async def _apply(self, items: list[tuple[Envelope, EventModel]]) -> tuple[list[Outgoing], list[str]]:
        """Plan and write the batch; returns the events to publish (every pending outbox
        of the authors touched) and the outbox tokens that publishing them finishes."""
        stored = await self.store.load_works(d.work.work_id for _, d in items if isinstance(d, WorkIngested))
        loaded = await self.store.load_authors(authors_touched(items, stored))
        finished = loaded.finished_tokens()  # before planning: the write below re-tokens the records
        plan = plan_batch(
            items, loaded.records, stored, min_shared_works=self.settings.close_collaborator_min_shared_works
        )
        fresh: dict[str, Outgoing] = {}  # this batch's events, already built: not parsed back
        for event in plan.events:
            out = self.publisher.outgoing(event.payload, cause=event.cause, event_id=event.event_id)
            item = to_outbox(out)
            fresh[item] = out
            plan.authors[event.payload.key()].outbox.append(item)
        await self._cut_first_pages(plan)
        # Authors before works: a redelivery re-reads the old works document and so still
        # knows which authors a corrected author list dropped.
        changed = plan.changed_authors
        token = await self.store.write_authors(changed, plan.read_revisions)
        await self.store.write_works(plan.works, stored=set(stored))
        outgoing = [fresh.get(item) or from_outbox(item) for record in plan.authors.values() for item in record.outbox]
        return outgoing, finished + ([token] if changed else [])

    async def _cut_first_pages(self, plan: BatchPlan) -> None:
        """Each changed author's first page, from the works this batch wrote and the page it
        had; only works neither holds (an author dropped from a work, or a page cut for
        another size) are read, all in one read."""
        limit = self.settings.page_works
        changed = plan.changed_authors
        known = {work_id: stored_work(doc) for work_id, doc in plan.works.items()}
        for record in changed:
            for work in record.first_page or ():
                known.setdefault(work["work_id"], work)
        cuts = {record.author_id: first_page(record.entries, limit, known) for record in changed}
        if missing := {work_id for _, _, ids in cuts.values() for work_id in ids}:
            known |= await self.store.works_by_id(list(missing))
            cuts |= {a: first_page(plan.authors[a].entries, limit, known) for a, (_, _, ids) in cuts.items() if ids}
        for record in changed:
            record.first_page, record.first_page_cursor, _ = cuts[record.author_id]
            record.first_page_limit = limit

    async def _publish(self, outgoing: list[Outgoing], tokens: list[str]) -> None:
        await self.publisher.publish(outgoing)
        await self.store.mark_published(tokens)

    async def flush_pending(self) -> int:
        """Publish every outbox left behind (a crash between write and publish)."""
        flushed = 0
        now = datetime.now(UTC)
        written_before = now - timedelta(seconds=self.settings.outbox_grace_s)
        stale_before = now - timedelta(seconds=self.settings.outbox_stale_after_s)
        while pending := await self.store.pending_outboxes(written_before, stale_before):
            for token, records in pending:
                await self._publish([from_outbox(item) for record in records for item in record.outbox], [token])
                flushed += len(records)
        if flushed:
            log.info("outboxes_flushed", authors=flushed)
        return flushed


async def adopt_published_revisions(store: ProfileStore, settings: ProfileSettings) -> None:
    """Rebuild only (a drain hook): each author's revision is the one of the last event the
    live service published for it (see ``service_runtime.replay.published_revisions``)."""
    top = await published_revisions(
        settings, Topic.PROFILE_EVENTS, lambda _, data: (data.get("author") or {}).get("revision")
    )
    records = (await store.load_authors(top)).records
    # Exactly the published one: consumers hold it, so the next change (one more) is newer
    # for them, whether this rebuild counted fewer changes or more.
    behind = [r for a, r in records.items() if r.revision != top[a]]
    for record in behind:
        record.revision = top[record.author_id]
        if record.state is not None:
            record.state["revision"] = record.revision
    await store.set_revisions(behind)


class RecordStanding:
    """``claims.events``, ``trust.events``, ``follows.events`` -> the ``standing`` projection."""

    def __init__(self, store: ProfileStore, settings: ProfileSettings) -> None:
        self.store = store
        self.settings = settings

    async def __call__(self, batch: Sequence[Incoming]) -> None:
        updates = newest([u for i in batch if (u := standing_update(i.payload)) is not None])
        if not updates:
            return
        for attempt in range(1, self.settings.write_conflict_attempts + 1):
            try:
                held = await self.store.load_standing(updates)
                docs = [doc for a, parts in updates.items() if (doc := merge(a, held.get(a), parts)) is not None]
                await self.store.write_standing(docs, {a: d.get("version") for a, d in held.items()})
                return
            except WriteConflict as exc:
                log.info("write_conflict_replanning", attempt=attempt, error=str(exc))
                if attempt == self.settings.write_conflict_attempts:
                    raise
