"""Rebuilding the projection from the log, deciding nothing again.

* ``FactsFold``: the records' owners and openness, folds of claims.events and
  profile.events (the newest revision of each kept, whatever order the partitions come in).
* ``DecisionsFold``: the invitations and the senders' slots, from collab.events alone.
  Every decision the live service took is an event there carrying the invitation's state
  after it: each invitation takes the states newer than the one it holds, in partition
  order; the input of each step (the event's cause) joins ``applied``; a ``MessagePosted``
  adds its message to the thread. A sender's slots are their invitations whose state is
  pending. A refusal that touched no invitation leaves nothing to fold.

Both are wired ``runs="rebuild"``: live, the decider folds the facts itself, in the order
it decides with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.events.claims import (
    ClaimApproved,
    ClaimNeedsReview,
    ClaimRejected,
    ClaimRevoked,
    ClaimSubmitted,
    ClaimWithdrawnEvent,
    VerificationLevelChanged,
)
from contracts.events.collab import (
    InvitationAccepted,
    InvitationClosed,
    InvitationCommandRejected,
    InvitationDeclined,
    InvitationRejected,
    InvitationSent,
    InvitationWithdrawn,
    MessagePosted,
)
from contracts.events.common import is_newer
from contracts.events.profile import AuthorRegistered, AuthorUpdated, WorkAdded, WorkUpdated
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from services.collab.processing import ClaimEvent, ProfileEvent, owner_of, profile_of
from services.collab.rules import PENDING, Owner, Profile
from services.collab.store import CollabStore, Step

Fact = tuple[str, Owner | Profile]
StateEvent = (
    InvitationSent
    | InvitationRejected
    | InvitationAccepted
    | InvitationDeclined
    | InvitationWithdrawn
    | InvitationClosed
    | InvitationCommandRejected
)


def _owner(p: ClaimEvent, item: Incoming[ClaimEvent]) -> Fact:
    return p.author_id, owner_of(p.author_claim)


def _profile(p: ProfileEvent, item: Incoming[ProfileEvent]) -> Fact:
    return p.author_id, profile_of(p)


FACTS = (
    Dispatch[Fact]()
    .on(ClaimSubmitted, handler=_owner)
    .on(ClaimNeedsReview, handler=_owner)
    .on(ClaimApproved, handler=_owner)
    .on(ClaimRejected, handler=_owner)
    .on(ClaimWithdrawnEvent, handler=_owner)
    .on(ClaimRevoked, handler=_owner)
    .on(VerificationLevelChanged, handler=_owner)
    .on(AuthorRegistered, handler=_profile)
    .on(AuthorUpdated, handler=_profile)
    .on(WorkAdded, handler=_profile)
    .on(WorkUpdated, handler=_profile)
)


class FactsFold:
    """Rebuild only: owners from claims.events, openness and names from profile.events."""

    accepts = FACTS.types

    def __init__(self, store: CollabStore) -> None:
        self.store = store

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        owners: dict[str, Owner] = {}
        profiles: dict[str, Profile] = {}
        for item in batch:
            author_id, fact = FACTS(item)
            if isinstance(fact, Owner):
                held_owner = owners.get(author_id)
                if is_newer(fact.revision, held_owner.revision if held_owner else None):
                    owners[author_id] = fact
            else:
                held_profile = profiles.get(author_id)
                if is_newer(fact.revision, held_profile.revision if held_profile else None):
                    profiles[author_id] = fact
        await self.store.fold_authors(dict(owners), dict(profiles))


def _step(p: StateEvent, item: Incoming[StateEvent]) -> Step | None:
    if p.invitation is None:  # a refusal that touched no invitation
        return None
    return Step(p.invitation, str(item.envelope.causation_id))


def _posted(p: MessagePosted, item: Incoming[MessagePosted]) -> Step | None:
    return Step(p.invitation, str(item.envelope.causation_id), p.message)


DECISIONS = (
    Dispatch[Step | None]()
    .on(InvitationSent, handler=_step)
    .on(InvitationRejected, handler=_step)
    .on(InvitationAccepted, handler=_step)
    .on(InvitationDeclined, handler=_step)
    .on(InvitationWithdrawn, handler=_step)
    .on(InvitationClosed, handler=_step)
    .on(InvitationCommandRejected, handler=_step)
    .on(MessagePosted, handler=_posted)
)


class DecisionsFold:
    """Rebuild only: the invitations and the senders' slots, from collab.events."""

    accepts = DECISIONS.types

    def __init__(self, store: CollabStore) -> None:
        self.store = store

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        steps = [step for item in batch if (step := DECISIONS(item)) is not None]
        final = await self.store.fold_invitations(steps)
        await self.store.hold_slots((sender, iid) for iid, (sender, status) in final.items() if status == PENDING)
        await self.store.release_slots((sender, iid) for iid, (sender, status) in final.items() if status != PENDING)
