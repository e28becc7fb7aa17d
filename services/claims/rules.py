"""The claim rules, as functions of the current state: no broker, no driver.

A ``Book`` holds what one batch needs (author records, claims, the users' claim slots),
applies commands to it in partition order and records what changed and which events to
publish. The caller loads the book, persists what is marked dirty and publishes the
``Emit`` list. Refusals that change nothing are events too (``ClaimRejected{reason}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from contracts.envelope import EventModel
from contracts.events.claims import (
    AuthorClaimState,
    ClaimApproved,
    ClaimEvidenceSubmitted,
    ClaimNeedsReview,
    ClaimRejected,
    ClaimRequested,
    ClaimReviewed,
    ClaimRevoked,
    ClaimSubmitted,
    ClaimWithdrawn,
    ClaimWithdrawnEvent,
    Evidence,
    VerificationLevelChanged,
)

OPEN = frozenset({"pending_author", "needs_review"})
OPEN_SLOT, APPROVED_SLOT = "open", "approved"
SLOT_REFUSAL = {OPEN_SLOT: "too_many_open_claims", APPROVED_SLOT: "user_already_owns_a_record"}
UNCLAIMED = AuthorClaimState(claimed=False, revision=1)


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
    # Ids of the record's open claims (pending_author, needs_review), oldest first: what a
    # decision on the record must see, kept on the record so it is loaded by id.
    open_claims: list[str] = field(default_factory=list)
    version: int = 0  # optimistic concurrency of the stored document (0: not stored yet)


@dataclass(slots=True)
class Claim:
    claim_id: str
    author_id: str
    user_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    evidence: dict[str, Any] = field(default_factory=dict)
    show_owner: bool = False
    level: str | None = None
    reason: str | None = None
    detail: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # ids of the inputs already applied
    outbox: list[dict[str, Any]] = field(default_factory=list)  # events written, not known to be published
    outbox_token: str | None = None  # which write put them there (see the store)
    version: int = 0


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


def automatic_level(evidence: Evidence, identity: Identity) -> str | None:
    """L2 when the web app vouches for a fact that ties the user to this record, else None."""
    if evidence.email and evidence.email_verified and email_domain_matches(evidence.email, identity.domains):
        return "L2"
    if evidence.orcid and evidence.orcid_authenticated and identity.orcid and evidence.orcid == identity.orcid:
        return "L2"
    return None


def merge_evidence(old: dict[str, Any], new: Evidence) -> dict[str, Any]:
    """Later evidence adds to earlier evidence; a fact given again replaces the old one."""
    merged = dict(old)
    for name, value in new.model_dump(mode="json").items():
        if name == "links":
            merged["links"] = list(dict.fromkeys([*old.get("links", []), *value]))[:10]
        elif name in ("email_verified", "orcid_authenticated"):
            continue
        elif value is not None:
            merged[name] = value
    # A verification flag belongs to the value it was given with.
    if new.email is not None:
        merged["email_verified"] = new.email_verified
    if new.orcid is not None:
        merged["orcid_authenticated"] = new.orcid_authenticated
    return Evidence.model_validate(merged).model_dump(mode="json")


# --- the book ----------------------------------------------------------------------


class Slots:
    """Which claims each user holds open or approved, with the configured limits."""

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
        held = self.holders.setdefault((kind, user), [])
        if claim_id in held:
            return True
        if len(held) >= self.limit(kind):
            return False
        held.append(claim_id)
        op = (kind, user, claim_id)
        if op in self.released:  # released earlier in this batch: the two cancel out
            self.released.remove(op)
        else:
            self.acquired.append(op)
        return True

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
            if claim.status != "approved":
                self.release(APPROVED_SLOT, claim.user_id, claim.claim_id)


class Book:
    def __init__(self, authors: dict[str, AuthorRecord], claims: dict[str, Claim], slots: Slots) -> None:
        self.authors = authors
        self.claims = claims
        self.slots = slots
        self.dirty_authors: set[str] = set()
        self.dirty_claims: set[str] = set()
        # Rebuild only: claim id -> the slot refusal live published for it (claims.events).
        self.live_refusals: Mapping[str, str] = {}

    def author(self, author_id: str) -> AuthorRecord:
        return self.authors.setdefault(author_id, AuthorRecord(author_id))

    def seen_revision(self, author_id: str) -> int:
        """The revision of the author record decisions are taken against now (0: not known
        yet): every event says it, so a rebuild applies the input where live saw it."""
        author = self.authors.get(author_id)
        return author.identity.revision if author is not None and author.identity is not None else 0

    def index_open_claims(self) -> None:
        """Make each record's ``open_claims`` match the statuses of the claims in the book
        (a claim opened or closed by this batch, or by an earlier attempt that stopped
        before writing the record). Every listed claim is loaded with the record, so an
        id whose claim is not in the book no longer exists and is dropped."""
        open_by_author: dict[str, list[Claim]] = {}
        for c in self.claims.values():
            if c.status in OPEN:
                open_by_author.setdefault(c.author_id, []).append(c)
        for author in self.authors.values():
            listed = [cid for cid in author.open_claims if cid in self.claims and self.claims[cid].status in OPEN]
            known = set(listed)
            opened = sorted(
                (c for c in open_by_author.get(author.author_id, []) if c.claim_id not in known),
                key=lambda c: (c.created_at, c.claim_id),
            )
            listed += [c.claim_id for c in opened]
            if listed != author.open_claims:
                author.open_claims = listed
                self.dirty_authors.add(author.author_id)

    # --- inputs -------------------------------------------------------------------

    def author_seen(self, author_id: str, identity: Identity, cause: str, now: datetime) -> list[Emit]:
        """profile.events: keep the newest identity, then decide the claims that waited for it."""
        author = self.author(author_id)
        if author.identity is None or identity.revision > author.identity.revision:
            author.identity = identity
            self.dirty_authors.add(author_id)
        waiting = sorted(
            (c for c in self.claims.values() if c.author_id == author_id and c.status == "pending_author"),
            key=lambda c: (c.created_at, c.claim_id),
        )
        out: list[Emit] = []
        for claim in waiting:
            out += self._run(claim, cause, now, lambda c=claim: self._decide(c, now, "author_arrived"))
        return out

    def request(self, cmd: ClaimRequested, cause: str, now: datetime) -> list[Emit]:
        if cmd.claim_id in self.claims:
            return []  # the same claim requested again: already decided once
        claim = Claim(
            claim_id=cmd.claim_id,
            author_id=cmd.author_id,
            user_id=cmd.user_id,
            status="new",
            created_at=now,
            updated_at=now,
            evidence=cmd.evidence.model_dump(mode="json"),
            show_owner=cmd.show_owner,
        )
        self.claims[claim.claim_id] = claim

        def decide() -> list[tuple[str, ...]]:
            author = self.author(claim.author_id)
            if author.identity is None and not author.claim.claimed:
                if not self._take(OPEN_SLOT, claim):
                    self._reject(claim, now, "too_many_open_claims", None, "requested")
                    return [("submitted",), ("rejected",)]
                self._set(claim, now, "pending_author", "requested")
                return [("submitted",)]
            return [("submitted",), *self._decide(claim, now, "requested")]

        return self._run(claim, cause, now, decide)

    def submit_evidence(self, cmd: ClaimEvidenceSubmitted, cause: str, now: datetime) -> list[Emit]:
        claim = self.claims.get(cmd.claim_id)
        refusal = self._refuse_unless_claimant(cmd.claim_id, cmd.author_id, cmd.user_id, claim, cause)
        if refusal or claim is None:
            return refusal
        if cause in claim.applied:
            return []
        if claim.status not in OPEN:
            return self._refusal(claim, cause, "claim_not_open", f"the claim is {claim.status}")

        def decide() -> list[tuple[str, ...]]:
            claim.evidence = merge_evidence(claim.evidence, cmd.evidence)
            self._note(claim, now, "evidence_submitted")
            if claim.status == "pending_author":
                return []
            return self._decide(claim, now, "evidence_submitted")

        return self._run(claim, cause, now, decide)

    def withdraw(self, cmd: ClaimWithdrawn, cause: str, now: datetime) -> list[Emit]:
        claim = self.claims.get(cmd.claim_id)
        refusal = self._refuse_unless_claimant(cmd.claim_id, cmd.author_id, cmd.user_id, claim, cause)
        if refusal or claim is None:
            return refusal
        if cause in claim.applied or claim.status == "withdrawn":
            return []
        if claim.status not in OPEN and claim.status != "approved":
            return self._refusal(claim, cause, "claim_not_open", f"the claim is {claim.status}")

        def decide() -> list[tuple[str, ...]]:
            was_owner = claim.status == "approved"
            self.slots.release(OPEN_SLOT, claim.user_id, claim.claim_id)
            self._set(claim, now, "withdrawn", "withdrawn", by=cmd.user_id)
            if was_owner:
                return [("withdrawn",), *self._unclaim(claim)]
            return [("withdrawn",)]

        return self._run(claim, cause, now, decide)

    def review(self, cmd: ClaimReviewed, cause: str, now: datetime) -> list[Emit]:
        claim = self.claims.get(cmd.claim_id)
        if claim is None or claim.author_id != cmd.author_id:
            return [self._unknown(cmd.claim_id, cmd.author_id, cmd.reviewer_id, cause)]
        if cause in claim.applied:
            return []
        decision = cmd.decision
        if decision == "approve":
            if claim.status == "approved" and claim.level == "L3":
                return []
            if claim.status not in ("needs_review", "approved"):
                return self._refusal(claim, cause, "claim_not_open", f"the claim is {claim.status}")
        elif decision == "reject":
            if claim.status == "rejected" and claim.reason == "reviewer_rejected":
                return []
            if claim.status not in OPEN:
                return self._refusal(claim, cause, "claim_not_open", f"the claim is {claim.status}")
        elif claim.status == "revoked":
            return []
        elif claim.status != "approved":
            return self._refusal(claim, cause, "claim_not_approved", f"the claim is {claim.status}")

        def decide() -> list[tuple[str, ...]]:
            if decision == "approve" and claim.status == "approved":  # L2 confirmed by a reviewer
                return self._approve(claim, now, "L3", "reviewer_approved", by=cmd.reviewer_id)
            if decision == "approve":
                return self._try_approve(claim, now, "L3", "reviewer_approved", by=cmd.reviewer_id)
            if decision == "reject":
                self._reject(claim, now, "reviewer_rejected", cmd.reason, "reviewer_rejected", by=cmd.reviewer_id)
                return [("rejected",)]
            self.slots.release(OPEN_SLOT, claim.user_id, claim.claim_id)
            claim.reason = cmd.reason
            self._set(claim, now, "revoked", "revoked", by=cmd.reviewer_id, reason=cmd.reason)
            return [("revoked",), *self._unclaim(claim)]

        return self._run(claim, cause, now, decide)

    def expire(self, claim_id: str, cause: str, wait: timedelta) -> list[Emit]:
        """The author never arrived within the waiting time. The claim is stamped with its
        deadline (claim time + wait), not with the moment a sweeper noticed: every time in
        the projection comes from an event, so a rebuild writes the same."""
        claim = self.claims.get(claim_id)
        if claim is None or claim.status != "pending_author" or self.author(claim.author_id).identity is not None:
            return []
        now = claim.created_at + wait

        def decide() -> list[tuple[str, ...]]:
            self._reject(claim, now, "unknown_author", "the author record did not arrive in time", "expired")
            return [("rejected",)]

        return self._run(claim, cause, now, decide)

    # --- decisions ----------------------------------------------------------------

    def _decide(self, claim: Claim, now: datetime, event: str) -> list[tuple[str, ...]]:
        """Evaluate an open (or new) claim against a known author record."""
        author = self.author(claim.author_id)
        if author.claim.claimed:
            self._reject(claim, now, "already_claimed", None, event)
            return [("rejected",)]
        assert author.identity is not None
        level = automatic_level(Evidence.model_validate(claim.evidence), author.identity)
        if level is not None:
            return self._try_approve(claim, now, level, event)
        if claim.status != "needs_review" and not self._take(OPEN_SLOT, claim):
            self._reject(claim, now, "too_many_open_claims", None, event)
            return [("rejected",)]
        self._set(claim, now, "needs_review", event)
        return [("needs_review",)]

    def _take(self, kind: str, claim: Claim) -> bool:
        """A slot of the user's limit for the claim. Claims of one user in several
        partitions race for the last slot; a rebuild, whose order across partitions is not
        live's, refuses the claims live refused (``live_refusals``) and so leaves the slot
        to the one live gave it to."""
        if self.live_refusals.get(claim.claim_id) == SLOT_REFUSAL[kind]:
            return False
        return self.slots.acquire(kind, claim.user_id, claim.claim_id)

    def _try_approve(
        self, claim: Claim, now: datetime, level: str, event: str, by: str | None = None
    ) -> list[tuple[str, ...]]:
        if self.author(claim.author_id).claim.claimed:
            self._reject(claim, now, "already_claimed", None, event)
            return [("rejected",)]
        if not self._take(APPROVED_SLOT, claim):
            self._reject(claim, now, "user_already_owns_a_record", None, event)
            return [("rejected",)]
        self.slots.release(OPEN_SLOT, claim.user_id, claim.claim_id)
        out = self._approve(claim, now, level, event, by=by)
        # Only one claim per record can be approved: the others still open lose now.
        others = (
            c
            for c in self.claims.values()
            if c.author_id == claim.author_id and c.claim_id != claim.claim_id and c.status in OPEN
        )
        for other in sorted(others, key=lambda c: (c.created_at, c.claim_id)):
            self._reject(other, now, "already_claimed", f"claim {claim.claim_id} was approved", event)
            out.append(("rejected", other.claim_id))
        return out

    def _approve(
        self, claim: Claim, now: datetime, level: str, event: str, by: str | None = None
    ) -> list[tuple[str, ...]]:
        author = self.author(claim.author_id)
        previous = author.claim.verification_level
        claim.level = level
        self._set(claim, now, "approved", event, by=by, level=level)
        author.claim = AuthorClaimState(
            claimed=True,
            owner_user_id=claim.user_id,
            claim_id=claim.claim_id,
            verification_level=level,
            since=author.claim.since if author.claim.claim_id == claim.claim_id else now,
            revision=author.claim.revision + 1,
        )
        self.dirty_authors.add(author.author_id)
        return [("approved",), ("level", previous or "")]

    def _unclaim(self, claim: Claim) -> list[tuple[str, ...]]:
        author = self.author(claim.author_id)
        self.slots.release(APPROVED_SLOT, claim.user_id, claim.claim_id)
        if author.claim.claim_id != claim.claim_id:
            return []
        previous = author.claim.verification_level
        author.claim = AuthorClaimState(claimed=False, revision=author.claim.revision + 1)
        self.dirty_authors.add(author.author_id)
        return [("level", previous or "")]

    def _reject(
        self, claim: Claim, now: datetime, reason: str, detail: str | None, event: str, by: str | None = None
    ) -> None:
        self.slots.release(OPEN_SLOT, claim.user_id, claim.claim_id)
        claim.reason, claim.detail = reason, detail
        self._set(claim, now, "rejected", event, by=by, reason=reason)

    # --- bookkeeping ----------------------------------------------------------------

    def _set(self, claim: Claim, now: datetime, status: str, event: str, **extra: Any) -> None:
        claim.status = status
        self._note(claim, now, event, **extra)

    def _note(self, claim: Claim, now: datetime, event: str, **extra: Any) -> None:
        claim.updated_at = now
        entry = {"at": now, "status": claim.status, "event": event}
        entry.update({k: v for k, v in extra.items() if v is not None})
        claim.history.append(entry)
        self.dirty_claims.add(claim.claim_id)

    def _run(self, claim: Claim, cause: str, now: datetime, decide: Any) -> list[Emit]:
        """Apply one input to a claim and turn its outcome into events that carry the
        record's claim state after the input."""
        outcomes: list[tuple[str, ...]] = decide()
        claim.applied.append(cause)
        self.dirty_claims.add(claim.claim_id)
        state = self.author(claim.author_id).claim
        out = [self._event(outcome, claim, state) for outcome in outcomes]
        return [e for e in out if e is not None]

    def _event(self, outcome: tuple[str, ...], claim: Claim, state: AuthorClaimState) -> Emit | None:
        kind, owner = outcome[0], claim.claim_id
        if len(outcome) > 1 and kind == "rejected":  # another claim of the record lost
            claim = self.claims[outcome[1]]
        common = dict(
            claim_id=claim.claim_id,
            author_id=claim.author_id,
            user_id=claim.user_id,
            author_claim=state,
            author_revision=self.seen_revision(claim.author_id),
        )
        payload: EventModel
        if kind == "submitted":
            payload = ClaimSubmitted(status=claim.status, **common)
        elif kind == "needs_review":
            payload = ClaimNeedsReview(**common)
        elif kind == "approved":
            payload = ClaimApproved(verification_level=claim.level, **common)
        elif kind == "rejected":
            payload = ClaimRejected(reason=claim.reason, detail=claim.detail, **common)
        elif kind == "withdrawn":
            payload = ClaimWithdrawnEvent(**common)
        elif kind == "revoked":
            payload = ClaimRevoked(reason=claim.reason or "", **common)
        else:  # "level": the record's claim-derived level changed
            previous = outcome[1] or None
            if previous == state.verification_level:
                return None
            payload = VerificationLevelChanged(
                author_id=claim.author_id,
                verification_level=state.verification_level,
                previous_level=previous,
                author_claim=state,
                author_revision=self.seen_revision(claim.author_id),
            )
            return Emit(payload, (payload.event_type, claim.author_id, str(state.revision)), owner)
        return Emit(payload, (payload.event_type, claim.claim_id), owner)

    def _refuse_unless_claimant(
        self, claim_id: str, author_id: str, user_id: str, claim: Claim | None, cause: str
    ) -> list[Emit]:
        if claim is None or claim.author_id != author_id:
            return [self._unknown(claim_id, author_id, user_id, cause)]
        if claim.user_id != user_id:
            return self._refusal(claim, cause, "not_claimant", None, user_id=user_id)
        return []

    def _unknown(self, claim_id: str, author_id: str, user_id: str, cause: str) -> Emit:
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
        self, claim: Claim, cause: str, reason: str, detail: str | None, user_id: str | None = None
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
