"""Notification fan-out: plan a source event's followers into chunks, then notify a chunk.

Planning (on the source event's consumer) snapshots the followers at the moment of the
source event, cuts them into user-id ranges of ``fanout_chunk_size``, stores each chunk's
members and the plan (``_id`` = fanout id derived from the source event id: a replayed
source event finds the plan standing), then publishes one ``FanoutChunkRequested`` per
chunk on ``follow.fanout`` (12 partitions, keyed by "<fanout_id>:<n>"): any replica of
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
from datetime import UTC, datetime
from typing import Any

from contracts.envelope import Envelope, deterministic_event_id
from contracts.events.notifications import FanoutChunkRequested, NotificationCreated, NotificationKind, fanout_id
from contracts.events.notifications import notification_id as derive_notification_id
from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from service_runtime.publishing import EventPublisher, Outgoing
from services.follow.rules import cut_chunks, in_range, recipients
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore

log = get_logger(__name__)


class FanoutPlanner:
    def __init__(self, store: FollowStore, publisher: EventPublisher, settings: FollowSettings) -> None:
        self.store = store
        self.publisher = publisher
        self.settings = settings

    async def plan(self, source: Envelope, author_id: str, kind: NotificationKind, title: str) -> int:
        """Plan (once) and publish the chunks of one source event's fan-out; returns chunks."""
        fid = str(fanout_id(source.event_id))
        started = time.perf_counter()
        plan = await self.store.fanout(fid)
        if plan is not None and plan.get("published"):
            return 0  # a replayed source event: its fan-out already went out
        if plan is None:
            plan = await self._new_plan(fid, source, author_id, kind, title)
        chunks = [
            self.publisher.outgoing(
                FanoutChunkRequested(
                    fanout_id=uuid.UUID(fid), chunk_key=f"{fid}:{n}", author_id=author_id, kind=plan["kind"],
                    source_event_id=source.event_id, title=plan["title"], after_user_id=r["after"],
                    upto_user_id=r["upto"], followed_before=plan["followed_before"],
                ),
                cause=source, event_id=deterministic_event_id(fid, "chunk", n),
            )
            for n, r in enumerate(plan["chunks"])
        ]
        planned = time.perf_counter()
        await self.publisher.publish(chunks)
        await self.store.mark_fanout_published(fid)
        log.info("fanout_planned", fanout_id=fid, author_id=author_id, kind=kind, chunks=len(chunks),
                 followers=plan.get("followers"), plan_s=round(planned - started, 3),
                 total_s=round(time.perf_counter() - started, 3))
        return len(chunks)

    async def _new_plan(
        self, fid: str, source: Envelope, author_id: str, kind: str, title: str
    ) -> dict[str, Any]:
        author = await self.store.author(author_id) or {}
        moment = source.occurred_at
        users = recipients(await self.store.all_edges(author_id, author.get("pages") or []), moment)
        chunks = cut_chunks(users, self.settings.fanout_chunk_size)
        await self.store.save_chunks([
            {"_id": f"{fid}:{r.number}", "after": r.after_user_id, "upto": r.upto_user_id, "users": members}
            for r, members in chunks
        ])
        return await self.store.create_fanout({
            "_id": fid, "author_id": author_id, "kind": kind, "title": title, "source_event_id": str(source.event_id),
            "followed_before": moment, "followers": len(users),
            "chunks": [{"after": r.after_user_id, "upto": r.upto_user_id} for r, _ in chunks],  # no nested arrays
            "published": False, "planned_at": datetime.now(UTC),
        })


def inbox_doc(note: NotificationCreated) -> dict[str, Any]:
    return {
        "_id": str(note.notification_id), "user_id": note.user_id, "author_id": note.author_id, "kind": note.kind,
        "source_event_id": str(note.source_event_id), "title": note.title, "created_at": note.created_at,
        "read": False,
    }


class PublishedNotifications:
    """Rebuild only: notifications.events -> the inbox. Which follower got which notification
    was decided live, against the followers of that moment; a rebuild reads it back."""

    def __init__(self, store: FollowStore) -> None:
        self.store = store

    async def handle(self, batch: Sequence[Incoming]) -> None:
        notes = [i.payload for i in batch if isinstance(i.payload, NotificationCreated)]
        await self.store.insert_notifications([inbox_doc(n) for n in notes])


class ChunkWorker:
    def __init__(self, store: FollowStore, publisher: EventPublisher) -> None:
        self.store = store
        self.publisher = publisher

    async def handle(self, batch: Sequence[Incoming]) -> None:
        chunks = [i for i in batch if isinstance(i.payload, FanoutChunkRequested)]
        finished = await asyncio.gather(*(self.store.chunk_done(str(c.payload.fanout_id), _number(c.payload))  # type: ignore[attr-defined]
                                          for c in chunks))
        todo = [(c, c.payload) for c, done in zip(chunks, finished, strict=True) if not done]
        if not todo:
            return
        started = time.perf_counter()
        members = await asyncio.gather(*(self._members(p) for _, p in todo))  # type: ignore[arg-type]
        loaded = time.perf_counter()
        inbox: list[dict[str, Any]] = []
        out: list[Outgoing] = []
        for (item, chunk), users in zip(todo, members, strict=True):
            for user in users:
                nid = derive_notification_id(chunk.source_event_id, user)  # type: ignore[attr-defined]
                note = NotificationCreated(
                    notification_id=nid, user_id=user, author_id=chunk.author_id, kind=chunk.kind,  # type: ignore[attr-defined]
                    source_event_id=chunk.source_event_id, title=chunk.title,  # type: ignore[attr-defined]
                    created_at=chunk.followed_before,  # type: ignore[attr-defined]
                )
                inbox.append(inbox_doc(note))
                out.append(self.publisher.outgoing(note, cause=item.envelope, event_id=nid))
        built = time.perf_counter()
        await self.store.insert_notifications(inbox)
        inserted = time.perf_counter()
        await self.publisher.publish(out)
        published = time.perf_counter()
        for _, chunk in todo:
            await self.store.mark_chunk_done(str(chunk.fanout_id), _number(chunk))  # type: ignore[arg-type]
        log.info("fanout_chunks_done", chunks=len(todo), notifications=len(out), load_s=round(loaded - started, 3),
                 build_s=round(built - loaded, 3), insert_s=round(inserted - built, 3),
                 publish_s=round(published - inserted, 3), done_s=round(time.perf_counter() - published, 3))

    async def _members(self, chunk: FanoutChunkRequested) -> list[str]:
        doc = await self.store.chunk(chunk.chunk_key)
        if doc is not None and doc.get("after") == chunk.after_user_id and doc.get("upto") == chunk.upto_user_id:
            return list(doc["users"])
        # No stored members (or another plan's): derive them from the follower index.
        author = await self.store.author(chunk.author_id) or {}
        edges = await self.store.all_edges(chunk.author_id, author.get("pages") or [])
        return [
            u for u in recipients(edges, chunk.followed_before)
            if in_range(u, chunk.after_user_id, chunk.upto_user_id)
        ]


def _number(chunk: FanoutChunkRequested) -> int:
    return int(chunk.chunk_key.rsplit(":", 1)[1])
