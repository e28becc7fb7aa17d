"""The claim rules on in-memory state: evidence, levels, invariants, idempotence."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

import pytest
from pydantic import ValidationError

from contracts.envelope import EventModel
from contracts.events.claims import (
    ClaimApproved,
    ClaimEvidenceSubmitted,
    ClaimRejected,
    ClaimRequested,
    ClaimReviewed,
    ClaimRevoked,
    ClaimState,
    ClaimSubmitted,
    ClaimWithdrawn,
    Evidence,
    VerificationLevelChanged,
)
from services.claims.rules import (
    AuthorRecord,
    Book,
    Emit,
    Identity,
    Limits,
    Slots,
    automatic_level,
    email_domain_matches,
    merge_evidence,
)

P = TypeVar("P", bound=EventModel)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CLOCK = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)  # the service's clock, not the commands'
WAIT = timedelta(minutes=10)
STANFORD = Identity("Quoc V. Le", "0000-0002-1825-0097", ("stanford.edu",), 1)
EMAIL_OK = Evidence(email="qvl@cs.stanford.edu", email_verified=True)
ORCID_OK = Evidence(orcid="0000-0002-1825-0097", orcid_authenticated=True)


DEFAULT_LIMITS = Limits()
NO_EVIDENCE = Evidence()


def book(limits: Limits = DEFAULT_LIMITS, /, **authors: Identity | None) -> Book:
    records = {a: AuthorRecord(a, identity=i) for a, i in authors.items()}
    return Book(records, {}, Slots({}, limits), clock=CLOCK)


_seq = iter(range(10**6))


def cause() -> str:
    return f"cause-{next(_seq)}"


def req(b: Book, claim: str, author: str = "a1", user: str = "u1", evidence: Evidence = NO_EVIDENCE) -> list[Emit]:
    return b.request(ClaimRequested(claim_id=claim, author_id=author, user_id=user, evidence=evidence), cause(), NOW)


def review(
    b: Book, claim: str, decision: Literal["approve", "reject", "revoke"], author: str = "a1", reason: str = "checked"
) -> list[Emit]:
    return b.review(
        ClaimReviewed(claim_id=claim, author_id=author, reviewer_id="rev", decision=decision, reason=reason),
        cause(),
        NOW,
    )


def types(emits: list[Emit]) -> list[str]:
    return [e.payload.event_type for e in emits]


def event(emit: Emit, kind: type[P]) -> P:
    """The emitted payload, which must be a ``kind``."""
    assert isinstance(emit.payload, kind), emit.payload.event_type
    return emit.payload


def state_of(emit: Emit) -> ClaimState:
    """The claim's state an emitted event carries (every step's events carry one)."""
    state = getattr(emit.payload, "claim", None)
    assert isinstance(state, ClaimState), emit.payload.event_type
    return state


@pytest.mark.parametrize(
    ("email", "domains", "ok"),
    [
        ("x@stanford.edu", ["stanford.edu"], True),
        ("x@cs.stanford.edu", ["stanford.edu"], True),
        ("x@notstanford.edu", ["stanford.edu"], False),
        ("x@stanford.edu.evil.com", ["stanford.edu"], False),
        ("x@STANFORD.EDU", ["stanford.edu"], True),
    ],
)
def test_email_domain_match(email: str, domains: list[str], ok: bool) -> None:
    assert email_domain_matches(email, domains) is ok


def test_automatic_level_needs_verified_facts_that_match_the_record() -> None:
    assert automatic_level(EMAIL_OK, STANFORD) == "L2"
    assert automatic_level(ORCID_OK, STANFORD) == "L2"
    assert automatic_level(Evidence(email="qvl@stanford.edu"), STANFORD) is None  # not verified
    assert automatic_level(Evidence(orcid="0000-0002-1825-0097"), STANFORD) is None  # not authenticated
    assert automatic_level(Evidence(orcid="0000-0001-5109-3700", orcid_authenticated=True), STANFORD) is None
    assert automatic_level(Evidence(statement="it is me"), STANFORD) is None


def test_bad_evidence_is_refused_by_the_contract() -> None:
    with pytest.raises(ValidationError, match="check digit"):
        Evidence(orcid="0000-0002-1825-0098")
    with pytest.raises(ValidationError):
        Evidence(email="not-an-email")
    with pytest.raises(ValidationError):
        Evidence.model_validate({"orcid_access_token": "secret"})


def test_merge_evidence_keeps_earlier_facts_and_flags_follow_their_value() -> None:
    merged = merge_evidence(Evidence(statement="me", email="a@b.org"), EMAIL_OK)
    assert merged.statement == "me" and merged.email == "qvl@cs.stanford.edu" and merged.email_verified


def test_verified_email_at_affiliation_domain_is_approved_at_l2() -> None:
    b = book(a1=STANFORD)
    emits = req(b, "c1", evidence=EMAIL_OK)
    assert types(emits) == ["ClaimSubmitted", "ClaimApproved", "VerificationLevelChanged"]
    approved = event(emits[1], ClaimApproved)
    assert approved.verification_level == "L2" and approved.author_claim.owner_user_id == "u1"
    assert approved.author_claim.revision == 2 and approved.author_claim.since == NOW
    level = event(emits[2], VerificationLevelChanged)
    assert level.previous_level is None and level.verification_level == "L2"
    assert b.slots.acquired == [("approved", "u1", "c1")]


def test_other_evidence_goes_to_review_and_a_reviewer_approves_at_l3() -> None:
    b = book(a1=STANFORD)
    assert types(req(b, "c1", evidence=Evidence(statement="I am him"))) == ["ClaimSubmitted", "ClaimNeedsReview"]
    assert b.claims["c1"].status == "needs_review" and b.slots.holds("open", "u1", "c1")
    emits = review(b, "c1", "approve")
    assert types(emits) == ["ClaimApproved", "VerificationLevelChanged"]
    assert (
        event(emits[0], ClaimApproved).verification_level == "L3" and b.authors["a1"].claim.verification_level == "L3"
    )
    assert not b.slots.holds("open", "u1", "c1") and b.slots.holds("approved", "u1", "c1")


def test_reviewer_confirms_an_l2_claim_to_l3() -> None:
    b = book(a1=STANFORD)
    req(b, "c1", evidence=ORCID_OK)
    emits = review(b, "c1", "approve")
    assert types(emits) == ["ClaimApproved", "VerificationLevelChanged"]
    assert (
        event(emits[1], VerificationLevelChanged).previous_level == "L2"
        and event(emits[1], VerificationLevelChanged).verification_level == "L3"
    )
    assert (
        event(emits[1], VerificationLevelChanged).author_claim.since == NOW
        and event(emits[1], VerificationLevelChanged).author_claim.revision == 3
    )


def test_later_evidence_upgrades_a_claim_under_review() -> None:
    b = book(a1=STANFORD)
    req(b, "c1")
    emits = b.submit_evidence(
        ClaimEvidenceSubmitted(claim_id="c1", author_id="a1", user_id="u1", evidence=EMAIL_OK), cause(), NOW
    )
    assert types(emits) == ["ClaimApproved", "VerificationLevelChanged"]
    assert [h.event for h in b.claims["c1"].history] == ["requested", "evidence_submitted", "evidence_submitted"]


def test_first_valid_claim_wins_and_open_claims_of_the_record_lose() -> None:
    b = book(a1=STANFORD)
    req(b, "c0", user="u0")  # under review
    req(b, "c1", user="u1", evidence=EMAIL_OK)
    emits = req(b, "c2", user="u2", evidence=ORCID_OK)
    assert (
        types(emits) == ["ClaimSubmitted", "ClaimRejected"]
        and event(emits[1], ClaimRejected).reason == "already_claimed"
    )
    assert b.claims["c0"].status == "rejected" and b.claims["c0"].reason == "already_claimed"
    assert b.authors["a1"].claim.claim_id == "c1"
    assert not b.slots.holds("open", "u0", "c0")


def test_a_user_holds_at_most_one_approved_claim() -> None:
    b = book(a1=STANFORD, a2=STANFORD)
    req(b, "c1", author="a1", evidence=EMAIL_OK)
    emits = req(b, "c2", author="a2", evidence=EMAIL_OK)
    assert event(emits[-1], ClaimRejected).reason == "user_already_owns_a_record"
    assert not b.authors["a2"].claim.claimed


def test_the_approved_limit_is_configurable() -> None:
    b = book(Limits(max_approved_claims_per_user=2), a1=STANFORD, a2=STANFORD)
    req(b, "c1", author="a1", evidence=EMAIL_OK)
    assert types(req(b, "c2", author="a2", evidence=EMAIL_OK))[1] == "ClaimApproved"


def test_at_most_three_open_claims_per_user() -> None:
    b = book(**{f"a{i}": STANFORD for i in range(5)})
    for i in range(3):
        req(b, f"c{i}", author=f"a{i}")
    emits = req(b, "c3", author="a3")
    assert event(emits[-1], ClaimRejected).reason == "too_many_open_claims"
    b.withdraw(ClaimWithdrawn(claim_id="c0", author_id="a0", user_id="u1"), cause(), NOW)
    assert types(req(b, "c4", author="a4"))[-1] == "ClaimNeedsReview"


def test_claim_for_an_unknown_author_waits_then_is_decided_when_it_arrives() -> None:
    b = book()
    emits = req(b, "c1", author="new", evidence=EMAIL_OK)
    assert types(emits) == ["ClaimSubmitted"] and event(emits[0], ClaimSubmitted).status == "pending_author"
    emits = b.author_seen("new", STANFORD, cause(), NOW)
    assert types(emits) == ["ClaimApproved", "VerificationLevelChanged"]
    assert b.claims["c1"].status == "approved"


def test_a_waiting_claim_expires_with_unknown_author() -> None:
    b = book()
    req(b, "c1", author="new")
    emits = b.expire("c1", WAIT)
    assert event(emits[0], ClaimRejected).reason == "unknown_author" and b.claims["c1"].status == "rejected"
    deadline = b.claims["c1"].created_at + WAIT  # stamped with the deadline, not the sweep's clock
    assert b.claims["c1"].updated_at == deadline and b.claims["c1"].history[-1].at == deadline
    assert b.expire("c1", WAIT) == []  # a second sweep changes nothing
    assert not b.slots.holds("open", "u1", "c1")


def test_revocation_returns_the_record_to_unclaimed() -> None:
    b = book(a1=STANFORD)
    req(b, "c1", evidence=EMAIL_OK)
    emits = review(b, "c1", "revoke", reason="impostor")
    assert types(emits) == ["ClaimRevoked", "VerificationLevelChanged"]
    assert event(emits[0], ClaimRevoked).reason == "impostor" and not event(emits[0], ClaimRevoked).author_claim.claimed
    assert (
        event(emits[1], VerificationLevelChanged).verification_level is None
        and event(emits[1], VerificationLevelChanged).previous_level == "L2"
    )
    assert b.claims["c1"].status == "revoked" and not b.slots.holds("approved", "u1", "c1")
    assert types(req(b, "c2", user="u2", evidence=ORCID_OK))[1] == "ClaimApproved"  # claimable again
    assert b.authors["a1"].claim.revision == 4


def test_withdrawing_an_approved_claim_unclaims_the_record() -> None:
    b = book(a1=STANFORD)
    req(b, "c1", evidence=EMAIL_OK)
    emits = b.withdraw(ClaimWithdrawn(claim_id="c1", author_id="a1", user_id="u1"), cause(), NOW)
    assert types(emits) == ["ClaimWithdrawn", "VerificationLevelChanged"]
    assert not b.authors["a1"].claim.claimed


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (
            lambda b: b.withdraw(ClaimWithdrawn(claim_id="nope", author_id="a1", user_id="u1"), cause(), NOW),
            "unknown_claim",
        ),
        (
            lambda b: b.withdraw(ClaimWithdrawn(claim_id="c1", author_id="a1", user_id="intruder"), cause(), NOW),
            "not_claimant",
        ),
        (
            lambda b: b.withdraw(ClaimWithdrawn(claim_id="c1", author_id="other", user_id="u1"), cause(), NOW),
            "unknown_claim",
        ),
        (lambda b: review(b, "nope", "approve"), "unknown_claim"),
        (lambda b: review(b, "c1", "reject"), "claim_not_open"),
        (lambda b: review(b, "c2", "revoke"), "claim_not_approved"),
    ],
)
def test_refused_commands_are_events_and_change_nothing(command: Callable[[Book], list[Emit]], reason: str) -> None:
    b = book(a1=STANFORD, other=STANFORD)
    req(b, "c1", evidence=EMAIL_OK)
    req(b, "c2", user="u2")  # rejected already_claimed
    before = (b.authors["a1"].claim, b.claims["c1"].status, list(b.claims["c1"].history))
    emits = command(b)
    assert types(emits) == ["ClaimRejected"] and event(emits[0], ClaimRejected).reason == reason
    assert emits[0].claim_id is None  # nothing stored: the event is re-derived on replay
    assert (b.authors["a1"].claim, b.claims["c1"].status, b.claims["c1"].history) == before


def test_commands_replayed_change_nothing_twice() -> None:
    b = book(a1=STANFORD)
    req(b, "c1")
    assert req(b, "c1", evidence=EMAIL_OK) == []  # same claim id again
    cmd = ClaimReviewed(claim_id="c1", author_id="a1", reviewer_id="rev", decision="approve", reason="ok")
    first = b.review(cmd, "same-cause", NOW)
    assert types(first) == ["ClaimApproved", "VerificationLevelChanged"]
    assert b.review(cmd, "same-cause", NOW) == []  # same event id
    assert b.review(cmd, "another-cause", NOW) == []  # same decision again: already L3
    revision = b.authors["a1"].claim.revision
    revoke = ClaimReviewed(claim_id="c1", author_id="a1", reviewer_id="rev", decision="revoke", reason="x")
    b.review(revoke, "r1", NOW)
    assert b.review(revoke, "r2", NOW) == []
    assert b.authors["a1"].claim.revision == revision + 1


def test_event_ids_are_derived_from_the_cause_and_unique_within_it() -> None:
    b = book(a1=STANFORD)
    req(b, "c0", user="u0")
    emits = req(b, "c1", evidence=EMAIL_OK)
    parts = [e.id_parts for e in emits]
    assert len(set(parts)) == len(parts) == 4  # submitted, approved, level, c0 rejected


def test_slots_reconcile_frees_holds_a_status_no_longer_justifies() -> None:
    b = book(a1=STANFORD)
    b.slots.holders[("approved", "u1")] = ["c1"]  # taken by an attempt that stopped before saving
    req(b, "c1")  # decided needs_review this time
    b.slots.reconcile(b.claims.values())
    assert not b.slots.holds("approved", "u1", "c1") and b.slots.released == [("approved", "u1", "c1")]


def test_heal_frees_a_hold_left_by_a_closed_claim_before_the_users_next_claim_is_decided() -> None:
    b = book(Limits(max_open_claims_per_user=1, max_approved_claims_per_user=1), a1=STANFORD, a2=STANFORD)
    req(b, "c1", user="u1")
    review(b, "c1", "reject")
    b.slots.holders[("open", "u1")] = ["c1"]  # an attempt stopped after the claim, before freeing its slot
    b.heal()
    req(b, "c2", author="a2", user="u1")
    assert b.claims["c2"].status == "needs_review" and b.slots.holds("open", "u1", "c2")


# --- what the events say of each step -------------------------------------------------


def test_every_event_of_a_step_carries_the_claims_state_after_it() -> None:
    b = book(a1=STANFORD)
    first = req(b, "c1", evidence=Evidence(statement="it is me"))
    assert [state_of(e).revision for e in first] == [1, 1]
    assert {state_of(e).status for e in first} == {"needs_review"}
    assert [h.event for h in state_of(first[0]).history] == ["requested"]
    upgrade = b.submit_evidence(
        ClaimEvidenceSubmitted(claim_id="c1", author_id="a1", user_id="u1", evidence=EMAIL_OK), "ev-1", NOW
    )
    approved = event(upgrade[0], ClaimApproved)
    assert approved.claim is not None
    assert approved.claim.revision == 2 and approved.claim.status == "approved" and approved.claim.level == "L2"
    assert [(h.event, h.status) for h in approved.claim.history] == [
        ("evidence_submitted", "needs_review"),
        ("evidence_submitted", "approved"),
    ]
    assert approved.claim.evidence.email == "qvl@cs.stanford.edu" and approved.claim.evidence.statement == "it is me"
    assert b.claims["c1"].revision == 2 and b.claims["c1"].applied[-1] == "ev-1"
    assert b.claims["c1"].author_claim == approved.author_claim


def test_evidence_for_a_claim_waiting_for_its_author_is_an_event() -> None:
    b = book()
    req(b, "c1", author="new")
    emits = b.submit_evidence(
        ClaimEvidenceSubmitted(claim_id="c1", author_id="new", user_id="u1", evidence=EMAIL_OK), "ev-1", NOW
    )
    assert types(emits) == ["ClaimEvidenceAdded"]
    state = state_of(emits[0])
    assert state.status == "pending_author" and state.waiting_since == CLOCK and state.revision == 2
    assert state.evidence.email_verified and [h.event for h in state.history] == ["evidence_submitted"]
    assert emits[0].claim_id == "c1"  # kept in the claim's outbox, like every step's events


def test_claims_that_lose_to_an_approval_take_a_step_with_its_input() -> None:
    b = book(a1=STANFORD)
    req(b, "c0", user="u0")
    emits = b.request(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1", evidence=EMAIL_OK), "win", NOW)
    lost = [e for e in emits if e.payload.event_type == "ClaimRejected"]
    assert [e.claim_id for e in lost] == ["c0"]  # in the loser's own outbox
    assert state_of(lost[0]).revision == 2 and state_of(lost[0]).status == "rejected"
    assert b.claims["c0"].applied[-1] == "win" and b.claims["c0"].author_claim == b.authors["a1"].claim


def test_a_waiting_claim_that_lost_while_its_author_arrived_is_decided_once() -> None:
    b = book()
    req(b, "w1", author="new", user="u1", evidence=EMAIL_OK)
    req(b, "w2", author="new", user="u2", evidence=EMAIL_OK)
    emits = b.author_seen("new", STANFORD, "registered", NOW)
    rejected = [event(e, ClaimRejected) for e in emits if e.payload.event_type == "ClaimRejected"]
    assert [(e.claim_id, e.reason) for e in rejected] == [("w2", "already_claimed")]
    assert [h.event for h in b.claims["w2"].history] == ["requested", "author_arrived"]
    ids = [e.id_parts for e in emits]
    assert len(ids) == len(set(ids))


def test_a_record_is_healed_from_the_claim_state_its_claims_were_written_with() -> None:
    b = book(a1=STANFORD)
    req(b, "c1", evidence=EMAIL_OK)
    written = b.authors["a1"].claim
    # The claim was written, the record was not (an attempt stopped between the two).
    stale = book(a1=STANFORD)
    stale.claims = b.claims
    stale.heal_authors()
    assert stale.authors["a1"].claim == written and stale.dirty_authors == {"a1"}
    stale.dirty_authors.clear()
    stale.heal_authors()  # already current: nothing to write
    assert stale.dirty_authors == set()
