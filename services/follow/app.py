"""Composition root of the follow service: consumers, fan-out workers, sweeper, HTTP."""

from __future__ import annotations

from contracts.events.follows import AuthorFollowed, AuthorUnfollowed, FollowerCountChanged, FollowRejected
from contracts.events.notifications import FanoutChunkRequested, NotificationCreated
from contracts.topics import Topic
from service_runtime.service import Service
from services.follow.commands import FollowCommands
from services.follow.fanout import ChunkWorker, FanoutPlanner
from services.follow.handlers import Handlers
from services.follow.inbox import InboxEvents
from services.follow.routes import router
from services.follow.settings import SOURCES_GROUP, FollowSettings
from services.follow.sources import SourceEvents
from services.follow.store import PROJECTION, FollowStore

DESCRIPTION = (
    "Follow edges with exact follower counts, and notifications of followers when an author they "
    "follow adds a work, is claimed, or moves up a trust band (fanned out in chunks)."
)


def build_service(settings: FollowSettings | None = None) -> Service:
    settings = settings or FollowSettings()
    service = Service(settings, title="bzpeer follow", description=DESCRIPTION)
    store = FollowStore(service.db, settings.follower_pages)
    service.projection = PROJECTION
    commands = FollowCommands(store, service.publisher, settings)
    # Fan-outs are decided live; a rebuild reads the notifications back from their topic.
    planner = None if settings.rebuilding else FanoutPlanner(store, service.publisher, settings)
    handlers = Handlers(commands, SourceEvents(store, planner), ChunkWorker(store, service.publisher))

    # Three consumer groups: commands, source events and fan-out chunks never wait for each
    # other, so a huge fan-out cannot hold up other authors' follows or events.
    service.consume(Topic.WEBAPP_FOLLOWS, handler=handlers.on_commands)
    service.consume(
        Topic.PROFILE_EVENTS,
        Topic.CLAIMS_EVENTS,
        Topic.TRUST_EVENTS,
        handler=handlers.on_source_events,
        group=SOURCES_GROUP,
    )
    service.consume(Topic.FOLLOW_FANOUT, handler=handlers.on_fanout_chunks, group="fanout", runs="live")
    # Live, the chunk worker already wrote every notification it published: the inbox
    # consumer needs only the read marks and passes over the notifications undecoded (a
    # fan-out of 100,000 followers would otherwise decode 100,000 envelopes in this process).
    service.consume(
        Topic.NOTIFICATIONS_EVENTS,
        handler=InboxEvents(store, rebuilding=settings.rebuilding).handle,
        group="inbox",
        skip=frozenset() if settings.rebuilding else frozenset({NotificationCreated.event_type}),
    )
    # One channel per topic in AsyncAPI: the topic's four event types are named in its description.
    service.produces(
        Topic.FOLLOWS_EVENTS,
        schema=FollowerCountChanged,
        description=(
            "Follow edges and exact follower counts: "
            + ", ".join(m.event_type for m in (AuthorFollowed, AuthorUnfollowed, FollowerCountChanged, FollowRejected))
        ),
    )
    service.produces(
        Topic.NOTIFICATIONS_EVENTS,
        schema=NotificationCreated,
        description="Notifications of followers, and the read marks of their users: "
        "NotificationCreated, NotificationsRead",
    )
    service.produces(Topic.FOLLOW_FANOUT, schema=FanoutChunkRequested)

    service.on_startup(store.create_indexes)
    service.background(commands.sweep_forever)
    service.on_drain(commands.settle)
    if settings.rebuilding:
        service.on_drain(commands.adopt_published_revisions)
    service.http.state.follow_store = store
    service.http.include_router(router)
    return service


def main() -> None:
    build_service().run()
