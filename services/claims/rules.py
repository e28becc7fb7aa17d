"""The claim rules, as functions of the current state: no broker, no driver.

A ``Book`` holds what one batch needs (author records, claims, the users' claim slots),
applies inputs to it in partition order and records what changed and which events to
publish. The caller loads the book, persists what is marked dirty and publishes the
``Emit`` list. Refusals that change nothing are events too (``ClaimRejected{reason}``).

Every input that changes a claim is one step of it: the claim's ``revision`` grows by
one, the input's id joins ``applied``, and every event of the step carries the claim's
state after it (``ClaimState``, with the history entries the step added) and the
record's claim state (``author_claim``). So claims.events says everything this module
decided, and a rebuild folds it instead of deciding again (``services.claims.rebuild``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Final, Literal, TypedDict, get_args

from contracts.envelope import EventModel
from contracts.events.claims import (
    AuthorClaimState,
    ClaimApproved,
    ClaimEvidenceAdded,
    ClaimEvidenceSubmitted,
    ClaimHistoryEntry,
    ClaimLevel,
    ClaimNeedsReview,
    ClaimRejected,
    ClaimRequested,
    ClaimReviewed,
    ClaimRevoked,
    ClaimState,
    ClaimStatus,
    ClaimStep,
    ClaimSubmitted,
    ClaimWithdrawn,
    ClaimWithdrawnEvent,
    Evidence,
    RejectionReason,
    VerificationLevelChanged,
)
from contracts.events.common import VerificationLevel, is_newer

PENDING_AUTHOR: ClaimStatus = "pending_author"
NEEDS_REVIEW: ClaimStatus = "needs_review"
APPROVED: ClaimStatus = "approved"
OPEN: frozenset[str] = frozenset({PENDING_AUTHOR, NEEDS_REVIEW})
# The statuses that hold one of the user's slots (open or approved).
HELD: frozenset[str] = OPEN | {APPROVED}
OPEN_SLOT, APPROVED_SLOT = "open", "approved"
UNCLAIMED = AuthorClaimState(claimed=False, revision=1)
NEW: Final = "new"  # the status of a claim while the request that creates it is decided


@dataclass(frozen=True, slots=True)
class Identity:
    """What the claims service knows of an author record (from profile.events)."""

    display_name: str
    orcid: str | None
    domains: tuple[str, ...]
    revision: int


@dataclass(slots=True)
class AuthorRecord:
    author_id: str
    identity: Identity | None = None
    claim: AuthorClaimState = UNCLAIMED


@dataclass(slots=True)
class Claim:
    claim_id: str
    author_id: str
    user_id: str
    status: ClaimStatus | Literal["new"]
    created_at: datetime
    updated_at: datetime
    evidence: Evidence = field(default_factory=Evidence)
    show_owner: bool = False
    level: ClaimLevel | None = None
    reason: str | None = None  # a RejectionReason, or the reviewer's reason for a revocation
    detail: str | None = None
    history: list[ClaimHistoryEntry] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # ids of the inputs that changed it
    revision: int = 0  # inputs that changed it (0: being created)
    waiting_since: datetime | None = None  # while pending_author: since when (the service's clock)
    author_claim: AuthorClaimState | None = None  # the record's claim state after the claim's last step

    @property
    def decided(self) -> ClaimStatus:
        """The status, once the request that created the claim is decided."""
        if self.status == NEW:
            raise AssertionError(f"claim {self.claim_id} is not decided yet")
        return self.status

    def state(self, step: list[ClaimHistoryEntry]) -> ClaimState:
        """What an event of the step that added ``step`` to the history says of the claim."""
        return ClaimState(
            status=self.decided,
            revision=self.revision,
            level=self.level,
            reason=self.reason,
            detail=self.detail,
            evidence=self.evidence,
            show_owner=self.show_owner,
            created_at=self.created_at,
            updated_at=self.updated_at,
            waiting_since=self.waiting_since,
            history=step,
        )

    def follow(self, state: ClaimState, cause: str | None, author_claim: AuthorClaimState) -> bool:
        """Take a step read back from claims.events (a rebuild): False if not newer."""
        if state.revision <= self.revision:
            return False
        self.status = state.status
        self.level = state.level
        self.reason = state.reason
        self.detail = state.detail
        self.evidence = state.evidence
        self.show_owner = state.show_owner
        self.created_at = state.created_at
        self.updated_at = state.updated_at
        self.waiting_since = state.waiting_since
        self.history.extend(state.history)
        if cause is not None:
            self.applied.append(cause)
        self.revision = state.revision
        self.author_claim = author_claim
        return True

    @classmethod
    def from_state(
        cls,
        claim_id: str,
        author_id: str,
        user_id: str,
        state: ClaimState,
        cause: str | None,
        author_claim: AuthorClaimState,
    ) -> Claim:
        claim = cls(claim_id, author_id, user_id, state.status, state.created_at, state.updated_at)
        claim.follow(state, cause, author_claim)
        return claim


@dataclass(frozen=True, slots=True)
class Limits:
    max_open_claims_per_user: int = 3
    max_approved_claims_per_user: int = 1


@dataclass(frozen=True, slots=True)
class Emit:
    """An event to publish; ``id_parts`` make its id deterministic given its cause."""

    payload: EventModel
    id_parts: tuple[str, ...]
    claim_id: str | None  # the claim whose outbox keeps it (None: nothing was stored)


# --- evidence ----------------------------------------------------------------------


def email_domain_matches(email: str, domains: Iterable[str]) -> bool:
    """``x@cs.stanford.edu`` matches ``stanford.edu``; ``x@notstanford.edu`` does not."""
    host = email.rsplit("@", 1)[-1].lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


def automatic_level(evidence: Evidence, identity: Identity) -> ClaimLevel | None:
    """L2 when the web app vouches for a fact that ties the user to this record, else None."""
    if evidence.email and evidence.email_verified and email_domain_matches(evidence.email, identity.domains):
        return "L2"
    if evidence.orcid and evidence.orcid_authenticated and identity.orcid and evidence.orcid == identity.orcid:
        return "L2"
    return None


def merge_evidence(old: Evidence, new: Evidence) -> Evidence:
    """Later evidence adds to earlier evidence; a fact given again replaces the old one."""
    merged = old.model_dump(mode="json")
    for name, value in new.model_dump(mode="json").items():
        if name == "links":
            merged["links"] = list(dict.fromkeys([*old.links, *value]))[:10]
        elif name in ("email_verified", "orcid_authenticated"):
            continue
        elif value is not None:
            merged[name] = value
    # A verification flag belongs to the value it was given with.
    if new.email is not None:
        merged["email_verified"] = new.email_verified
    if new.orcid is not None:
        merged["orcid_authenticated"] = new.orcid_authenticated
    return Evidence.model_validate(merged)


# --- slots -------------------------------------------------------------------------


class Slots:
    """Which claims each user holds open or approved, with the configured limits.

    Claims of one user live in several partitions (several replicas decide them), so the
    store arbitrates: ``acquired`` are taken before the claims are written (a write that
    finds the user's slots changed meanwhile fails, and the batch is decided again),
    ``released`` are freed after."""

    def __init__(self, holders: dict[tuple[str, str], list[str]], limits: Limits) -> None:
        self.holders = {k: list(v) for k, v in holders.items()}
        self.limits = limits
        self.acquired: list[tuple[str, str, str]] = []  # (kind, user, claim) to persist
        self.released: list[tuple[str, str, str]] = []

    def holds(self, kind: str, user: str, claim_id: str) -> bool:
        return claim_id in self.holders.get((kind, user), [])

    def limit(self, kind: str) -> int:
        return self.limits.max_open_claims_per_user if kind == OPEN_SLOT else self.limits.max_approved_claims_per_user

    def acquire(self, kind: str, user: str, claim_id: str) -> bool:
        """Take a slot for the claim if the user has one free (or holds it already)."""
        held = self.holders.get((kind, user), [])
        if claim_id not in held and len(held) >= self.limit(kind):
            return False
        self.take(kind, user, claim_id)
        return True

    def take(self, kind: str, user: str, claim_id: str) -> None:
        """Hold a slot for the claim, limit or not (a rebuild follows what live decided)."""
        held = self.holders.setdefault((kind, user), [])
        if claim_id in held:
            return
        held.append(claim_id)
        op = (kind, user, claim_id)
        if op in self.released:  # released earlier in this batch: the two cancel out
            self.released.remove(op)
        else:
            self.acquired.append(op)

    def holding(self, user: str) -> bool:
        return any(self.holders.get((kind, user)) for kind in (OPEN_SLOT, APPROVED_SLOT))

    def release(self, kind: str, user: str, claim_id: str) -> None:
        held = self.holders.get((kind, user), [])
        if claim_id in held:
            held.remove(claim_id)
            op = (kind, user, claim_id)
            if op in self.acquired:
                self.acquired.remove(op)
            else:
                self.released.append(op)

    def reconcile(self, claims: Iterable[Claim]) -> None:
        """Free what a claim holds but its status no longer justifies (an earlier attempt
        that stopped between taking a slot and saving the claim leaves such a hold)."""
        for claim in claims:
            if claim.status not in OPEN:
                self.release(OPEN_SLOT, claim.user_id, claim.claim_id)
            if claim.status != APPROVED:
                self.release(APPROVED_SLOT, claim.user_id, claim.claim_id)

    def follow(self, claim: Claim, before: str | None) -> None:
        """The claim's status went from ``before`` (None: not known) to its status now: it
        leaves the slot the old status held and holds the one the new status holds."""
        was, now = slot_of(before), slot_of(claim.status)
        if was != now:
            if was is not None:
                self.release(was, claim.user_id, claim.claim_id)
            if now is not None:
                self.take(now, claim.user_id, claim.claim_id)


def slot_of(status: str | None) -> str | None:
    """The kind of slot a claim of this status holds (None: none)."""
    return OPEN_SLOT if status in OPEN else APPROVED_SLOT if status == APPROVED else None


# --- the book ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a step decided, to be published: ``kind`` of event, about ``claim_id`` (None:
    the claim the input named), with the level the record had for a ``level`` change."""

    kind: Literal[
        "submitted", "needs_review", "approved", "rejected", "evidence_added", "withdrawn", "revoked", "level"
    ]
    claim_id: str | None = None
    previous_level: VerificationLevel | None = None


class _Common(TypedDict):
    claim_id: str
    author_id: str
    user_id: str
    author_claim: AuthorClaimState
    author_revision: int
    claim: ClaimState


class Book:
    """``clock``: the service's time of this attempt, for what is measured on it (how long
    a claim has waited for its author). Every other time comes from the inputs."""

    def __init__(
        self, authors: dict[str, AuthorRecord], claims: dict[str, Claim], slots: Slots, *, clock: datetime
    ) -> None:
        self.authors = authors
        self.claims = claims
        self.slots = slots
        self.clock = clock
        self.dirty_authors: set[str] = set()
        self.dirty_claims: set[str] = set()
        # The history entries the step under way added, per claim it changed.
        self._step: dict[str, list[ClaimHistoryEntry]] = {}

    def author(self, author_id: str) -> AuthorRecord:
        return self.authors.setdefault(author_id, AuthorRecord(author_id))

    def seen_revision(self, author_id: str) -> int:
        """The revision of the author record decisions are taken against now (0: not known
        yet). Published as ``author_revision``, for information."""
        author = self.authors.get(author_id)
        return author.identity.revision if author is not None and author.identity is not None else 0

    def heal(self) -> None:
        """What an earlier attempt that stopped part-way left, healed before deciding: the
        records' claim states (``heal_authors``), and slots held by claims whose status no
        longer holds them (it stopped after writing its claims, before freeing their
        slots), so that they do not count against the users' new claims."""
        self.heal_authors()
        self.slots.reconcile(self.claims.values())

    def heal_authors(self) -> None:
        """An earlier attempt wrote a claim but stopped before its author record: the
        record's claim state the claim was written with (its ``author_claim``, also in the
        events of its outbox) is newer than the record's. Take the newest."""
        for claim in self.claims.values():
            state = claim.author_claim
            if state is None:
                continue
            author = self.author(claim.author_id)
            if is_newer(state.revision, author.claim.revision):
                author.claim = state
                self.dirty_authors.add(author.author_id)

    # --- inputs -------------------------------------------------------------------

    def author_seen(self, author_id: str, identity: Identity, cause: str, now: datetime) -> list[Emit]:
        """profile.events: keep the newest identity, then decide the claims that waited for it."""
        author = self.author(author_id)
        if author.identity is None or is_newer(identity.revision, author.identity.revision):
            author.identity = identity
            self.dirty_authors.add(author_id)
        waiting = sorted(
            (c for c in self.claims.values() if c.author_id == author_id and c.status == PENDING_AUTHOR),
            key=lambda c: (c.created_at, c.claim_id),
        )
        out: list[Emit] = []
        for claim in waiting:
            if claim.status == PENDING_AUTHOR:  # not lost meanwhile to a claim decided before it
                out += self._run(claim, cause, partial(self._decide, claim, now, "author_arrived"))
        return out

    def request(self, cmd: ClaimRequested, cause: str, now: datetime) -> list[Emit]:
        if cmd.claim_id in self.claims:
            return []  # the same claim requested again: already decided once
        claim = Claim(
            claim_id=cmd.claim_id,
            author_id=cmd.author_id,
            user_id=cmd.user_id,
            status=NEW,
            created_at=now,
            updated_at=now,
            evidence=cmd.evidence,
            show_owner=cmd.show_owner,
        )
        self.claims[claim.claim_id] = claim

        def decide() -> list[Outcome]:
            author = self.author(claim.author_id)
            if author.identity is None and not author.claim.claimed:
                if not self.slots.acquire(OPEN_SLOT, claim.user_id, claim.claim_id):
                    return [Outcome("submitted"), self._reject(claim, now, "too_many_open_claims", None, "requested")]
                claim.waiting_since = self.clock
                self._set(claim, now, PENDING_AUTHOR, "requested")
                return [Outcome("submitted")]
            return [Outcome("submitted"), *self._decide(claim, now, "requested")]

        return self._run(claim, cause, decide)

    def submit_evidence(self, cmd: ClaimEvidenceSubmitted, cause: str, now: datetime) -> list[Emit]:
        claim = self.claims.get(cmd.claim_id)
        refusal = self._refuse_unless_claimant(cmd.claim_id, cmd.author_id, cmd.user_id, claim)
        if refusal or claim is None:
            return refusal
        if cause in claim.applied:
            return []
        if claim.status not in OPEN:
            return self._refusal(claim, "claim_not_open", f"the claim is {claim.status}")

        def decide() -> list[Outcome]:
            claim.evidence = merge_evidence(claim.evidence, cmd.evidence)
            self._note(claim, now, "evidence_submitted")
            if claim.status == PENDING_AUTHOR:
                return [Outcome("evidence_added")]  # decided when the author arrives
            return self._decide(claim, now, "evidence_submitted")

        return self._run(claim, cause, decide)

    def withdraw(self, cmd: ClaimWithdrawn, cause: str, now: datetime) -> list[Emit]:
        claim = self.claims.get(cmd.claim_id)
        refusal = self._refuse_unless_claimant(cmd.claim_id, cmd.author_id, cmd.user_id, claim)
        if refusal or claim is None:
            return refusal
        if cause in claim.applied or claim.status == "withdrawn":
            return []
        if claim.status not in OPEN and claim.status != APPROVED:
            return self._refusal(claim, "claim_not_open", f"the claim is {claim.status}")

        def decide() -> list[Outcome]:
            was_owner = claim.status == APPROVED
            self.slots.release(OPEN_SLOT, claim.user_id, claim.claim_id)
            self._set(claim, now, "withdrawn", "withdrawn", by=cmd.user_id)
            if was_owner:
                return [Outcome("withdrawn"), *self._unclaim(claim)]
            return [Outcome("withdrawn")]

        return self._run(claim, cause, decide)

    def review(self, cmd: ClaimReviewed, cause: str, now: datetime) -> list[Emit]:
        claim = self.claims.get(cmd.claim_id)
        if claim is None or claim.author_id != cmd.author_id:
            return [self._unknown(cmd.claim_id, cmd.author_id, cmd.reviewer_id)]
        if cause in claim.applied:
            return []
        decision = cmd.decision
        if decision == "approve":
            if claim.status == APPROVED and claim.level == "L3":
                return []
            if claim.status not in (NEEDS_REVIEW, APPROVED):
                return self._refusal(claim, "claim_not_open", f"the claim is {claim.status}")
        elif decision == "reject":
            if claim.status == "rejected" and claim.reason == "reviewer_rejected":
                return []
            if claim.status not in OPEN:
                return self._refusal(claim, "claim_not_open", f"the claim is {claim.status}")
        elif claim.status == "revoked":
            return []
        elif claim.status != APPROVED:
            return self._refusal(claim, "claim_not_approved", f"the claim is {claim.status}")

        def decide() -> list[Outcome]:
            if decision == "approve" and claim.status == APPROVED:  # L2 confirmed by a reviewer
                return self._approve(claim, now, "L3", "reviewer_approved", by=cmd.reviewer_id)
            if decision == "approve":
                return self._try_approve(claim, now, "L3", "reviewer_approved", by=cmd.reviewer_id)
            if decision == "reject":
                return [
                    self._reject(claim, now, "reviewer_rejected", cmd.reason, "reviewer_rejected", by=cmd.reviewer_id)
                ]
            self.slots.release(OPEN_SLOT, claim.user_id, claim.claim_id)
            claim.reason, claim.detail = cmd.reason, None
            self._set(claim, now, "revoked", "revoked", by=cmd.reviewer_id, reason=cmd.reason)
            return [Outcome("revoked"), *self._unclaim(claim)]

        return self._run(claim, cause, decide)

    def expire(self, claim_id: str, wait: timedelta) -> list[Emit]:
        """The author never arrived within the waiting time. The claim is stamped with its
        deadline (claim time + wait), not with the moment a sweeper noticed. No input
        caused it: the caller names the cause (derived from the claim) for the event ids."""
        claim = self.claims.get(claim_id)
        if claim is None or claim.status != PENDING_AUTHOR or self.author(claim.author_id).identity is not None:
            return []
        now = claim.created_at + wait

        def decide() -> list[Outcome]:
            return [self._reject(claim, now, "unknown_author", "the author record did not arrive in time", "expired")]

        return self._run(claim, None, decide)

    # --- decisions ----------------------------------------------------------------

    def _decide(self, claim: Claim, now: datetime, event: ClaimStep) -> list[Outcome]:
        """Evaluate an open (or new) claim against a known author record."""
        author = self.author(claim.author_id)
        if author.claim.claimed:
            return [self._reject(claim, now, "already_claimed", None, event)]
        assert author.identity is not None
        level = automatic_level(claim.evidence, author.identity)
        if level is not None:
            return self._try_approve(claim, now, level, event)
        if claim.status != NEEDS_REVIEW and not self.slots.acquire(OPEN_SLOT, claim.user_id, claim.claim_id):
            return [self._reject(claim, now, "too_many_open_claims", None, event)]
        self._set(claim, now, NEEDS_REVIEW, event)
        return [Outcome("needs_review")]

    def _try_approve(
        self, claim: Claim, now: datetime, level: ClaimLevel, event: ClaimStep, by: str | None = None
    ) -> list[Outcome]:
        if self.author(claim.author_id).claim.claimed:
            return [self._reject(claim, now, "already_claimed", None, event)]
        if not self.slots.acquire(APPROVED_SLOT, claim.user_id, claim.claim_id):
            return [self._reject(claim, now, "user_already_owns_a_record", None, event)]
        self.slots.release(OPEN_SLOT, claim.user_id, claim.claim_id)
        out = self._approve(claim, now, level, event, by=by)
        # Only one claim per record can be approved: the others still open lose now.
        others = (
            c
            for c in self.claims.values()
            if c.author_id == claim.author_id and c.claim_id != claim.claim_id and c.status in OPEN
        )
        for other in sorted(others, key=lambda c: (c.created_at, c.claim_id)):
            out.append(self._reject(other, now, "already_claimed", f"claim {claim.claim_id} was approved", event))
        return out

    def _approve(
        self, claim: Claim, now: datetime, level: ClaimLevel, event: ClaimStep, by: str | None = None
    ) -> list[Outcome]:
        author = self.author(claim.author_id)
        previous = author.claim.verification_level
        claim.level = level
        self._set(claim, now, APPROVED, event, by=by, level=level)
        author.claim = AuthorClaimState(
            claimed=True,
            owner_user_id=claim.user_id,
            claim_id=claim.claim_id,
            verification_level=level,
            since=author.claim.since if author.claim.claim_id == claim.claim_id else now,
            revision=author.claim.revision + 1,
        )
        self.dirty_authors.add(author.author_id)
        return [Outcome("approved"), Outcome("level", previous_level=previous)]

    def _unclaim(self, claim: Claim) -> list[Outcome]:
        author = self.author(claim.author_id)
        self.slots.release(APPROVED_SLOT, claim.user_id, claim.claim_id)
        if author.claim.claim_id != claim.claim_id:
            return []
        previous = author.claim.verification_level
        author.claim = AuthorClaimState(claimed=False, revision=author.claim.revision + 1)
        self.dirty_authors.add(author.author_id)
        return [Outcome("level", previous_level=previous)]

    def _reject(
        self,
        claim: Claim,
        now: datetime,
        reason: RejectionReason,
        detail: str | None,
        event: ClaimStep,
        by: str | None = None,
    ) -> Outcome:
        self.slots.release(OPEN_SLOT, claim.user_id, claim.claim_id)
        claim.reason, claim.detail = reason, detail
        self._set(claim, now, "rejected", event, by=by, reason=reason)
        return Outcome("rejected", claim.claim_id)

    # --- bookkeeping ----------------------------------------------------------------

    def _set(
        self,
        claim: Claim,
        now: datetime,
        status: ClaimStatus,
        event: ClaimStep,
        *,
        by: str | None = None,
        level: ClaimLevel | None = None,
        reason: str | None = None,
    ) -> None:
        claim.status = status
        if status != PENDING_AUTHOR:
            claim.waiting_since = None
        self._note(claim, now, event, by=by, level=level, reason=reason)

    def _note(
        self,
        claim: Claim,
        now: datetime,
        event: ClaimStep,
        *,
        by: str | None = None,
        level: ClaimLevel | None = None,
        reason: str | None = None,
    ) -> None:
        claim.updated_at = now
        entry = ClaimHistoryEntry(at=now, status=claim.decided, event=event, by=by, level=level, reason=reason)
        claim.history.append(entry)
        self._step.setdefault(claim.claim_id, []).append(entry)
        self.dirty_claims.add(claim.claim_id)

    def _run(self, claim: Claim, cause: str | None, decide: Callable[[], list[Outcome]]) -> list[Emit]:
        """Apply one input to a claim (and to the claims it makes lose): each claim it
        changed takes one step (revision + 1, the input applied), and the outcome becomes
        events that carry each claim's state and the record's claim state after it."""
        self._step = {}
        outcomes = decide()
        state = self.author(claim.author_id).claim
        for claim_id in self._step:
            changed = self.claims[claim_id]
            changed.revision += 1
            if cause is not None:
                changed.applied.append(cause)
            changed.author_claim = state
        out = [self._event(outcome, claim, state) for outcome in outcomes]
        self._step = {}
        return [e for e in out if e is not None]

    def _event(self, outcome: Outcome, claim: Claim, state: AuthorClaimState) -> Emit | None:
        if outcome.kind == "level":  # the record's claim-derived level changed
            if outcome.previous_level == state.verification_level:
                return None
            level = VerificationLevelChanged(
                author_id=claim.author_id,
                verification_level=state.verification_level,
                previous_level=outcome.previous_level,
                author_claim=state,
                author_revision=self.seen_revision(claim.author_id),
            )
            return Emit(level, (level.event_type, claim.author_id, str(state.revision)), claim.claim_id)
        if outcome.claim_id is not None:  # this claim, or another claim of the record that lost
            claim = self.claims[outcome.claim_id]
        snapshot = claim.state(self._step.get(claim.claim_id, []))
        common = _Common(
            claim_id=claim.claim_id,
            author_id=claim.author_id,
            user_id=claim.user_id,
            author_claim=state,
            author_revision=self.seen_revision(claim.author_id),
            claim=snapshot,
        )
        payload: EventModel
        if outcome.kind == "submitted":
            payload = ClaimSubmitted(status=snapshot.status, **common)
        elif outcome.kind == "needs_review":
            payload = ClaimNeedsReview(**common)
        elif outcome.kind == "approved":
            assert snapshot.level is not None
            payload = ClaimApproved(verification_level=snapshot.level, **common)
        elif outcome.kind == "rejected":
            payload = ClaimRejected(reason=_rejection(snapshot.reason), detail=snapshot.detail, **common)
        elif outcome.kind == "evidence_added":
            payload = ClaimEvidenceAdded(**common)
        elif outcome.kind == "withdrawn":
            payload = ClaimWithdrawnEvent(**common)
        else:
            payload = ClaimRevoked(reason=snapshot.reason or "", **common)
        return Emit(payload, (payload.event_type, claim.claim_id), claim.claim_id)

    def _refuse_unless_claimant(self, claim_id: str, author_id: str, user_id: str, claim: Claim | None) -> list[Emit]:
        if claim is None or claim.author_id != author_id:
            return [self._unknown(claim_id, author_id, user_id)]
        if claim.user_id != user_id:
            return self._refusal(claim, "not_claimant", None, user_id=user_id)
        return []

    def _unknown(self, claim_id: str, author_id: str, user_id: str) -> Emit:
        state = self.authors[author_id].claim if author_id in self.authors else UNCLAIMED
        payload = ClaimRejected(
            claim_id=claim_id,
            author_id=author_id,
            user_id=user_id,
            author_claim=state,
            reason="unknown_claim",
            author_revision=self.seen_revision(author_id),
        )
        return Emit(payload, (payload.event_type, claim_id, "refused"), None)

    def _refusal(
        self, claim: Claim, reason: RejectionReason, detail: str | None, user_id: str | None = None
    ) -> list[Emit]:
        """A command refused: the claim stays as it is, the refusal is still an event."""
        payload = ClaimRejected(
            claim_id=claim.claim_id,
            author_id=claim.author_id,
            user_id=user_id or claim.user_id,
            author_claim=self.author(claim.author_id).claim,
            reason=reason,
            detail=detail,
            author_revision=self.seen_revision(claim.author_id),
        )
        return [Emit(payload, (payload.event_type, claim.claim_id, "refused"), None)]


# Every reason a claim is rejected with, by its name (a rejected claim's ``reason`` is one).
REJECTION_REASONS: dict[str | None, RejectionReason] = {reason: reason for reason in get_args(RejectionReason)}


def _rejection(reason: str | None) -> RejectionReason:
    return REJECTION_REASONS[reason]
