"""Composition root of the trust service."""

from __future__ import annotations

from contracts.events.trust import TrustScoreChanged
from contracts.topics import Topic
from service_runtime.service import Service
from services.trust.handlers import PublishedScores, ScoreHistory, SignalHandler
from services.trust.recompute import Recomputer
from services.trust.routes import router
from services.trust.settings import TrustSettings
from services.trust.signals import OBSERVE
from services.trust.store import TrustStore


class TrustService(Service):
    """The trust service, with its parts reachable (tests, the benchmark, the rescore)."""

    trust_store: TrustStore
    trust_handler: SignalHandler
    recomputer: Recomputer


def build_service(settings: TrustSettings | None = None) -> TrustService:
    settings = settings or TrustSettings()
    service = TrustService(
        settings,
        title="bzpeer trust",
        description="Explainable trust scores of author records, recomputed from profile, claims and follows events.",
    )
    store = TrustStore(service.db)
    service.use_store(store)  # indexes, the rebuild's projection, the outbox sweeper
    recomputer = Recomputer(store, service.outbox, lease_s=settings.recompute_lease_s)
    handler = SignalHandler(
        store,
        window_ms=settings.recompute_window_ms,
        max_delay_ms=settings.recompute_max_delay_ms,
        burst_span_ms=settings.recompute_burst_span_ms,
        on_due=recomputer.schedule,
    )
    recomputer.held_back = handler.held_back
    service.consume(
        Topic.PROFILE_EVENTS, Topic.CLAIMS_EVENTS, Topic.FOLLOWS_EVENTS, handler=handler, accepts=OBSERVE.types
    )
    service.produces(Topic.TRUST_EVENTS, schema=TrustScoreChanged)
    # Live, scores are decided here and published; a rebuild reads them back from trust.events.
    service.background(
        lambda: recomputer.loop(
            batch=settings.recompute_batch,
            passes=settings.recompute_passes,
            poll_s=settings.recompute_poll_ms / 1000,
            sweep_s=settings.recompute_sweep_s,
        ),
        runs="live",
    )
    # The history is a fold of trust.events, live and in a rebuild alike.
    service.consume(Topic.TRUST_EVENTS, handler=ScoreHistory(store), group="history", accepts=(TrustScoreChanged,))
    service.consume(
        Topic.TRUST_EVENTS,
        handler=PublishedScores(store),
        group="published",
        runs="rebuild",
        accepts=(TrustScoreChanged,),
    )
    if settings.rebuilding:
        service.on_drain(recomputer.settle_rebuilt)
    service.http.state.trust_store = store
    service.http.include_router(router)
    service.trust_store = store
    service.trust_handler = handler
    service.recomputer = recomputer
    return service


def main() -> None:
    build_service().run()
