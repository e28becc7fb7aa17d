"""Composition root of the follow service: consumers, fan-out workers, sweeper, HTTP."""

from __future__ import annotations

from contracts.events.follows import AuthorFollowed, AuthorUnfollowed, FollowerCountChanged, FollowRejected
from contracts.events.notifications import FanoutChunkRequested, NotificationCreated
from contracts.topics import Topic
from service_runtime.service import Service
from services.follow.commands import FollowCommands
from services.follow.fanout import ChunkWorker, FanoutPlanner, PublishedNotifications
from services.follow.handlers import Handlers
from services.follow.routes import router
from services.follow.settings import FollowSettings
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
    service.consume(Topic.PROFILE_EVENTS, Topic.CLAIMS_EVENTS, Topic.TRUST_EVENTS,
                    handler=handlers.on_source_events, group="sources")
    service.consume(Topic.FOLLOW_FANOUT, handler=handlers.on_fanout_chunks, group="fanout", runs="live")
    service.consume(Topic.NOTIFICATIONS_EVENTS, handler=PublishedNotifications(store).handle, group="inbox",
                    runs="rebuild")
    # One channel per topic in AsyncAPI: the topic's four event types are named in its description.
    service.produces(Topic.FOLLOWS_EVENTS, schema=FollowerCountChanged, description=(
        "Follow edges and exact follower counts: "
        + ", ".join(m.event_type for m in (AuthorFollowed, AuthorUnfollowed, FollowerCountChanged, FollowRejected))
    ))
    service.produces(Topic.NOTIFICATIONS_EVENTS, schema=NotificationCreated)
    service.produces(Topic.FOLLOW_FANOUT, schema=FanoutChunkRequested)

    service.on_startup(store.create_indexes)
    service.background(commands.sweep_forever)
    service.on_drain(commands.settle)
    service.http.state.follow_store = store
    service.http.include_router(router)
    return service


def main() -> None:
    build_service().run()
