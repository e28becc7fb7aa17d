"""Notification fan-out: plan a source event's followers into chunks, then notify a chunk.

Planning (on the source event's consumer, a whole batch of source events at once)
snapshots the followers at the moment of each source event, cuts them into user-id ranges
of ``fanout_chunk_size``, stores each chunk's members and the plan (``_id`` = fanout id
derived from the source event id: a replayed source event finds the plan standing), then
publishes one ``FanoutChunkRequested`` per chunk on ``follow.fanout`` (12 partitions, keyed by
"<fanout_id>:<n>"): any replica of
the fan-out consumer group takes any chunk, and a huge fan-out never occupies the
consumers of commands and source events.

A chunk inserts its notifications into the inbox in one bulk insert (``_id`` =
notification id: a second insert is a no-op), publishes them, and marks itself done in
the plan. Redelivered before "done" (a crash), it inserts nothing new and re-publishes
the same notification ids; after "done", it does nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts.envelope import Envelope, deterministic_event_id
from contracts.events.notifications import FanoutChunkRequested, NotificationCreated, NotificationKind, fanout_id
from contracts.events.notifications import notification_id as derive_notification_id
from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from service_runtime.publishing import EventPublisher, Outgoing
from services.follow.inbox import inbox_doc
from services.follow.rules import cut_chunks, in_range, recipients
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore

log = get_logger(__name__)


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
    def __init__(self, store: FollowStore, publisher: EventPublisher, settings: FollowSettings) -> None:
        self.store = store
        self.publisher = publisher
        self.settings = settings

    async def plan(self, triggers: Sequence[FanoutTrigger], authors: dict[str, dict[str, Any]]) -> int:
        """Plan (once) and publish the chunks of a batch's fan-outs; returns the chunks sent.

        ``authors``: the author documents as read for the batch (their follower pages). One
        read of the plans, one of the follower pages of every author concerned, one insert of
        the chunks and one of the plans, one publish of every chunk, one insert of the
        "published" markers.
        A plan written but not published (a crash in between) is published again as it stands.
        """
        if not triggers:
            return 0
        started = time.perf_counter()
        first: dict[str, FanoutTrigger] = {}
        for t in triggers:  # an event delivered twice in one batch is one fan-out, as first seen
            first.setdefault(t.fanout_id, t)
        unique = list(first.values())
        existing = await self.store.fanouts_by_id(t.fanout_id for t in unique)
        # A replayed source event finds its fan-out published: nothing to do.
        todo = [t for t in unique if not (existing.get(t.fanout_id) or {}).get("published")]
        plans = {t.fanout_id: existing[t.fanout_id] for t in todo if t.fanout_id in existing}
        new = [t for t in todo if t.fanout_id not in plans]
        plans.update(await self._new_plans(new, authors))
        chunks = [
            self.publisher.outgoing(
                FanoutChunkRequested(
                    fanout_id=uuid.UUID(t.fanout_id),
                    chunk_key=f"{t.fanout_id}:{n}",
                    author_id=t.author_id,
                    kind=plan["kind"],
                    source_event_id=t.source.event_id,
                    title=plan["title"],
                    after_user_id=r["after"],
                    upto_user_id=r["upto"],
                    followed_before=plan["followed_before"],
                ),
                cause=t.source,
                event_id=deterministic_event_id(t.fanout_id, "chunk", n),
            )
            for t in todo
            if not (plan := plans[t.fanout_id]).get("published")
            for n, r in enumerate(plan["chunks"])
        ]
        unpublished = [t.fanout_id for t in todo if not plans[t.fanout_id].get("published")]
        planned = time.perf_counter()
        await self.publisher.publish(chunks)
        await self.store.mark_fanouts_published(unpublished)
        log.info(
            "fanouts_planned",
            fanouts=len(todo),
            with_followers=len(unpublished),
            chunks=len(chunks),
            followers=sum(int(plans[t.fanout_id].get("followers") or 0) for t in todo),
            plan_s=round(planned - started, 3),
            total_s=round(time.perf_counter() - started, 3),
        )
        return len(chunks)

    async def _new_plans(
        self, triggers: Sequence[FanoutTrigger], authors: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Snapshot each trigger's followers at its moment, store the chunks' members, then
        the plans. An author without follower pages costs no read and no chunk: its plan is
        written already published (kept so a replay finds the same, empty, fan-out)."""
        pages = {t.author_id: (authors.get(t.author_id) or {}).get("pages") or [] for t in triggers}
        edges = await self.store.edges_of_authors({a: p for a, p in pages.items() if p})
        chunk_docs: list[dict[str, Any]] = []
        plan_docs: list[dict[str, Any]] = []
        for t in triggers:
            moment = t.source.occurred_at
            users = recipients(edges.get(t.author_id, ()), moment)
            chunks = cut_chunks(users, self.settings.fanout_chunk_size)
            chunk_docs.extend(
                {"_id": f"{t.fanout_id}:{r.number}", "after": r.after_user_id, "upto": r.upto_user_id, "users": members}
                for r, members in chunks
            )
            plan_docs.append(
                {
                    "_id": t.fanout_id,
                    "author_id": t.author_id,
                    "kind": t.kind,
                    "title": t.title,
                    "source_event_id": str(t.source.event_id),
                    "followed_before": moment,
                    "followers": len(users),
                    "chunks": [
                        {"after": r.after_user_id, "upto": r.upto_user_id} for r, _ in chunks
                    ],  # no nested arrays
                    "published": not chunks,
                    "planned_at": datetime.now(UTC),
                }
            )
        await self.store.save_chunks(chunk_docs)  # before the plans: a standing plan always has its members
        return await self.store.create_fanouts(plan_docs)


class ChunkWorker:
    def __init__(self, store: FollowStore, publisher: EventPublisher) -> None:
        self.store = store
        self.publisher = publisher

    async def handle(self, batch: Sequence[Incoming]) -> None:
        chunks = [i for i in batch if isinstance(i.payload, FanoutChunkRequested)]
        finished = await self.store.finished_chunks(c.payload.chunk_key for c in chunks)  # type: ignore[attr-defined]
        todo = list({p.chunk_key: (c, p) for c in chunks if (p := c.payload).chunk_key not in finished}.values())  # type: ignore[attr-defined]
        if not todo:
            return
        started = time.perf_counter()
        stored = await self.store.chunks_by_id(p.chunk_key for _, p in todo)
        members = await asyncio.gather(*(self._members(p, stored.get(p.chunk_key)) for _, p in todo))
        loaded = time.perf_counter()
        inbox: list[dict[str, Any]] = []
        out: list[Outgoing] = []
        for (item, chunk), users in zip(todo, members, strict=True):
            for user in users:
                nid = derive_notification_id(chunk.source_event_id, user)  # type: ignore[attr-defined]
                note = NotificationCreated(
                    notification_id=nid,
                    user_id=user,
                    author_id=chunk.author_id,
                    kind=chunk.kind,  # type: ignore[attr-defined]
                    source_event_id=chunk.source_event_id,
                    title=chunk.title,  # type: ignore[attr-defined]
                    created_at=chunk.followed_before,  # type: ignore[attr-defined]
                )
                inbox.append(inbox_doc(note))
                out.append(self.publisher.outgoing(note, cause=item.envelope, event_id=nid))
        built = time.perf_counter()
        await self.store.insert_notifications(inbox)
        inserted = time.perf_counter()
        await self.publisher.publish(out)
        published = time.perf_counter()
        await self.store.mark_chunks_done([chunk.chunk_key for _, chunk in todo])
        log.info(
            "fanout_chunks_done",
            chunks=len(todo),
            notifications=len(out),
            load_s=round(loaded - started, 3),
            build_s=round(built - loaded, 3),
            insert_s=round(inserted - built, 3),
            publish_s=round(published - inserted, 3),
            done_s=round(time.perf_counter() - published, 3),
        )

    async def _members(self, chunk: FanoutChunkRequested, doc: dict[str, Any] | None) -> list[str]:
        if doc is not None and doc.get("after") == chunk.after_user_id and doc.get("upto") == chunk.upto_user_id:
            return list(doc["users"])
        # No stored members (or another plan's): derive them from the follower index.
        author = await self.store.author(chunk.author_id) or {}
        edges = await self.store.all_edges(chunk.author_id, author.get("pages") or [])
        return [
            u for u in recipients(edges, chunk.followed_before) if in_range(u, chunk.after_user_id, chunk.upto_user_id)
        ]
