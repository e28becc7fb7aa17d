"""Follow and unfollow commands: edges, exact counts, parking follows of unknown authors.

Commands for one author share a partition (keyed by author_id), so one consumer applies
them in order; this use case keeps that order inside a batch and is the only writer of an
author's follow state. Per author and batch:

1. finish the author's ``pending`` outbox, if a crash left it not done (edges, events, parked);
2. skip commands at or below the author's applied offset (a redelivered batch);
3. apply parked commands (oldest first), then the new ones, to the edges;
4. park what must wait for the author, then write count, applied offset and the new
   ``pending`` outbox in ONE update of the author document (the commit point);
5. write the edges, publish the events, drop finished parked commands, mark ``pending`` done.

Each step runs for all the batch's authors together (one read of the authors, one of the
edges concerned, one bulk update of the commits, one bulk write of the edges, one publish,
one insert of "done" markers): an author's commit point is still its own document update.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.envelope import Envelope, EventModel, deterministic_event_id
from contracts.events.follows import (
    AuthorFollowed,
    AuthorUnfollowed,
    FollowerCountChanged,
    FollowRejected,
    FollowRequested,
    UnfollowRequested,
)
from contracts.registry import decode
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from service_runtime.offsets import ReadHorizon
from service_runtime.publishing import EventPublisher, Outgoing
from service_runtime.replay import published_revisions
from services.follow.rules import Command, Edge, apply_commands, unknown_author_expired
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore, edge_doc, edge_from

log = get_logger(__name__)
NUDGE_PREFIX = "nudge:"
# A nudge is answered by the author's next commit (which clears ``nudged_at``); one still
# unanswered after this long is sent again (lost: a crash between marking and publishing,
# or still queued behind a backlog), then after twice as long each time (``nudges``: how
# many went unanswered). Re-sending every tick flooded command partitions that were behind
# with nudges for every parked author, and kept them behind.
NUDGE_RETRY_S = 30.0


@dataclass(frozen=True, slots=True)
class Queued:
    """A command waiting to be applied: new from the topic, or taken out of the parking."""

    envelope: Envelope
    payload: FollowRequested | UnfollowRequested
    partition: int
    offset: int
    parked: dict[str, Any] | None = None  # the parked document, if it came from there

    @property
    def is_follow(self) -> bool:
        return isinstance(self.payload, FollowRequested)


def encode_outgoing(out: Outgoing) -> dict[str, str]:
    return {"t": out.topic, "k": out.key, "e": out.envelope.model_dump_json()}


def decode_outgoing(doc: dict[str, str]) -> Outgoing:
    return Outgoing(doc["t"], doc["k"], Envelope.model_validate_json(doc["e"]))


class FollowCommands:
    def __init__(self, store: FollowStore, publisher: EventPublisher, settings: FollowSettings) -> None:
        self.store = store
        self.publisher = publisher
        self.settings = settings
        self._handling = asyncio.Lock()
        # How far the sources group has read profile.events (see ``_sources_read_until``).
        self._sources_read = ReadHorizon(
            settings.kafka_bootstrap_servers, settings.sources_group, [settings.physical_topic(Topic.PROFILE_EVENTS)]
        )

    def is_nudge(self, envelope: Envelope) -> bool:
        """A copy of a parked command the sweeper sends to wake its author's partition up."""
        return envelope.producer == self.settings.service_name and envelope.correlation_id.startswith(NUDGE_PREFIX)

    async def handle(self, batch: Sequence[Incoming]) -> None:
        # One batch at a time: the consumer's, or (in a rebuild) the sweeper's nudges.
        async with self._handling:
            await self._handle(batch)

    async def _handle(self, batch: Sequence[Incoming]) -> None:
        """The whole batch together: one read of its authors, one of the edges concerned,
        one bulk update committing every author (each update its author's commit point),
        then one bulk write of the edges, one publish and one bulk clear of the outboxes."""
        by_author: dict[str, list[Incoming]] = {}
        for item in batch:
            by_author.setdefault(item.payload.author_id, []).append(item)  # type: ignore[attr-defined]
        # How far profile.events has been read, BEFORE the authors: every registration
        # appended before that moment is then in the documents read next. Read the other
        # way round, a registration handled in between would leave its author unknown here
        # while the moment says it was read, and its follows would be rejected.
        sources_read_until = await self.store.sources_read_until()
        found = await self.store.authors_by_id(by_author)
        docs = {a: found.get(a) or {} for a in by_author}
        # Outboxes a crash left behind are carried out first (each step is idempotent).
        outboxes = {a: d["pending"] for a, d in docs.items() if d.get("pending")}
        done = await self.store.outboxes_done(p["id"] for p in outboxes.values())
        await self._finish({a: p for a, p in outboxes.items() if p["id"] not in done})
        parked = await self._parked({a: d for a, d in docs.items() if d.get("has_parked")})
        queues: dict[str, tuple[list[Queued], list[Queued]]] = {}
        for author_id, items in by_author.items():
            new = [
                Queued(i.envelope, i.payload, i.partition, i.offset)  # type: ignore[arg-type]
                for i in items
                if not self.is_nudge(i.envelope) and not _applied_before(docs[author_id], i)
            ]
            if new or parked.get(author_id):
                queues[author_id] = (parked.get(author_id, []), new)
        if not queues:
            return
        edges = await self.store.edges_of_many(
            {a: {q.payload.user_id for q in old + new} for a, (old, new) in queues.items() if docs[a].get("known")}
        )
        now = datetime.now(UTC)
        commits: dict[str, dict[str, Any]] = {}
        to_park: list[dict[str, Any]] = []
        for author_id, (old, new) in queues.items():
            fields, park = self._author(
                author_id, docs[author_id], old, new, edges.get(author_id, {}), now, sources_read_until
            )
            commits[author_id] = fields
            to_park.extend(park)
        await self.store.park(to_park)
        # The sweeper finds parked authors in ``parked_authors``: added before the commit
        # (a parked author is always found), removed after it (a stale entry is passed over).
        await self.store.add_parked_authors(
            [a for a, f in commits.items() if f["has_parked"] and not docs[a].get("has_parked")]
        )
        await self.store.set_authors_fields(commits)  # each author's update is its commit point
        await self.store.remove_parked_authors(
            [a for a, f in commits.items() if not f["has_parked"] and docs[a].get("has_parked")]
        )
        await self._finish({a: fields["pending"] for a, fields in commits.items()})

    def _author(
        self,
        author_id: str,
        doc: dict[str, Any],
        parked: list[Queued],
        new: list[Queued],
        edges: dict[str, Edge],
        now: datetime,
        sources_read_until: datetime | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One author's commit (the fields to set, with the ``pending`` outbox) and the
        documents of the commands to park. A parked follow of an unknown author is rejected
        once its wait ended before ``sources_read_until`` (``rules.unknown_author_expired``)."""
        events: list[Outgoing] = []
        fields: dict[str, Any] = {}
        to_park: list[Queued] = []
        waiting: list[dict[str, Any]] = []  # parked before and still parked
        parked_done: list[str] = []
        changed: dict[str, Any] = {}
        if doc.get("known"):
            queue = parked + new
            parked_done = [q.parked["_id"] for q in parked if q.parked]
            # A command a batch parked and then died before its commit point comes again
            # once its author is known, and is applied directly: its parked document (same
            # id, no author lists it) goes too, or it would wait in ``parked`` for ever.
            parked_done += [str(q.envelope.event_id) for q in new]
            changed = self._apply(author_id, doc, queue, edges, events, fields)
        else:
            for q in parked:
                if q.parked and unknown_author_expired(q.parked["expires_at"], sources_read_until):
                    parked_done.append(q.parked["_id"])
                    if q.is_follow:
                        events.append(self._rejected(q, "unknown_author"))
            waiting = [q.parked for q in parked if q.parked and q.parked["_id"] not in parked_done]
            # An unfollow of an unknown author is a no-op unless a parked follow precedes it.
            for q in new:
                if q.is_follow or waiting or to_park:
                    to_park.append(q)
        park_docs = [self._parked_doc(author_id, q, now) for q in to_park]
        fields["has_parked"] = bool(waiting or park_docs)
        fields["parked_ids"] = [d["_id"] for d in waiting + park_docs]
        fields["parked_until"] = min((d["expires_at"] for d in waiting + park_docs), default=None)
        if doc.get("nudged_at") is not None:
            fields.update(nudged_at=None, nudges=0)  # the nudge, if one is on its way, is answered
        if new:
            fields["applied_partition"] = new[-1].partition
            fields["applied_offset"] = new[-1].offset
        fields["pending"] = {
            "id": uuid.uuid4().hex,
            # FerretDB stores no nested arrays: one sub-document per edge.
            "edges": [{"u": user, **edge_doc(edge)} for user, edge in changed.items()],
            "events": [encode_outgoing(e) for e in events],
            "parked_done": parked_done,
        }
        return fields, park_docs

    def _apply(
        self,
        author_id: str,
        doc: dict[str, Any],
        queue: list[Queued],
        edges: dict[str, Edge],
        events: list[Outgoing],
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        commands = [
            Command("follow" if q.is_follow else "unfollow", q.payload.user_id, q.envelope.occurred_at, q)
            for q in queue
        ]
        start = int(doc.get("follower_count") or 0)
        applied = apply_commands(commands, edges, start, doc.get("owner_user_id"))
        for outcome in applied.outcomes:
            q: Queued = outcome.command.ref  # type: ignore[assignment]
            user = q.payload.user_id
            if outcome.result == "followed":
                events.append(self._event(AuthorFollowed(author_id=author_id, user_id=user, count=outcome.count), q))
            elif outcome.result == "unfollowed":
                events.append(self._event(AuthorUnfollowed(author_id=author_id, user_id=user, count=outcome.count), q))
            elif outcome.result == "rejected_self_follow":
                events.append(self._rejected(q, "self_follow"))
        if applied.count != start:
            revision = int(doc.get("count_revision") or 0) + 1
            last = queue[-1]
            # The revision is part of the id: a re-sent command may end two batches, and each
            # batch's count is its own event.
            events.append(
                self.publisher.outgoing(
                    FollowerCountChanged(author_id=author_id, count=applied.count, revision=revision),
                    cause=last.envelope,
                    event_id=deterministic_event_id(last.envelope.event_id, "FollowerCountChanged", revision),
                )
            )
            fields.update(follower_count=applied.count, count_revision=revision)
        elif applied.changed:
            # Written even when the batch nets to no change (a follow and its unfollow): a
            # rebuild that applies in one batch what live applied in two (parked commands)
            # then holds the same count, 0, not none.
            fields["follower_count"] = applied.count
        if applied.changed:
            fields["pages"] = self.store.pages_with(doc.get("pages") or [], applied.changed)
        return dict(applied.changed)

    async def _finish(self, pending: dict[str, dict[str, Any]]) -> None:
        """Carry out committed outboxes (author -> outbox), all authors together; every step
        is idempotent, so re-running it is safe."""
        if not pending:
            return
        await self.store.write_edges_many(
            {a: {state["u"]: edge_from(state) for state in p.get("edges", [])} for a, p in pending.items()}
        )
        await self.publisher.publish([decode_outgoing(e) for p in pending.values() for e in p.get("events", [])])
        await self.store.drop_parked([i for p in pending.values() for i in p.get("parked_done", [])])
        await self.store.mark_outboxes_done([p["id"] for p in pending.values()])

    async def _parked(self, docs: dict[str, dict[str, Any]]) -> dict[str, list[Queued]]:
        """The parked commands of these authors in offset order, read by the ids their
        documents list (one read for all)."""
        found = await self.store.parked_by_id(i for d in docs.values() for i in d.get("parked_ids") or [])
        out: dict[str, list[Queued]] = {}
        for author_id, doc in docs.items():
            queued = []
            for parked in sorted(
                (found[i] for i in doc.get("parked_ids") or [] if i in found), key=lambda p: p["offset"]
            ):
                envelope, payload = decode(Topic.WEBAPP_FOLLOWS, parked["envelope"].encode())
                queued.append(Queued(envelope, payload, parked["partition"], parked["offset"], parked))  # type: ignore[arg-type]
            out[author_id] = queued
        return out

    def _parked_doc(self, author_id: str, q: Queued, now: datetime) -> dict[str, Any]:
        return {
            "_id": str(q.envelope.event_id),
            "author_id": author_id,
            "partition": q.partition,
            "offset": q.offset,
            "envelope": q.envelope.model_dump_json(),
            "parked_at": now,
            "expires_at": now + timedelta(seconds=self.settings.unknown_author_wait_s),
        }

    def _event(self, payload: EventModel, cause: Queued) -> Outgoing:
        return self.publisher.outgoing(
            payload,
            cause=cause.envelope,
            event_id=deterministic_event_id(cause.envelope.event_id, payload.event_type),
        )

    def _rejected(self, q: Queued, reason: str) -> Outgoing:
        return self._event(
            FollowRejected(author_id=q.payload.author_id, user_id=q.payload.user_id, reason=reason),  # type: ignore[arg-type]
            q,
        )

    # --- the sweeper ----------------------------------------------------------------

    async def sweep_once(self, *, throttle: bool = True) -> int:
        """Wake up authors whose parked follows can now be applied (author known) or
        rejected (waited long enough, and profile.events read up to the end of the wait):
        send a nudge through their partition, so the command consumer stays the one writer
        of their follow state. Returns nudges sent."""
        now = datetime.now(UTC)
        retry_s = max(2 * self.settings.sweep_interval_s, NUDGE_RETRY_S)
        due = []
        parked_authors = await self.store.authors_with_parked()
        sources_read_until = await self._sources_read_until(now, parked_authors)
        for author in parked_authors:
            nudged_at = author.get("nudged_at")
            wait = timedelta(seconds=retry_s * 2 ** min(int(author.get("nudges") or 0), 6))
            if throttle and nudged_at is not None and now - nudged_at < wait:
                continue
            until = author.get("parked_until")
            if author.get("parked_ids") and (
                author.get("known") or (until is not None and unknown_author_expired(until, sources_read_until))
            ):
                due.append(author)
        first = await self.store.parked_by_id(a["parked_ids"][0] for a in due)
        due = [a for a in due if a["parked_ids"][0] in first]
        nudges = [self._nudge(first[a["parked_ids"][0]]) for a in due]
        await self.store.mark_nudged(
            {a["_id"]: int(a.get("nudges") or 0) + (a.get("nudged_at") is not None) for a in due}, now
        )
        if self.settings.rebuilding:
            # A rebuild publishes nothing and runs as one process: hand the nudges to the
            # command handler directly.
            await self.handle([Incoming(n.envelope, _command(n.envelope), n.topic, -1, -1) for n in nudges])
        else:
            await self.publisher.publish(nudges)
        return len(nudges)

    async def _sources_read_until(self, now: datetime, parked_authors: list[dict[str, Any]]) -> datetime | None:
        """The moment up to which the sources consumer group has handled profile.events
        (stored, so the command consumer of any replica reads the same), advanced while an
        unknown author's wait is over and its follows wait for that reading."""
        waiting = [
            a["parked_until"]
            for a in parked_authors
            if not a.get("known") and a.get("parked_until") is not None and a["parked_until"] <= now
        ]
        if not waiting:
            return None
        stored = await self.store.sources_read_until()
        if stored is not None and max(waiting) <= stored:
            return stored
        # Broker unreachable: this process's last reading, so the follows wait (known
        # authors are still nudged).
        reached = await self._sources_read.try_advance(now)
        if reached is not None and (stored is None or reached > stored):
            await self.store.advance_sources_read_until(reached)
            return reached
        return stored

    async def settle(self) -> None:
        """Rebuild only (a drain hook): apply every parked command whose author is known by now."""
        for _ in range(100):
            if not any(a.get("known") for a in await self.store.authors_with_parked()):
                return
            await self.sweep_once(throttle=False)
        log.warning("parked_commands_left_after_settle")

    async def adopt_published_revisions(self) -> None:
        """Rebuild only (a drain hook): each author's count revision is the one of the last
        FollowerCountChanged the live service published (see ``published_revisions``), which
        is what consumers hold, whether this rebuild counted fewer changes or more."""
        top = await published_revisions(
            self.settings,
            Topic.FOLLOWS_EVENTS,
            lambda event_type, data: data.get("revision") if event_type == "FollowerCountChanged" else None,
        )
        docs = await self.store.authors_by_id(top)
        revisions: dict[str, int | None] = {
            a: r for a, r in top.items() if int((docs.get(a) or {}).get("count_revision") or 0) != r
        }
        # And none where live published none: its batches netted every change to zero
        # (a parked follow and its unfollow applied together) where this rebuild's did not.
        revisions.update({a: None for a in await self.store.authors_with_count_revision() if a not in top})
        await self.store.set_count_revisions(revisions)

    def _nudge(self, parked: dict[str, Any]) -> Outgoing:
        envelope = Envelope.model_validate(json.loads(parked["envelope"]))
        return self.publisher.outgoing(_command(envelope), correlation_id=f"{NUDGE_PREFIX}{envelope.event_id}")

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception as exc:  # a failed sweep is retried at the next tick
                log.warning("sweep_failed", error=repr(exc))
            await asyncio.sleep(self.settings.sweep_interval_s)


def _command(envelope: Envelope) -> EventModel:
    payload = FollowRequested if envelope.event_type == "FollowRequested" else UnfollowRequested
    return payload.model_validate(envelope.data)


def _applied_before(doc: dict[str, Any], item: Incoming) -> bool:
    return doc.get("applied_partition") == item.partition and item.offset <= int(doc.get("applied_offset", -1))
