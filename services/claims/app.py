"""Composition root of the claims service."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError

from contracts.events import claims as events
from contracts.topics import Topic
from service_runtime.service import Service
from services.claims.handlers import RebuildInLiveOrder, make_handler
from services.claims.processing import ClaimsProcessor
from services.claims.routes import build_router, validation_error_without_input
from services.claims.settings import ClaimsSettings
from services.claims.store import PROJECTION, ClaimsStore


def build_service(settings: ClaimsSettings | None = None) -> Service:
    settings = settings or ClaimsSettings()
    service = Service(
        settings,
        title="bzpeer claims",
        description="Claims on author records: evidence, review, one owner per record, verification levels L2/L3.",
    )
    store = ClaimsStore(service.db)
    service.projection = PROJECTION
    processor = ClaimsProcessor(store, service.publisher, settings)
    service.on_startup(store.create_indexes)
    if settings.rebuilding:
        # Inputs in the order live most likely saw them, and the sweeper's expiries read
        # back from claims.events rather than decided again by this run's clock.
        rebuild = RebuildInLiveOrder(processor, store)
        service.consume(Topic.WEBAPP_CLAIMS, Topic.PROFILE_EVENTS, Topic.CLAIMS_EVENTS, handler=rebuild.handle)
        service.on_drain(rebuild.settle)
    else:
        service.consume(Topic.WEBAPP_CLAIMS, Topic.PROFILE_EVENTS, handler=make_handler(processor))
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
                events.ClaimWithdrawnEvent,
                events.ClaimRevoked,
                events.VerificationLevelChanged,
            )
        ),
    )
    service.background(processor.sweep_forever, runs="live")
    service.http.include_router(build_router(store, service.publisher))
    service.http.add_exception_handler(RequestValidationError, validation_error_without_input)
    service.http.state.claims_processor = processor
    return service


def main() -> None:
    build_service().run()


if __name__ == "__main__":
    main()
