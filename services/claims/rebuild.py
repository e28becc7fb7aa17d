"""Rebuilding the claims projection from the log (``bzpeer replay claims``): a fold of
claims.events (the service's own decisions) and of profile.events (the identities it
keeps), deciding nothing again.

* A claim is what its events say: each event of a step carries the claim's state after it
  (``ClaimState``: status, level, reason, evidence, times, the history entries the step
  added, ``revision``) and names its input (``causation_id``, which joins ``applied``). A
  step not newer than the claim's revision (an event published twice, or the second
  event of one step) changes nothing.
* A record's claim state is the newest ``author_claim`` (by its revision) of the events
  about the record; its identity the newest one of its profile events.
* A user's slots follow the statuses of the user's claims: a claim holds an open slot
  while pending_author or needs_review, an approved one while approved.

No input is applied again, so the order in which live saw its inputs, the wall clock and
the partitions' interleaving do not matter: the same log gives the same projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contracts.events.claims import (
    AuthorClaimState,
    ClaimApproved,
    ClaimEvidenceAdded,
    ClaimNeedsReview,
    ClaimRejected,
    ClaimRevoked,
    ClaimState,
    ClaimSubmitted,
    ClaimWithdrawnEvent,
    VerificationLevelChanged,
)
from contracts.events.common import is_newer
from contracts.events.profile import AuthorRegistered, AuthorUpdated, WorkAdded, WorkUpdated
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from service_runtime.logging import get_logger
from service_runtime.outbox import retry_conflicts
from services.claims.processing import ProfileEvent, identity_of
from services.claims.rules import UNCLAIMED, Book, Claim, Identity, Limits
from services.claims.store import ClaimsStore

log = get_logger(__name__)

ClaimEvent = (
    ClaimSubmitted
    | ClaimNeedsReview
    | ClaimApproved
    | ClaimRejected
    | ClaimEvidenceAdded
    | ClaimWithdrawnEvent
    | ClaimRevoked
)


@dataclass(frozen=True, slots=True)
class Step:
    """A step of a claim, as an event of claims.events tells it."""

    claim_id: str
    author_id: str
    user_id: str
    state: ClaimState
    cause: str | None
    author_claim: AuthorClaimState


@dataclass(frozen=True, slots=True)
class Fact:
    """What one record of the rebuild's topics says."""

    author_id: str
    step: Step | None = None
    author_claim: AuthorClaimState | None = None
    identity: Identity | None = None


def _claim_event(p: ClaimEvent, item: Incoming[ClaimEvent]) -> Fact:
    cause = item.envelope.causation_id
    step = (
        Step(p.claim_id, p.author_id, p.user_id, p.claim, str(cause) if cause else None, p.author_claim)
        if p.claim is not None
        else None  # a refusal (nothing changed), or an event from before claims carried their state
    )
    return Fact(p.author_id, step=step, author_claim=p.author_claim)


def _level_changed(p: VerificationLevelChanged, item: Incoming[VerificationLevelChanged]) -> Fact:
    return Fact(p.author_id, author_claim=p.author_claim)


def _profile(p: ProfileEvent, item: Incoming[ProfileEvent]) -> Fact:
    return Fact(p.author_id, identity=identity_of(p))


# What the rebuild reads, one handler per payload type.
FACTS = (
    Dispatch[Fact]()
    .on(ClaimSubmitted, handler=_claim_event)
    .on(ClaimNeedsReview, handler=_claim_event)
    .on(ClaimApproved, handler=_claim_event)
    .on(ClaimRejected, handler=_claim_event)
    .on(ClaimEvidenceAdded, handler=_claim_event)
    .on(ClaimWithdrawnEvent, handler=_claim_event)
    .on(ClaimRevoked, handler=_claim_event)
    .on(VerificationLevelChanged, handler=_level_changed)
    .on(AuthorRegistered, handler=_profile)
    .on(AuthorUpdated, handler=_profile)
    .on(WorkAdded, handler=_profile)
    .on(WorkUpdated, handler=_profile)
)


class ClaimsRebuild:
    """The rebuild's consumer of claims.events and profile.events (``runs="rebuild"``)."""

    types = FACTS.types

    def __init__(self, store: ClaimsStore, limits: Limits, *, attempts: int = 8) -> None:
        self.store = store
        self.limits = limits
        self.attempts = attempts

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        facts = [FACTS(item) for item in batch]

        async def attempt() -> None:
            loaded = await self.store.load_records(
                {f.author_id for f in facts},
                {f.step.claim_id for f in facts if f.step},
                {f.step.user_id for f in facts if f.step},
                self.limits,
                clock=datetime.now(UTC),
            )
            fold(loaded.book, facts)
            await self.store.save(loaded, {})

        await retry_conflicts(attempt, attempts=self.attempts, what="claims rebuild batch")


def fold(book: Book, facts: Sequence[Fact]) -> None:
    """Apply what the facts say to the book, in order; what changed is marked dirty."""
    for fact in facts:
        if fact.identity is not None:
            author = book.author(fact.author_id)
            if author.identity is None or is_newer(fact.identity.revision, author.identity.revision):
                author.identity = fact.identity
                book.dirty_authors.add(fact.author_id)
        # The state a record starts with says nothing (a refusal about a record the
        # service never knew): live keeps no document for it either.
        if fact.author_claim is not None and fact.author_claim != UNCLAIMED:
            held = book.authors.get(fact.author_id)
            if is_newer(fact.author_claim.revision, held.claim.revision if held else None):
                book.author(fact.author_id).claim = fact.author_claim
                book.dirty_authors.add(fact.author_id)
        if (step := fact.step) is not None:
            claim = book.claims.get(step.claim_id)
            previous, before = (claim.revision, claim.status) if claim is not None else (0, None)
            if claim is None:
                claim = book.claims[step.claim_id] = Claim.from_state(
                    step.claim_id, step.author_id, step.user_id, step.state, step.cause, step.author_claim
                )
            elif not claim.follow(step.state, step.cause, step.author_claim):
                continue  # not newer: the event again, or another event of the same step
            if step.state.revision != previous + 1:
                # A step whose events never reached the log before this one's (or a log
                # that starts later): its history entries are missing.
                log.warning("claims_rebuild_step_missing", claim_id=step.claim_id, revision=step.state.revision)
            book.dirty_claims.add(step.claim_id)
            book.slots.follow(claim, before)
