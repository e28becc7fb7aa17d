"""Composition root of the follow service: consumers, fan-out workers, sweeper, HTTP.

Live, the service decides (commands, fan-outs) and folds what others tell it (identity,
owner, read marks). A rebuild (``settings.rebuilding``) decides nothing: it folds its own
decisions back from follows.events and notifications.events, and the same identity and
owner events, with consumers of its own (``runs="rebuild"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from contracts.events.follows import (
    AuthorFollowed,
    AuthorUnfollowed,
    FollowerCountChanged,
    FollowPending,
    FollowRejected,
)
from contracts.events.notifications import FanoutChunkRequested, NotificationCreated
from contracts.topics import Topic
from service_runtime.delivery import BatchHandler, Incoming
from service_runtime.service import Service
from services.follow.bulk import NotificationSender
from services.follow.commands import FollowCommands
from services.follow.fanout import ChunkCutter, ChunkWorker, FanoutPlanner
from services.follow.inbox import InboxEvents
from services.follow.ledger import EdgeHealer, FollowsRebuild
from services.follow.routes import router
from services.follow.settings import SOURCES_GROUP, FollowSettings
from services.follow.sources import SourceEvents, SourcesRebuild
from services.follow.store import FollowStore

DESCRIPTION = (
    "Follow edges with exact follower counts, and notifications of followers when an author they "
    "follow adds a work, is claimed, or moves up a trust band (fanned out in chunks)."
)
SOURCE_TOPICS = (Topic.PROFILE_EVENTS, Topic.CLAIMS_EVENTS, Topic.TRUST_EVENTS)


def _bound(handler: BatchHandler) -> BatchHandler:
    """Log lines of a batch name the correlation id of its first message (each event
    published carries its own)."""

    async def handle(batch: Sequence[Incoming[Any]]) -> None:
        if batch:
            structlog.contextvars.bind_contextvars(correlation_id=batch[0].envelope.correlation_id)
        await handler(batch)

    return handle


def build_service(settings: FollowSettings | None = None) -> Service:
    settings = settings or FollowSettings()
    service = Service(settings, title="bzpeer follow", description=DESCRIPTION)
    store = FollowStore(service.db)
    service.use_store(store)

    # Live: a consumer group per kind of work, so commands, source events, fan-out cuts and
    # chunks never wait for each other (a huge fan-out cannot hold up other authors' follows
    # or events).
    commands = FollowCommands(store, service.publisher, service.outbox, settings)
    service.consume(Topic.WEBAPP_FOLLOWS, handler=_bound(commands.handle), accepts=commands.accepts, runs="live")
    sender = NotificationSender(settings)
    if not settings.rebuilding:
        service.on_startup(sender.start)
        service.on_shutdown(sender.stop)
    chunks = ChunkWorker(store, service.publisher, service.outbox, settings, sender)
    planner = FanoutPlanner(store, service.publisher, service.outbox, settings, chunks.notify)
    sources = SourceEvents(store, planner)
    service.consume(
        *SOURCE_TOPICS, handler=_bound(sources.handle), group=SOURCES_GROUP, accepts=sources.accepts, runs="live"
    )
    service.consume(
        Topic.FOLLOW_FANOUT, handler=_bound(chunks.handle), group="fanout", accepts=chunks.accepts, runs="live"
    )
    cutter = ChunkCutter(store, service.publisher, service.outbox, settings)
    service.consume(
        Topic.FOLLOW_FANOUT, handler=_bound(cutter.handle), group="fanout-cuts", accepts=cutter.accepts, runs="live"
    )
    healer = EdgeHealer(store)
    service.consume(Topic.FOLLOWS_EVENTS, handler=healer.handle, group="edges", accepts=healer.accepts, runs="live")
    inbox = InboxEvents(store, hold_shared=settings.rebuilding)
    service.on_drain(inbox.flush)
    service.consume(
        Topic.NOTIFICATIONS_EVENTS,
        handler=inbox.handle,
        group="inbox",
        accepts=inbox.accepts,
        skip_own=(NotificationCreated,),
        runs="live",
    )
    service.background(commands.sweep_forever, runs="live")

    # Rebuild: the same projection folded from the log, deciding nothing.
    rebuilt_sources = SourcesRebuild(store)
    service.consume(
        *SOURCE_TOPICS,
        handler=rebuilt_sources.handle,
        group=SOURCES_GROUP,
        accepts=rebuilt_sources.accepts,
        runs="rebuild",
    )
    follows = FollowsRebuild(store)
    service.consume(
        Topic.FOLLOWS_EVENTS, handler=follows.handle, group="edges", accepts=follows.accepts, runs="rebuild"
    )
    service.consume(
        Topic.NOTIFICATIONS_EVENTS, handler=inbox.handle, group="inbox", accepts=inbox.accepts, runs="rebuild"
    )

    # One channel per topic in AsyncAPI: the topic's event types are named in its description.
    service.produces(
        Topic.FOLLOWS_EVENTS,
        schema=FollowerCountChanged,
        description=(
            "Follow edges, exact follower counts and follows waiting for their author: "
            + ", ".join(
                m.event_type
                for m in (AuthorFollowed, AuthorUnfollowed, FollowerCountChanged, FollowRejected, FollowPending)
            )
        ),
    )
    service.produces(
        Topic.NOTIFICATIONS_EVENTS,
        schema=NotificationCreated,
        description="Notifications of followers, and the read marks of their users: "
        "NotificationCreated, NotificationsRead",
    )
    service.produces(
        Topic.FOLLOW_FANOUT,
        schema=FanoutChunkRequested,
        description="The follow service's own fan-out work: FanoutChunkRequested, FanoutCutRequested",
    )

    service.http.state.follow_store = store
    service.http.include_router(router)
    return service


def main() -> None:
    build_service().run()
