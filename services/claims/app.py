"""Composition root of the claims service."""

from __future__ import annotations

from contracts.events import claims as events
from contracts.topics import Topic
from service_runtime.service import Service
from services.claims.processing import INPUTS, ClaimsProcessor
from services.claims.rebuild import ClaimsRebuild
from services.claims.routes import build_router
from services.claims.settings import ClaimsSettings
from services.claims.store import ClaimsStore


def build_service(settings: ClaimsSettings | None = None) -> Service:
    settings = settings or ClaimsSettings()
    service = Service(
        settings,
        title="bzpeer claims",
        description="Claims on author records: evidence, review, one owner per record, verification levels L2/L3.",
    )
    store = ClaimsStore(service.db)
    service.use_store(store)
    processor = ClaimsProcessor(store, service.outbox, service.publisher, settings)
    # Live: the commands and the authors' identities, decided and published. One consumer
    # for both topics, so one writer at a time decides for an author.
    service.consume(
        Topic.WEBAPP_CLAIMS, Topic.PROFILE_EVENTS, handler=processor.handle, accepts=INPUTS.types, runs="live"
    )
    service.background(processor.sweep_forever, runs="live")
    # A rebuild: the decisions read back from claims.events, the identities from profile.events.
    rebuild = ClaimsRebuild(store, processor.limits, attempts=settings.write_conflict_attempts)
    service.consume(
        Topic.CLAIMS_EVENTS, Topic.PROFILE_EVENTS, handler=rebuild.handle, accepts=rebuild.types, runs="rebuild"
    )
    # One channel, several event types (their JSON Schemas are in contracts/schemas/claims.events.*).
    service.produces(
        Topic.CLAIMS_EVENTS,
        description="Claim lifecycle and verification level: "
        + ", ".join(
            m.event_type
            for m in (
                events.ClaimSubmitted,
                events.ClaimNeedsReview,
                events.ClaimApproved,
                events.ClaimRejected,
                events.ClaimEvidenceAdded,
                events.ClaimWithdrawnEvent,
                events.ClaimRevoked,
                events.VerificationLevelChanged,
            )
        ),
    )
    service.http.include_router(build_router(store, service.publisher))
    service.http.state.claims_processor = processor
    return service


def main() -> None:
    build_service().run()


if __name__ == "__main__":
    main()
