"""Composition root of the collab service."""

from __future__ import annotations

from contracts.envelope import EventModel
from contracts.events.collab import INVITATION_EVENTS, InvitationCommandRejected, InvitationState
from contracts.events.notifications import NotificationCreated
from contracts.topics import Topic
from service_runtime.service import Service
from services.collab.processing import Decider, limits_of
from services.collab.rebuild import DecisionsFold, FactsFold
from services.collab.routes import build_router
from services.collab.settings import CollabSettings
from services.collab.store import CollabStore

DESCRIPTION = (
    "Direct collaboration: invitations from signed-in users to the researchers who claimed "
    "their record and are open to collaborate, their answers, and the conversation that follows."
)


def build_service(settings: CollabSettings | None = None) -> Service:
    settings = settings or CollabSettings()
    service = Service(settings, title="bzpeer collab", description=DESCRIPTION)
    store = CollabStore(service.db)
    service.use_store(store)

    # Live: one consumer decides, in partition order, on the commands and on the records'
    # owners and openness it folds as it goes (the three topics are keyed by author).
    decider = Decider(store, service.outbox, service.publisher, settings)
    service.consume(
        Topic.WEBAPP_COLLAB,
        Topic.CLAIMS_EVENTS,
        Topic.PROFILE_EVENTS,
        handler=decider.handle,
        accepts=decider.accepts,
        runs="live",
    )
    # A rebuild decides nothing: it folds the facts, and the decisions from collab.events.
    facts = FactsFold(store)
    service.consume(
        Topic.CLAIMS_EVENTS, Topic.PROFILE_EVENTS, handler=facts.handle, accepts=facts.accepts, runs="rebuild"
    )
    decisions = DecisionsFold(store)
    service.consume(
        Topic.COLLAB_EVENTS, handler=decisions.handle, group="decisions", accepts=decisions.accepts, runs="rebuild"
    )

    decided: tuple[type[EventModel], ...] = (*INVITATION_EVENTS, InvitationCommandRejected)
    service.produces(
        Topic.COLLAB_EVENTS,
        schema=InvitationState,
        description="Invitations and their conversations, each event carrying the invitation's state after it: "
        + ", ".join(m.event_type for m in decided),
    )
    service.produces(
        Topic.NOTIFICATIONS_EVENTS,
        schema=NotificationCreated,
        description="Notifications of an invitation's owner (received) and sender (answered): NotificationCreated",
    )
    service.http.state.collab_store = store
    service.http.state.collab_decider = decider
    service.http.include_router(build_router(store, service.publisher, limits_of(settings), settings.list_limit))
    return service


def main() -> None:
    build_service().run()


if __name__ == "__main__":
    main()
