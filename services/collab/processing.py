"""The live path: commands and the records' facts decided in partition order, their events
published through the outbox.

One consumer reads ``webapp.collab``, ``claims.events`` and ``profile.events`` (all keyed
by author, the same partition counts), so one writer at a time decides for a record. One
attempt per batch:

1. read a book (``store.load``): the records, the invitations the batch names, every live
   invitation of the records that get a request or a claim event, the requesting senders'
   recent declines, and what the invitations' outboxes still hold;
2. decide each input in partition order (``rules.Book``). A request that passes every
   other rule needs a slot of its sender, taken in the store by an atomic conditional
   write (the sender's other invitations are decided by other consumers): the batch is
   decided with the slots it needs granted, those slots are then taken (concurrently
   across senders, in partition order for one sender), and if one could not be taken the
   batch is decided again from a fresh read with that request refused
   (``too_many_open_invitations``), until every slot it needs is known;
3. write (``store.save``): the folds, then each changed invitation with its new events in
   its outbox, guarded by the revision read;
4. free the slots of the invitations the batch touched that are not pending (any more);
5. publish every outbox (``Outbox.deliver``: what an earlier attempt left first, then the
   new events) and the refusals that touched no invitation.

A crash anywhere leaves the batch uncommitted: its redelivery finds the inputs in the
invitations' ``applied`` (nothing is decided twice), publishes what the outboxes still
hold under the same event ids, and frees a slot a stopped attempt left held; the runtime's
sweeper publishes what no input comes back for. A guarded write that finds an invitation
changed (another replica during a rebalance) fails the attempt: read and decide again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from contracts.envelope import Envelope
from contracts.events.claims import (
    AuthorClaimState,
    ClaimApproved,
    ClaimNeedsReview,
    ClaimRejected,
    ClaimRevoked,
    ClaimSubmitted,
    ClaimWithdrawnEvent,
    VerificationLevelChanged,
)
from contracts.events.collab import (
    InvitationAnswerRequested,
    InvitationRequested,
    InvitationWithdrawRequested,
    MessagePostRequested,
)
from contracts.events.profile import AuthorRegistered, AuthorUpdated, WorkAdded, WorkUpdated
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from service_runtime.outbox import Outbox, retry_conflicts
from service_runtime.publishing import EventPublisher, Outgoing
from services.collab.rules import Book, Cause, Emit, Limits, Owner, Profile
from services.collab.settings import CollabSettings
from services.collab.store import CollabStore

ProfileEvent = AuthorRegistered | AuthorUpdated | WorkAdded | WorkUpdated
ClaimEvent = (
    ClaimSubmitted
    | ClaimNeedsReview
    | ClaimApproved
    | ClaimRejected
    | ClaimWithdrawnEvent
    | ClaimRevoked
    | VerificationLevelChanged
)


class Slots:
    """The sender slots the requests of one batch need: known once taken in the store
    (``outcomes``); asked for, and granted until known, while the batch is decided."""

    def __init__(self) -> None:
        self.outcomes: dict[str, bool] = {}  # invitation id -> its sender's slot was taken
        self.wanted: list[tuple[str, str]] = []  # (sender, invitation id) still to take, in order

    def granted(self, sender: str, invitation_id: str) -> bool:
        known = self.outcomes.get(invitation_id)
        if known is None:
            self.wanted.append((sender, invitation_id))
            return True
        return known

    async def take(self, store: CollabStore, limit: int) -> None:
        """Take what was asked for: one sender's slots in the order asked, senders at once."""
        by_sender: dict[str, list[str]] = {}
        for sender, invitation_id in self.wanted:
            by_sender.setdefault(sender, []).append(invitation_id)
        for outcome in await asyncio.gather(*(store.take_slots(s, ids, limit) for s, ids in by_sender.items())):
            self.outcomes |= outcome
        self.wanted = []


Decide = Callable[[Book, Slots], list[Emit]]


@dataclass(frozen=True, slots=True)
class Input:
    """What an input names (to read the book) and what it does to the book."""

    author_id: str
    decide: Decide
    invitation_id: str | None = None
    live: bool = False  # needs the record's live invitations
    sender: str | None = None  # a request: needs its sender's recent declines


def limits_of(settings: CollabSettings) -> Limits:
    return Limits(
        max_open_per_sender=settings.max_open_invitations_per_sender,
        decline_cooldown=timedelta(days=settings.decline_cooldown_days),
        max_message_chars=settings.max_message_chars,
    )


def profile_of(p: ProfileEvent) -> Profile:
    return Profile(p.author.display_name, p.author.open_to_collaborate, p.author.revision)


def owner_of(state: AuthorClaimState) -> Owner:
    return Owner(state.claimed, state.owner_user_id, state.revision)


def _cause(item: Incoming[Any]) -> Cause:
    return Cause(str(item.envelope.event_id), item.envelope.occurred_at)


def _profile(p: ProfileEvent, item: Incoming[ProfileEvent]) -> Input:
    profile = profile_of(p)

    def decide(book: Book, slots: Slots) -> list[Emit]:
        book.profile_seen(p.author_id, profile)
        return []

    return Input(p.author_id, decide)


def _claim(p: ClaimEvent, item: Incoming[ClaimEvent]) -> Input:
    owner, cause = owner_of(p.author_claim), _cause(item)

    def decide(book: Book, slots: Slots) -> list[Emit]:
        return book.claim_seen(p.author_id, owner, cause)

    return Input(p.author_id, decide, live=True)


def _requested(p: InvitationRequested, item: Incoming[InvitationRequested]) -> Input:
    cause = _cause(item)

    def decide(book: Book, slots: Slots) -> list[Emit]:
        if p.invitation_id in book.invitations:  # decided already, or the id is taken
            return book.request(p, cause, None)
        refusal = book.request_refusal(p, cause.at)
        if refusal is None and not slots.granted(p.user_id, p.invitation_id):
            refusal = "too_many_open_invitations"
        return book.request(p, cause, refusal)

    return Input(p.author_id, decide, p.invitation_id, live=True, sender=p.user_id)


def _answered(p: InvitationAnswerRequested, item: Incoming[InvitationAnswerRequested]) -> Input:
    cause = _cause(item)

    def decide(book: Book, slots: Slots) -> list[Emit]:
        return book.answer(p, cause)

    return Input(p.author_id, decide, p.invitation_id)


def _withdrawn(p: InvitationWithdrawRequested, item: Incoming[InvitationWithdrawRequested]) -> Input:
    cause = _cause(item)

    def decide(book: Book, slots: Slots) -> list[Emit]:
        return book.withdraw(p, cause)

    return Input(p.author_id, decide, p.invitation_id)


def _posted(p: MessagePostRequested, item: Incoming[MessagePostRequested]) -> Input:
    cause = _cause(item)

    def decide(book: Book, slots: Slots) -> list[Emit]:
        return book.post(p, cause)

    return Input(p.author_id, decide, p.invitation_id)


# The live consumer's inputs, one handler per payload type: the commands of webapp.collab,
# every claims.events event (each carries the record's claim state) and every
# profile.events event (each carries the record's full state).
INPUTS = (
    Dispatch[Input]()
    .on(InvitationRequested, handler=_requested)
    .on(InvitationAnswerRequested, handler=_answered)
    .on(InvitationWithdrawRequested, handler=_withdrawn)
    .on(MessagePostRequested, handler=_posted)
    .on(ClaimSubmitted, handler=_claim)
    .on(ClaimNeedsReview, handler=_claim)
    .on(ClaimApproved, handler=_claim)
    .on(ClaimRejected, handler=_claim)
    .on(ClaimWithdrawnEvent, handler=_claim)
    .on(ClaimRevoked, handler=_claim)
    .on(VerificationLevelChanged, handler=_claim)
    .on(AuthorRegistered, handler=_profile)
    .on(AuthorUpdated, handler=_profile)
    .on(WorkAdded, handler=_profile)
    .on(WorkUpdated, handler=_profile)
)


class Decider:
    accepts = INPUTS.types

    def __init__(self, store: CollabStore, outbox: Outbox, publisher: EventPublisher, settings: CollabSettings) -> None:
        self.store = store
        self.outbox = outbox
        self.publisher = publisher
        self.settings = settings
        self.limits = limits_of(settings)

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        inputs = [(item.envelope, INPUTS(item)) for item in batch]
        requests = [envelope.occurred_at for envelope, i in inputs if i.sender is not None]

        async def attempt() -> None:
            slots = Slots()
            while True:
                loaded = await self.store.load(
                    {i.author_id for _, i in inputs},
                    {i.invitation_id for _, i in inputs if i.invitation_id is not None},
                    live_of={i.author_id for _, i in inputs if i.live},
                    senders={i.sender for _, i in inputs if i.sender is not None},
                    declined_since=min(requests) - self.limits.decline_cooldown if requests else None,
                    limits=self.limits,
                )
                book = loaded.book
                caused: list[tuple[Emit, Envelope]] = []
                for envelope, inp in inputs:
                    caused += [(emit, envelope) for emit in inp.decide(book, slots)]
                if not slots.wanted:
                    break
                refused_before = sum(not taken for taken in slots.outcomes.values())
                await slots.take(self.store, self.limits.max_open_per_sender)
                if sum(not taken for taken in slots.outcomes.values()) == refused_before:
                    break  # every slot granted was taken: the decisions stand
            outboxes: dict[str, list[Outgoing]] = {}
            stored_nowhere: list[Outgoing] = []
            for emit, envelope in caused:
                out = self.publisher.outgoing(emit.payload, cause=envelope, event_id=emit.event_id)
                if emit.invitation_id is None:
                    stored_nowhere.append(out)
                else:
                    outboxes.setdefault(emit.invitation_id, []).append(out)
            await self.store.save(loaded, outboxes)
            # Slots held by invitations no longer pending (answered, withdrawn, closed; or
            # refused after an earlier attempt took the slot): freed after the write.
            touched = book.dirty | {i.invitation_id for _, i in inputs if i.invitation_id is not None}
            done = {
                (inv.state.sender_id, iid)
                for iid in touched
                if (inv := book.invitations.get(iid)) is not None and inv.state.status != "pending"
            }
            held = await self.store.held_slots(sender for sender, _ in done) if done else {}
            await self.store.release_slots((sender, iid) for sender, iid in done if iid in held.get(sender, ()))
            deliveries = {iid: [*events] for iid, events in loaded.pending.items()}
            for iid, events in outboxes.items():
                deliveries.setdefault(iid, []).extend(events)
            await self.outbox.deliver(self.store.invitations, deliveries)
            await self.publisher.publish(stored_nowhere)

        await retry_conflicts(attempt, attempts=self.settings.write_conflict_attempts, what="collab batch")
