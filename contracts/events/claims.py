"""``webapp.claims`` (commands) and ``claims.events`` (what the claims service decided)."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, StrictBool, model_validator

from contracts.envelope import EventModel
from contracts.events.common import Frozen, Id, OrcidId, VerificationLevel
from contracts.topics import Topic

ClaimStatus = Literal["pending_author", "needs_review", "approved", "rejected", "withdrawn", "revoked"]
# The levels an approved claim gives its record (``VerificationLevel``'s claimed ones).
ClaimLevel = Literal["L2", "L3"]
RejectionReason = Literal[
    "already_claimed",
    "user_already_owns_a_record",
    "too_many_open_claims",
    "unknown_author",
    "unknown_claim",
    "not_claimant",
    "claim_not_open",
    "claim_not_approved",
    "reviewer_rejected",
]


EMAIL_PATTERN = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$"


class Evidence(Frozen):
    """What the web app vouches for. Secrets never travel here: only verified facts."""

    # A plain ASCII address (what the web app verifies mail to): a pattern the JSON Schema
    # states, where an e-mail validator would refuse addresses the schema's "email" allows.
    email: str | None = Field(default=None, max_length=254, pattern=EMAIL_PATTERN)
    email_verified: StrictBool = False  # the web app confirmed the user controls this address
    orcid: OrcidId | None = None
    orcid_authenticated: StrictBool = False  # the user signed in with this ORCID iD
    statement: str | None = Field(default=None, max_length=2000)
    links: list[str] = Field(default=[], max_length=10)


# --- commands on webapp.claims ------------------------------------------------------


class _ClaimCommand(EventModel):
    topic: ClassVar[str] = Topic.WEBAPP_CLAIMS

    claim_id: Id
    author_id: Id


class ClaimRequested(_ClaimCommand):
    event_type: ClassVar[str] = "ClaimRequested"
    user_id: Id
    evidence: Evidence = Evidence()
    # The owner agrees that the public claim status of the record names them.
    show_owner: bool = False


class ClaimEvidenceSubmitted(_ClaimCommand):
    event_type: ClassVar[str] = "ClaimEvidenceSubmitted"
    user_id: Id
    evidence: Evidence


class ClaimWithdrawn(_ClaimCommand):
    """Command: the claimant withdraws (same name as the event on claims.events)."""

    event_type: ClassVar[str] = "ClaimWithdrawn"
    user_id: Id


class ClaimReviewed(_ClaimCommand):
    event_type: ClassVar[str] = "ClaimReviewed"
    reviewer_id: Id
    decision: Literal["approve", "reject", "revoke"]
    reason: str = Field(min_length=1, max_length=1000)


# --- events on claims.events ---------------------------------------------------------


class AuthorClaimState(Frozen):
    """The author record's claim state after this event: consumers replace, never add."""

    claimed: bool
    owner_user_id: Id | None = None
    claim_id: Id | None = None
    verification_level: VerificationLevel | None = None  # None: no claim-derived level
    since: datetime | None = None
    revision: int = Field(ge=1)


# What a step of a claim is called in its history.
ClaimStep = Literal[
    "requested",
    "evidence_submitted",
    "author_arrived",
    "reviewer_approved",
    "reviewer_rejected",
    "withdrawn",
    "revoked",
    "expired",
]


class ClaimHistoryEntry(Frozen):
    """One entry of a claim's history: what happened, when (the time of the event that
    caused it), the status after it, and who or why where that applies."""

    at: datetime
    status: ClaimStatus
    event: ClaimStep
    by: Id | None = None  # the claimant who withdrew, the reviewer who decided
    level: ClaimLevel | None = None
    reason: str | None = Field(default=None, max_length=1000)


class ClaimState(Frozen):
    """The claim after the input that caused this event. ``revision`` counts the inputs
    that changed the claim (1: the request); ``history`` holds the entries this input
    added (the claim's full history is every event's entries in revision order). Together
    with the event's ``causation_id`` (the input) it is what the claims service stores of
    the claim, so the service rebuilds its claims from claims.events alone."""

    status: ClaimStatus
    revision: int = Field(ge=1)
    level: ClaimLevel | None = None
    reason: str | None = Field(default=None, max_length=1000)  # rejection reason, or the reviewer's for a revocation
    detail: str | None = Field(default=None, max_length=1000)
    evidence: Evidence = Evidence()
    show_owner: bool = False
    created_at: datetime
    updated_at: datetime
    # While the claim waits for its author record: since when, on the claims service's
    # clock (the wait ends PENDING_AUTHOR_TIMEOUT_S later, see the service's README).
    waiting_since: datetime | None = None
    history: list[ClaimHistoryEntry] = Field(default=[], max_length=10)


class _ClaimEvent(EventModel):
    topic: ClassVar[str] = Topic.CLAIMS_EVENTS

    claim_id: Id
    author_id: Id
    user_id: Id
    author_claim: AuthorClaimState
    # The revision of the author record (profile's ``AuthorState.revision``) the decision
    # was taken against; 0: the record was not known yet. Informative: nothing orders by it.
    author_revision: int | None = Field(default=None, ge=0)
    # The claim's state after this event; None on a refusal (``ClaimRejected`` of a
    # command that changed nothing) and on events published before it existed.
    claim: ClaimState | None = None


class ClaimSubmitted(_ClaimEvent):
    event_type: ClassVar[str] = "ClaimSubmitted"
    status: ClaimStatus


class ClaimNeedsReview(_ClaimEvent):
    event_type: ClassVar[str] = "ClaimNeedsReview"


class ClaimApproved(_ClaimEvent):
    event_type: ClassVar[str] = "ClaimApproved"
    verification_level: ClaimLevel


class ClaimRejected(_ClaimEvent):
    event_type: ClassVar[str] = "ClaimRejected"
    reason: RejectionReason
    detail: str | None = Field(default=None, max_length=1000)


class ClaimEvidenceAdded(_ClaimEvent):
    """Evidence added to a claim that waits for its author record: kept, decided later."""

    event_type: ClassVar[str] = "ClaimEvidenceAdded"


class ClaimWithdrawnEvent(_ClaimEvent):
    event_type: ClassVar[str] = "ClaimWithdrawn"


class ClaimRevoked(_ClaimEvent):
    event_type: ClassVar[str] = "ClaimRevoked"
    reason: str


class VerificationLevelChanged(EventModel):
    event_type: ClassVar[str] = "VerificationLevelChanged"
    topic: ClassVar[str] = Topic.CLAIMS_EVENTS

    author_id: Id
    verification_level: VerificationLevel | None
    previous_level: VerificationLevel | None = None
    author_claim: AuthorClaimState
    # The revision of the author record (profile's ``AuthorState.revision``) the decision
    # was taken against; 0: the record was not known yet. Informative: nothing orders by it.
    author_revision: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> VerificationLevelChanged:
        if self.verification_level != self.author_claim.verification_level:
            raise ValueError("verification_level must equal author_claim.verification_level")
        return self


# The events that say what an author record's claim state is after them (consumers keep
# the newest by ``author_claim.revision``).
CLAIM_STATE_EVENTS: tuple[type[_ClaimEvent] | type[VerificationLevelChanged], ...] = (
    ClaimSubmitted,
    ClaimNeedsReview,
    ClaimApproved,
    ClaimRejected,
    ClaimEvidenceAdded,
    ClaimWithdrawnEvent,
    ClaimRevoked,
    VerificationLevelChanged,
)


def author_claim_of(payload: EventModel) -> AuthorClaimState | None:
    """The author record's claim state an event of claims.events carries (all do)."""
    if isinstance(payload, CLAIM_STATE_EVENTS):
        return payload.author_claim
    return None
