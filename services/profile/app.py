"""Composition root of the profile service."""

from __future__ import annotations

import asyncio

from contracts.events import profile as profile_events
from contracts.topics import Topic
from service_runtime.service import Service
from services.profile.handlers import IngestPublications, RecordStanding, adopt_published_revisions
from services.profile.routes import router
from services.profile.settings import ProfileSettings
from services.profile.store import PROJECTION, ProfileStore

DESCRIPTION = (
    "Author records and their works, the derived state (topics, close collaborators, counts, "
    "record verification level) and the profile page, joined with claim, trust and follower "
    "standing kept from the other services' events."
)
OUTBOX_SWEEP_INTERVAL_S = 60.0


def build_service(settings: ProfileSettings | None = None) -> Service:
    settings = settings or ProfileSettings()
    service = Service(settings, title="bzpeer profile", description=DESCRIPTION)
    store = ProfileStore(service.db, settings.written_cache_entries)
    service.projection = PROJECTION
    ingest = IngestPublications(store, service.publisher, settings)
    service.consume(Topic.PUBLICATIONS_INGESTED, handler=ingest, group="ingest")
    service.consume(
        Topic.CLAIMS_EVENTS,
        Topic.TRUST_EVENTS,
        Topic.FOLLOWS_EVENTS,
        handler=RecordStanding(store, settings),
        group="standing",
    )
    for model in (
        profile_events.AuthorRegistered,
        profile_events.AuthorUpdated,
        profile_events.WorkAdded,
        profile_events.WorkUpdated,
    ):
        service.produces(Topic.PROFILE_EVENTS, schema=model)
    service.on_startup(store.ensure_indexes)

    async def sweep_outboxes() -> None:
        # Outboxes whose input will not come again (its publish kept failing until the
        # runtime dead-lettered it, or the input was redelivered to no one): flush at
        # start, then now and then. Duplicates carry the same event ids.
        while True:
            await ingest.flush_pending()
            await asyncio.sleep(OUTBOX_SWEEP_INTERVAL_S)

    service.background(sweep_outboxes)
    if settings.rebuilding:
        service.on_drain(lambda: adopt_published_revisions(store, settings))
    service.http.state.profile_store = store
    service.http.include_router(router)
    return service


def main() -> None:
    build_service().run()
