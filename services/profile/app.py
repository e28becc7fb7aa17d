"""Composition root of the profile service."""

from __future__ import annotations

from contracts.events import profile as profile_events
from contracts.topics import Topic
from service_runtime.service import Service
from services.profile.handlers import ApplyOwnerEdits, IngestPublications, RecordStanding
from services.profile.rebuild import IngestedFacts, PublishedStates, derive_works_of_authors
from services.profile.routes import router
from services.profile.settings import ProfileSettings
from services.profile.store import ProfileStore

DESCRIPTION = (
    "Author records and their works, the derived state (topics, close collaborators, counts, "
    "record verification level) and the profile page, joined with claim, trust and follower "
    "standing kept from the other services' events."
)


def build_service(settings: ProfileSettings | None = None) -> Service:
    settings = settings or ProfileSettings()
    service = Service(settings, title="bzpeer profile", description=DESCRIPTION)
    store = ProfileStore(service.db, settings.written_cache_size)
    service.use_store(store)
    # Live: works and author records are decided here and published on profile.events.
    ingest = IngestPublications(store, service.publisher, service.outbox, settings)
    service.consume(Topic.PUBLICATIONS_INGESTED, handler=ingest, group="ingest", accepts=ingest.accepts, runs="live")
    # Live: the owners' edits, applied or refused (a rebuild reads their AuthorUpdated back).
    edits = ApplyOwnerEdits(store, service.publisher, service.outbox, settings)
    service.consume(Topic.WEBAPP_PROFILE, handler=edits, group="edits", accepts=edits.accepts, runs="live")
    # Live and in a rebuild: the other services' decisions, folded.
    standing = RecordStanding(store)
    service.consume(
        Topic.CLAIMS_EVENTS,
        Topic.TRUST_EVENTS,
        Topic.FOLLOWS_EVENTS,
        handler=standing,
        group="standing",
        accepts=standing.accepts,
    )
    # A rebuild: the decisions read back from profile.events, the importers' facts folded,
    # then each author's works derived from the works it appears on.
    published = PublishedStates(store)
    service.consume(
        Topic.PROFILE_EVENTS, handler=published, group="published", accepts=published.accepts, runs="rebuild"
    )
    facts = IngestedFacts(store)
    service.consume(Topic.PUBLICATIONS_INGESTED, handler=facts, group="facts", accepts=facts.accepts, runs="rebuild")
    if settings.rebuilding:
        service.on_drain(lambda: derive_works_of_authors(store, settings))
    for model in (
        profile_events.AuthorRegistered,
        profile_events.AuthorUpdated,
        profile_events.WorkAdded,
        profile_events.WorkUpdated,
        profile_events.ProfileEditRejected,
    ):
        service.produces(Topic.PROFILE_EVENTS, schema=model)
    service.http.state.profile_store = store
    service.http.include_router(router)
    return service


def main() -> None:
    build_service().run()
