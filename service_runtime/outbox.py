"""The transactional outbox: events kept in the document whose change caused them.

The store has no multi-document transactions, so an event cannot be written to a log of
its own in the same transaction as the change it reports. Instead a service writes the
change and the events it causes in ONE single-document update: the state's fields and
``$push`` onto the document's ``outbox`` array. Then it publishes them, and only then
removes them from the outbox (``$pull`` by event id: entries another write pushed
meanwhile stay). A process that dies in between leaves the entries in the document:

* the next write of the same document reads them and publishes them first, in order,
  before its own (so per-key order holds), under the same event ids;
* a sweeper publishes entries older than a grace period (an input that is never
  redelivered, a document nobody writes again).

Consumers see at most a duplicate with the same event id, which their idempotence absorbs.

An entry is a plain subdocument a person can read and query in a MongoDB shell:
``{topic, key, at, envelope: {event_id, event_type, ..., data: {...}}}``.

Removing what was published is a second update of each document, as costly as the write
that caused the events. So it is not on the path of the batch: ``deliver`` publishes and
notes what it published, and the outbox removes those entries a moment later, many
documents in one bulk write (``clear_after_s``; 0: at once), unless the document is
written again first: a writer that takes them (``dropping``) drops them in its own
update (``fold``), so a document written batch after batch is written once per batch.
Entries this process published are not published again when a batch that read them
before their removal passes them as pending. A process that dies with removals not done
leaves published entries behind; the sweeper publishes them again (the same event ids),
which consumers absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pymongo import ASCENDING, IndexModel, UpdateOne

from contracts.envelope import Envelope
from service_runtime.logging import get_logger
from service_runtime.publishing import EventPublisher, Outgoing
from service_runtime.store import Collection, first_batch

log = get_logger(__name__)
T = TypeVar("T")

FIELD = "outbox"
# Documents whose published entries a process remembers after removing them (see Outbox).
RECENT_DOCUMENTS = 100_000
# The sweeper finds documents with old entries through this index, never by a scan.
INDEX = IndexModel([(f"{FIELD}.at", ASCENDING)], name="outbox_at")


class WriteConflict(Exception):
    """Another writer changed a document between our read and our guarded write: read
    again and decide again (``retry_conflicts``)."""


async def retry_conflicts(attempt: Callable[[], Awaitable[T]], *, attempts: int, what: str) -> T:
    """Run ``attempt`` (read, decide, guarded write) until no ``WriteConflict`` stops it.
    Conflicts are short-lived (another replica wrote the same document a moment ago); one
    that lasts ``attempts`` tries is raised, and the delivery loop redelivers the batch."""
    for n in range(1, attempts + 1):
        try:
            return await attempt()
        except WriteConflict as exc:
            log.info("write_conflict_retrying", what=what, attempt=n, error=str(exc))
            if n == attempts:
                raise
            await asyncio.sleep(0.005 * n)
    raise AssertionError("unreachable")


def entry(out: Outgoing, at: datetime) -> dict[str, Any]:
    """An outgoing event as the outbox stores it, encoded once."""
    return {"topic": out.topic, "key": out.key, "at": at, "envelope": out.envelope.model_dump(mode="json")}


def outgoing(stored: Mapping[str, Any]) -> Outgoing:
    return Outgoing(stored["topic"], stored["key"], Envelope.model_validate(stored["envelope"]))


def pending(document: Mapping[str, Any] | None) -> list[Outgoing]:
    """What a document read from the store still has to publish, oldest first."""
    return [outgoing(e) for e in (document or {}).get(FIELD) or ()]


def push(update: dict[str, Any], events: Sequence[Outgoing], at: datetime | None = None) -> dict[str, Any]:
    """``update`` (an update document) that also appends ``events`` to the outbox."""
    if events:
        when = at or datetime.now(UTC)
        update.setdefault("$push", {})[FIELD] = {"$each": [entry(e, when) for e in events]}
    return update


def fold(fields: Mapping[str, Any], events: Sequence[Outgoing], at: datetime, published: Iterable[str]) -> list[Any]:
    """An update (a pipeline) that sets ``fields``, drops the ``published`` entries from the
    outbox and appends ``events``: the change and the removal in one write of the document.
    Every value is a literal: user text starting with ``$`` stays text."""
    drop = sorted(published)
    kept: Any = {"$ifNull": [f"${FIELD}", []]}
    if drop:
        kept = {"$filter": {"input": kept, "cond": {"$not": [{"$in": ["$$this.envelope.event_id", drop]}]}}}
    return [
        {
            "$set": {
                **{name: {"$literal": value} for name, value in fields.items()},
                FIELD: {"$concatArrays": [kept, {"$literal": [entry(e, at) for e in events]}]},
            }
        }
    ]


class Outbox:
    """Publishes what documents hold in their outbox, then removes it from them."""

    def __init__(self, publisher: EventPublisher, *, clear_after_s: float = 0.0) -> None:
        self.publisher = publisher
        self.clear_after_s = clear_after_s
        # Published, not yet removed: collection name -> (collection, doc id -> event ids).
        self._published: dict[str, tuple[Collection, dict[Any, set[str]]]] = {}
        # Published and removed lately: a batch that read a document before the removal
        # may still pass those entries as pending (collection name -> doc id -> event ids,
        # oldest first; bounded).
        self._recent: dict[str, OrderedDict[Any, set[str]]] = {}
        self._flushing: list[dict[str, tuple[Collection, dict[Any, set[str]]]]] = []  # being removed now
        self._clearing: asyncio.Task[None] | None = None

    async def deliver(
        self, collection: Collection, events: Mapping[Any, Sequence[Outgoing]], *, remove_now: bool = False
    ) -> int:
        """Publish each document's events (document by document, each in its order; those
        this process published before are skipped); then they are removed from the
        documents' outboxes (within ``clear_after_s``, or before returning with
        ``remove_now``: where an empty outbox is what says a piece of work is done).
        Returns how many were published."""

        def known(doc_id: Any, event: Outgoing) -> bool:
            event_id = str(event.envelope.event_id)
            return any(
                event_id in noted.get(collection.name, (collection, {}))[1].get(doc_id, ())
                for noted in (self._published, *self._flushing)
            ) or event_id in self._recent.get(collection.name, {}).get(doc_id, ())

        # What a document holds but this process published already (its removal pending or
        # just done; a writer passes all it read as pending, and a redelivered input pushes
        # the same ids again) is not sent again, only removed.
        fresh = {doc_id: [e for e in per_doc if not known(doc_id, e)] for doc_id, per_doc in events.items()}
        ordered = [e for per_doc in fresh.values() for e in per_doc]
        if ordered:
            await self.publisher.publish(ordered)
        if self.publisher.enabled:
            # Taken after publishing: a flush may have started meanwhile with the notes so far.
            _, published = self._published.setdefault(collection.name, (collection, {}))
            for doc_id, per_doc in events.items():
                if per_doc:
                    published.setdefault(doc_id, set()).update(str(e.envelope.event_id) for e in per_doc)
            if remove_now or self.clear_after_s <= 0:
                await self.flush()
            elif self._clearing is None or self._clearing.done():
                self._clearing = asyncio.create_task(self._clear_later())
        return len(ordered)

    @contextlib.asynccontextmanager
    async def dropping(self, collection: Collection, doc_ids: Iterable[Any]) -> AsyncIterator[dict[Any, set[str]]]:
        """The published entries noted for these documents, for the write made in the block
        to drop with its own update (``fold``): no longer noted once the block is done,
        noted again (to be removed later) if it fails."""
        noted = self._published.get(collection.name, (collection, {}))[1]
        taken = {doc_id: ids for doc_id in doc_ids if (ids := noted.pop(doc_id, None))}
        try:
            yield taken
        except BaseException:
            self._restore(collection, taken)
            raise
        self._removed(collection, taken)

    def _removed(self, collection: Collection, published: Mapping[Any, set[str]]) -> None:
        """These entries are no longer in their documents."""
        recent = self._recent.setdefault(collection.name, OrderedDict())
        for doc_id, ids in published.items():
            recent.setdefault(doc_id, set()).update(ids)
            recent.move_to_end(doc_id)
        while len(recent) > RECENT_DOCUMENTS:
            recent.popitem(last=False)

    def _restore(self, collection: Collection, published: Mapping[Any, set[str]]) -> None:
        """These entries may still be in their documents: to be removed later."""
        mine = self._published.setdefault(collection.name, (collection, {}))[1]
        for doc_id, ids in published.items():
            mine.setdefault(doc_id, set()).update(ids)

    async def flush(self) -> None:
        """Remove every published entry noted so far (also at shutdown)."""
        taken, self._published = self._published, {}
        self._flushing.append(taken)
        try:
            for collection, published in taken.values():
                await self.clear(collection, published)
                self._removed(collection, published)
        except BaseException:
            for collection, published in taken.values():  # again next time
                self._restore(collection, published)
            raise
        finally:
            self._flushing.remove(taken)

    async def close(self) -> None:
        """At shutdown: stop the background removal, then remove what is noted."""
        if self._clearing is not None:
            self._clearing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clearing
            self._clearing = None
        await self.flush()

    async def _clear_later(self) -> None:
        while self._published:
            await asyncio.sleep(self.clear_after_s)
            try:
                await self.flush()
            except Exception as exc:  # the store is away: the entries wait, nothing is lost
                log.warning("outbox_clear_failed", error=repr(exc))

    @staticmethod
    async def clear(collection: Collection, event_ids: Mapping[Any, Iterable[str]]) -> None:
        # In _id order, as writers write a batch: two bulk writes that take the same
        # documents' row locks in opposite orders deadlock in the store.
        ops = [
            UpdateOne({"_id": doc_id}, {"$pull": {FIELD: {"envelope.event_id": {"$in": sorted(ids)}}}})
            for doc_id, ids in sorted(event_ids.items(), key=lambda item: str(item[0]))
            if ids
        ]
        if ops:
            await collection.bulk_write(ops, ordered=False)

    async def sweep(self, collection: Collection, *, older_than: timedelta, limit: int = 500) -> int:
        """Publish the outboxes that hold an entry written before ``older_than`` ago (their
        writer died, or its input will not come again). Younger entries are most likely
        being published by their writer right now."""
        cutoff = datetime.now(UTC) - older_than
        published = 0
        while True:
            docs, more = await first_batch(collection, {f"{FIELD}.at": {"$lt": cutoff}}, {FIELD: 1}, size=limit)
            if not docs:
                return published
            published += await self.deliver(collection, {d["_id"]: pending(d) for d in docs})
            if not more:
                return published

    async def sweep_forever(
        self, collections: Sequence[Collection], *, interval_s: float, older_than: timedelta
    ) -> None:
        """A service's background task: sweep at start, then every ``interval_s``."""
        while True:
            for collection in collections:
                try:
                    swept = await self.sweep(collection, older_than=older_than)
                    if swept:
                        log.info("outbox_swept", collection=collection.name, events=swept)
                except Exception as exc:  # an outage must not end the sweeper
                    log.warning("outbox_sweep_failed", collection=collection.name, error=repr(exc))
            await asyncio.sleep(interval_s)
