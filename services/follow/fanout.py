"""Notification fan-out: plan a source event's followers into chunks, then notify a chunk.

Planning (on the source events' consumer, a whole batch of source events at once) reads
the followers of each author at the moment of its source event (the author's edges, by
the (author_id, user_id) index), cuts them into user-id ranges of ``fanout_chunk_size`` and
inserts the plan (``_id`` = fanout id derived from the source event id: a replayed source
event finds the plan standing) with one ``FanoutChunkRequested`` per chunk in its outbox;
then publishes them on ``follow.fanout`` (12 partitions, keyed by "<fanout_id>:<n>": any
replica of the fan-out consumer group takes any chunk, and a huge fan-out never occupies
the consumers of commands and source events) and pulls them from the outbox. A large
author's plan is inserted uncut, with one ``FanoutCutRequested``: the ``ChunkCutter`` (a
consumer group of its own on ``follow.fanout``) cuts it while the first chunks already run.

A chunk reads its followers by an indexed range over the author's edges (user ids in
(after, upto], followed at the source event's moment), and inserts its chunk document
with the notifications in its outbox: that insert decides the set notified (a second
attempt finds it standing and takes it as it is). Then the inbox documents (``_id`` =
notification id: a second insert is a no-op) are written from that outbox, and the
notifications published and pulled. Redelivered after a crash, a chunk carries out what
its document still holds; one whose outbox is empty is done.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts.envelope import Envelope, deterministic_event_id
from contracts.events.notifications import (
    FanoutChunkRequested,
    FanoutCutRequested,
    NotificationCreated,
    NotificationKind,
    fanout_id,
)
from contracts.events.notifications import notification_id as derive_notification_id
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from service_runtime.logging import get_logger
from service_runtime.outbox import Outbox, WriteConflict, retry_conflicts
from service_runtime.publishing import EventPublisher, Outgoing
from services.follow.bulk import NotificationSender
from services.follow.rules import (
    ChunkNotified,
    ChunkRange,
    Plan,
    SharedEntry,
    cut_chunks,
    recipients,
    shares_entries,
)
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore

log = get_logger(__name__)
# (chunk requests with their causes, the followers planned per chunk key where known)
ChunkNotifier = Callable[[Sequence[tuple[FanoutChunkRequested, Envelope]], Mapping[str, int]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FanoutTrigger:
    """A source event that notifies the followers of its author."""

    source: Envelope
    author_id: str
    kind: NotificationKind
    title: str
    fanout_id: str = field(init=False)  # derived from the source event id, once

    def __post_init__(self) -> None:
        object.__setattr__(self, "fanout_id", str(fanout_id(self.source.event_id)))


class FanoutPlanner:
    def __init__(
        self,
        store: FollowStore,
        publisher: EventPublisher,
        outbox: Outbox,
        settings: FollowSettings,
        notify_now: ChunkNotifier,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.outbox = outbox
        self.settings = settings
        # Small fan-outs are notified right here, not through follow.fanout: there they
        # would queue behind a large fan-out's chunks (minutes for a million followers).
        self.notify_now = notify_now

    async def plan(self, triggers: Sequence[FanoutTrigger]) -> int:
        """Plan (once) and publish the chunks of a batch's fan-outs; returns the chunks sent.

        One read of the plans, one read of the edges per author concerned, one insert of
        the plans (with their chunk requests), one publish, one bulk pull of the outboxes.
        A plan written but not published (a crash in between) is published as it stands."""
        if not triggers:
            return 0
        started = time.perf_counter()
        first: dict[str, FanoutTrigger] = {}
        for t in triggers:  # an event delivered twice in one batch is one fan-out, as first seen
            first.setdefault(t.fanout_id, t)
        standing = await self.store.plan_outboxes(first)
        new = [t for t in first.values() if t.fanout_id not in standing]
        plans = await self._new_plans(new)
        planned = time.perf_counter()
        stood = await self.store.insert_plans(plans)
        if stood:  # another attempt inserted them meanwhile: theirs stand
            standing.update(await self.store.plan_outboxes(stood))
        ours = {plan.fanout_id: events for plan, events in plans if plan.fanout_id not in stood}
        pending = {**standing, **ours}
        inline = self.settings.fanout_inline_chunks
        small = {
            fid: events
            for fid, events in pending.items()
            if 0 < len(events) <= inline and all(_is_chunk(e) for e in events)
        }
        if small:
            sizes = {f"{p.fanout_id}:{c.number}": c.followers for p, _ in plans for c in p.chunks}
            await self.notify_now(
                [(_request(e), first[fid].source) for fid, events in small.items() for e in events], sizes
            )
            # Done: pulled without being published (if this process dies first, the chunk
            # request is published by the redelivered source event or the sweeper, and its
            # chunk, done already, is passed over).
            await Outbox.clear(
                self.store.fanouts, {fid: [str(e.envelope.event_id) for e in events] for fid, events in small.items()}
            )
        sent = await self.outbox.deliver(self.store.fanouts, {f: e for f, e in pending.items() if f not in small})
        log.info(
            "fanouts_planned",
            fanouts=len(first),
            new=len(ours),
            chunks=sent,
            followers=sum(p.followers for p, _ in plans),
            plan_s=round(planned - started, 3),
            total_s=round(time.perf_counter() - started, 3),
        )
        return sent

    async def _new_plans(self, triggers: Sequence[FanoutTrigger]) -> list[tuple[Plan, list[Outgoing]]]:
        """Each trigger's followers at its moment, cut into chunks, and the chunk requests.
        An author without followers gets an empty plan (kept, so a replay finds the same,
        empty, fan-out standing). An author with more followers than
        ``fanout_shared_above`` (the exact count, as planned: the plan keeps the choice)
        gets shared entries, and a plan still to be cut: its one ``FanoutCutRequested``
        lets any replica cut it (``ChunkCutter``), so no edge of it is read here."""
        counts = await self.store.follower_counts(t.author_id for t in triggers)
        large = {a for a, n in counts.items() if shares_entries(n, self.settings.fanout_shared_above)}
        moments: dict[str, set[datetime]] = {}
        for t in triggers:
            if t.author_id not in large:
                moments.setdefault(t.author_id, set()).add(t.source.occurred_at)
        followers_at = await self._followers_at({a: sorted(m) for a, m in moments.items()})
        out = []
        for t in triggers:
            moment = t.source.occurred_at
            if t.author_id in large:
                plan = Plan(
                    t.fanout_id,
                    t.author_id,
                    t.kind,
                    t.title,
                    t.source.event_id,
                    moment,
                    [],
                    True,
                    cut=False,
                    counted=counts[t.author_id],
                )
                out.append((plan, [self._cut_request(plan, t.source)]))
                continue
            chunks = cut_chunks(followers_at[(t.author_id, moment)], self.settings.fanout_chunk_size)
            plan = Plan(t.fanout_id, t.author_id, t.kind, t.title, t.source.event_id, moment, chunks)
            out.append((plan, [chunk_request(self.publisher, plan, c, t.source) for c in chunks]))
        return out

    def _cut_request(self, plan: Plan, cause: Envelope) -> Outgoing:
        request = FanoutCutRequested(
            fanout_id=uuid.UUID(plan.fanout_id),
            author_id=plan.author_id,
            kind=plan.kind,
            source_event_id=plan.source_event_id,
            title=plan.title,
            followed_before=plan.followed_before,
        )
        return self.publisher.outgoing(request, cause=cause, event_id=deterministic_event_id(plan.fanout_id, "cut"))

    async def _followers_at(self, moments: Mapping[str, Sequence[datetime]]) -> dict[tuple[str, datetime], list[str]]:
        """Who followed each author at each of its moments, sorted, each once: the authors'
        edges in one read, only the user ids kept."""
        authors = list(moments)
        read = await self.store.edges_in_ranges([(a, None, None) for a in authors])
        out: dict[tuple[str, datetime], list[str]] = {}
        for author_id, edges in zip(authors, read, strict=True):
            for moment in moments[author_id]:
                out[(author_id, moment)] = [user for user, edge in edges if edge.followed_at_time(moment)]
        return out


def chunk_request(publisher: EventPublisher, plan: Plan, chunk: ChunkRange, cause: Envelope) -> Outgoing:
    """The request of one chunk of a plan (its id derived from the plan and the number: a
    chunk requested again is the same event)."""
    request = FanoutChunkRequested(
        fanout_id=uuid.UUID(plan.fanout_id),
        chunk_key=f"{plan.fanout_id}:{chunk.number}",
        author_id=plan.author_id,
        kind=plan.kind,
        source_event_id=plan.source_event_id,
        title=plan.title,
        after_user_id=chunk.after_user_id,
        upto_user_id=chunk.upto_user_id,
        followed_before=plan.followed_before,
        shared=plan.shared,
    )
    return publisher.outgoing(
        request, cause=cause, event_id=deterministic_event_id(plan.fanout_id, "chunk", chunk.number)
    )


def _is_chunk(out: Outgoing) -> bool:
    return out.envelope.event_type == FanoutChunkRequested.event_type


def _request(out: Outgoing) -> FanoutChunkRequested:
    return FanoutChunkRequested.model_validate(out.envelope.data)


def _cut(p: FanoutCutRequested, item: Incoming[FanoutCutRequested]) -> tuple[FanoutCutRequested, Envelope]:
    return p, item.envelope


READ_CUT = Dispatch[tuple[FanoutCutRequested, Envelope]]().on(FanoutCutRequested, handler=_cut)


class ChunkCutter:
    """follow.fanout's ``FanoutCutRequested`` -> a large fan-out's chunks, cut as the
    author's user ids are read by the index and each requested at once, so the first
    chunks run while the rest are cut, and the consumer of source events never reads a
    large author's edges. Each cut is recorded in the plan, with its request in the
    plan's outbox, before that is published: a redelivered request (a crash, a rebalance)
    carries on from the last cut recorded, and no range is cut twice or left out."""

    accepts = READ_CUT.types

    def __init__(self, store: FollowStore, publisher: EventPublisher, outbox: Outbox, settings: FollowSettings) -> None:
        self.store = store
        self.publisher = publisher
        self.outbox = outbox
        self.settings = settings

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        for p, cause in (READ_CUT(item) for item in batch):
            attempt = functools.partial(self.cut, p, cause)
            await retry_conflicts(attempt, attempts=self.settings.write_conflict_attempts, what="fan-out cut")

    async def cut(self, p: FanoutCutRequested, cause: Envelope) -> None:
        fid = str(p.fanout_id)
        started = time.perf_counter()
        standing = await self.store.plan_cuts(fid)
        if standing is None:  # requests come from a plan's outbox: the plan was inserted first
            log.error("fanout_cut_without_plan", fanout_id=fid)
            return
        done, chunks = standing
        plan = Plan(fid, p.author_id, p.kind, p.title, p.source_event_id, p.followed_before, chunks, True)
        size = self.settings.fanout_shared_chunk_size
        number = len(chunks)
        if not done:
            after = chunks[-1].upto_user_id if chunks else None
            async for upto, edges in self.store.iter_edge_cuts(p.author_id, size, after):
                chunk = ChunkRange(number, after, upto, edges)
                request = chunk_request(self.publisher, plan, chunk, cause)
                if not await self.store.add_cut(fid, chunk, request):
                    raise WriteConflict(f"fan-out {fid}: chunk {number} was cut by another attempt")
                await self.outbox.deliver(self.store.fanouts, {fid: [request]})
                after, number = upto, number + 1
            if not await self.store.cuts_done(fid, number):
                raise WriteConflict(f"fan-out {fid}: cut by another attempt")
        # What an attempt that died recorded and did not publish.
        left = await self.store.plan_outboxes([fid])
        await self.outbox.deliver(self.store.fanouts, left)
        log.info("fanout_cut", fanout_id=fid, chunks=number, cut_s=round(time.perf_counter() - started, 3))


def _chunk(p: FanoutChunkRequested, item: Incoming[FanoutChunkRequested]) -> tuple[FanoutChunkRequested, Envelope]:
    return p, item.envelope


READ_CHUNK = Dispatch[tuple[FanoutChunkRequested, Envelope]]().on(FanoutChunkRequested, handler=_chunk)


class ChunkWorker:
    accepts = READ_CHUNK.types

    def __init__(
        self,
        store: FollowStore,
        publisher: EventPublisher,
        outbox: Outbox,
        settings: FollowSettings,
        sender: NotificationSender,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.outbox = outbox
        self.settings = settings
        self.sender = sender

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        await self.notify([READ_CHUNK(item) for item in batch])

    async def notify(
        self, requests: Sequence[tuple[FanoutChunkRequested, Envelope]], sizes: Mapping[str, int] | None = None
    ) -> None:
        """These chunks: one read of where they stand; then the plain ones in groups of at
        most ``fanout_chunk_concurrency * fanout_chunk_size`` followers (``sizes``: the
        followers planned per chunk key, where known), each group one range read of its
        followers, one insert of its chunk documents (each chunk's decision), one insert
        of their inbox entries, one publish and one mark that they are done; the shared
        ones (large fan-outs) a few at a time beside them."""
        chunks = {p.chunk_key: (p, cause) for p, cause in requests}
        started = time.perf_counter()
        notified = await self.store.chunks_notified(k for k, (p, _) in chunks.items() if not p.shared)
        published = await self.store.shared_published(k for k, (p, _) in chunks.items() if p.shared)
        shared_slots = asyncio.Semaphore(self.settings.fanout_shared_concurrency)

        async def shared(key: str) -> int:
            chunk, cause = chunks[key]
            async with shared_slots:
                return await self._notify_shared(chunk, cause, published.get(key))

        budget = self.settings.fanout_chunk_concurrency * self.settings.fanout_chunk_size
        groups: list[list[tuple[FanoutChunkRequested, Envelope, bool | None]]] = [[]]
        room = budget
        for key, (chunk, cause) in chunks.items():
            if chunk.shared or notified.get(key) is False:
                continue
            size = (sizes or {}).get(key, self.settings.fanout_chunk_size)
            if groups[-1] and size > room:
                groups.append([])
                room = budget
            groups[-1].append((chunk, cause, notified.get(key)))
            room -= size

        # A chunk the planner sized from the start is a whole small fan-out: its author's
        # edges are read whole, with the other such authors in one read.
        whole = {c.author_id for k, (c, _) in chunks.items() if c.after_user_id is None and k in (sizes or {})}

        async def plain() -> int:
            return sum([await self._notify(group, whole) for group in groups if group])

        sent = await asyncio.gather(plain(), *(shared(k) for k, (p, _) in chunks.items() if p.shared))
        log.info(
            "fanout_chunks_done",
            chunks=len(chunks),
            groups=len([g for g in groups if g]),
            notifications=sum(sent),
            left_behind=sum(1 for pending in notified.values() if pending)
            + sum(1 for done in published.values() if not done),
            total_s=round(time.perf_counter() - started, 3),
        )

    async def _notify_shared(self, chunk: FanoutChunkRequested, cause: Envelope, published: bool | None) -> int:
        """A large fan-out's chunk: its followers in one shared inbox entry, inserted once
        (the commit point: a second attempt takes the standing one), then their
        notifications sent, then the entry marked published. ``published``: None, no entry
        yet; False, written and maybe not sent (a crash); True, done."""
        if published:
            return 0
        entry = SharedEntry(
            chunk.chunk_key, chunk.author_id, chunk.kind, chunk.title, chunk.source_event_id, chunk.followed_before
        )
        users: list[str] | None = None
        now = datetime.now(UTC)
        at = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as the store keeps it
        if published is None:
            edges = await self.store.range_edges(chunk.author_id, chunk.after_user_id, chunk.upto_user_id)
            users = recipients(edges, chunk.followed_before)
            if not await self.store.insert_shared(entry, users, at):
                users = None  # another attempt decided it meanwhile: its decision stands
        if users is None:
            users, at = await self.store.shared_members(chunk.chunk_key)
        sent = await self.sender.send_shared(entry, users, cause=cause, occurred_at=at)
        await self.store.shared_done(chunk.chunk_key)
        return sent

    async def _notify(
        self, group: Sequence[tuple[FanoutChunkRequested, Envelope, bool | None]], whole: Set[str] = frozenset()
    ) -> int:
        """Plain chunks, each with ``pending``: None, not notified yet; True, its document
        still holds notifications to publish (a crash). The authors in ``whole`` (small
        fan-outs) have their edges read whole."""
        fresh = [(chunk, cause) for chunk, cause, pending in group if pending is None]
        read = await self.store.edges_in_ranges(
            [(c.author_id, c.after_user_id, c.upto_user_id) for c, _ in fresh], whole
        )
        decisions: dict[str, tuple[ChunkNotified, list[NotificationCreated], list[Outgoing]]] = {}
        for (chunk, cause), edges in zip(fresh, read, strict=True):
            decided_notes = [self._note(chunk, user) for user in recipients(edges, chunk.followed_before)]
            events = [self.publisher.outgoing(n, cause=cause, event_id=n.notification_id) for n in decided_notes]
            number = int(chunk.chunk_key.rsplit(":", 1)[1])
            decided = ChunkNotified(chunk.chunk_key, str(chunk.fanout_id), chunk.author_id, number, len(events))
            decisions[chunk.chunk_key] = (decided, decided_notes, events)
        stood = await self.store.insert_chunks([(d, events) for d, _, events in decisions.values()])
        # Where another attempt decided a chunk meanwhile (or a crash left one), its
        # decision stands: what its document holds.
        again = [c.chunk_key for c, _, pending in group if pending] + [k for k in decisions if k in stood]
        standing = await self.store.chunk_outboxes(again)
        outboxes: dict[str, list[Outgoing]] = {}
        notes: list[NotificationCreated] = []
        for chunk, _, _ in group:
            key = chunk.chunk_key
            if key in decisions and key not in stood:
                _, ours, outboxes[key] = decisions[key]
                notes += ours
            else:
                outboxes[key] = standing.get(key, [])
                notes += [_created(o) for o in outboxes[key]]
        # The inbox holds a notification before it is published (written again after a
        # crash: a no-op where it was).
        await self.store.insert_notifications(notes)
        # Removed before the chunk messages are committed: a chunk whose outbox is empty is
        # done, and a chunk document is not swept (its message comes back instead).
        return await self.outbox.deliver(self.store.chunks, outboxes, remove_now=True)

    @staticmethod
    def _note(chunk: FanoutChunkRequested, user: str) -> NotificationCreated:
        return NotificationCreated(
            notification_id=derive_notification_id(chunk.source_event_id, user),
            user_id=user,
            author_id=chunk.author_id,
            kind=chunk.kind,
            source_event_id=chunk.source_event_id,
            title=chunk.title,
            created_at=chunk.followed_before,
        )


def _created(out: Outgoing) -> NotificationCreated:
    return NotificationCreated.model_validate(out.envelope.data)
