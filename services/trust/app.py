"""Composition root of the trust service."""

from __future__ import annotations

from contracts.events.trust import TrustScoreChanged
from contracts.topics import Topic
from service_runtime.service import Service
from services.trust.handlers import PublishedScores, SignalHandler
from services.trust.recompute import Recomputer
from services.trust.routes import router
from services.trust.settings import TrustSettings
from services.trust.store import PROJECTION, TrustStore


def build_service(settings: TrustSettings | None = None) -> Service:
    settings = settings or TrustSettings()
    service = Service(
        settings,
        title="bzpeer trust",
        description="Explainable trust scores of author records, recomputed from profile, claims and follows events.",
    )
    store = TrustStore(service.db)
    service.projection = PROJECTION
    recomputer = Recomputer(store, service.publisher, lease_s=settings.recompute_lease_s)
    handler = SignalHandler(
        store,
        window_ms=settings.recompute_window_ms,
        max_delay_ms=settings.recompute_max_delay_ms,
        on_due=recomputer.schedule,
    )
    recomputer.held_back = handler.held_back
    service.consume(Topic.PROFILE_EVENTS, Topic.CLAIMS_EVENTS, Topic.FOLLOWS_EVENTS, handler=handler)
    service.produces(Topic.TRUST_EVENTS, schema=TrustScoreChanged)
    service.on_startup(store.create_indexes)
    # Live, scores are decided here and published; a rebuild reads them back from trust.events.
    service.background(
        lambda: recomputer.loop(
            batch=settings.recompute_batch, poll_s=settings.recompute_poll_ms / 1000, sweep_s=settings.recompute_sweep_s
        ),
        runs="live",
    )
    service.consume(Topic.TRUST_EVENTS, handler=PublishedScores(store), group="published", runs="rebuild")
    if settings.rebuilding:
        service.on_drain(recomputer.settle_rebuilt)
    service.http.state.trust_store = store
    service.http.include_router(router)
    # Reachable for tests, the benchmark and the rescore command.
    service.trust_store = store  # type: ignore[attr-defined]
    service.trust_handler = handler  # type: ignore[attr-defined]
    service.recomputer = recomputer  # type: ignore[attr-defined]
    return service


def main() -> None:
    build_service().run()
