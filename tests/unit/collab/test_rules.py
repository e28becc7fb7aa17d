"""The collaboration rules, each on its own, and a batch's book deciding in partition order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contracts.envelope import deterministic_event_id
from contracts.events.collab import (
    InvitationAccepted,
    InvitationAnswerRequested,
    InvitationClosed,
    InvitationCommandRejected,
    InvitationDeclined,
    InvitationRejected,
    InvitationRequested,
    InvitationSent,
    InvitationState,
    InvitationWithdrawn,
    InvitationWithdrawRequested,
    MessagePosted,
    MessagePostRequested,
)
from contracts.events.notifications import NotificationCreated, notification_id
from services.collab.rules import (
    AuthorFacts,
    Book,
    Cause,
    Emit,
    Invitation,
    Limits,
    Owner,
    Profile,
    answer_refusal,
    closure,
    invitation_refusal,
    message_refusal,
    parties,
    post_refusal,
    refusal_detail,
    slot_refusal,
    withdraw_refusal,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMITS = Limits()
OWNER, SENDER, OTHER = "u-owner", "u-sender", "u-other"


def facts(owner: str | None = OWNER, *, open_: bool = True, author: str = "a1") -> AuthorFacts:
    return AuthorFacts(
        author,
        Owner(owner is not None, owner, 3),
        Profile("Quoc V. Le", open_, 7),
    )


def state(status: str = "pending", *, owner: str | None = OWNER, sender: str = SENDER, **kw: object) -> InvitationState:
    values: dict[str, object] = dict(
        invitation_id="inv-1",
        author_id="a1",
        sender_id=sender,
        owner_user_id=owner,
        status=status,
        message="Shall we write about sequence models?",
        created_at=T0,
        updated_at=T0,
        revision=1,
    )
    values.update(kw)
    return InvitationState.model_validate(values)


def refusal(
    *,
    sender: str = SENDER,
    author: AuthorFacts | None = None,
    no_author: bool = False,
    message: str = "hello",
    active_pair: bool = False,
    declined_at: datetime | None = None,
) -> str | None:
    return invitation_refusal(
        sender,
        None if no_author else (author or facts()),
        message=message,
        active_pair=active_pair,
        declined_at=declined_at,
        now=T0,
        limits=LIMITS,
    )


# --- the rules, one by one ------------------------------------------------------------------


def test_messages_are_at_most_2000_characters() -> None:
    assert message_refusal("x" * 2000, LIMITS) is None
    assert message_refusal("x" * 2001, LIMITS) == "message_too_long"
    assert refusal(message="x" * 2001) == "message_too_long"


def test_an_invitation_goes_to_a_claimed_record_open_to_collaborate_and_not_ones_own() -> None:
    assert refusal() is None
    assert refusal(no_author=True) == "not_claimed"
    assert refusal(author=facts(owner=None)) == "not_claimed"
    assert refusal(author=AuthorFacts("a1", None, Profile("Q", True, 1))) == "not_claimed"
    assert refusal(sender=OWNER) == "self_invitation"
    assert refusal(author=facts(open_=False)) == "not_open_to_collaborate"
    assert refusal(author=AuthorFacts("a1", Owner(True, OWNER, 2), None)) == "not_open_to_collaborate"


def test_one_live_invitation_per_sender_and_record() -> None:
    assert refusal(active_pair=True) == "already_invited"


def test_no_new_invitation_for_30_days_after_the_owner_declined_the_sender() -> None:
    declined = T0 - timedelta(days=29, hours=23)
    assert refusal(declined_at=declined) == "declined_recently"
    assert refusal(declined_at=T0 - timedelta(days=30)) is None
    assert refusal(declined_at=T0 - timedelta(days=31)) is None
    assert "again from 2026-03-30 12:00 UTC" in refusal_detail(
        "declined_recently", LIMITS, declined_at=T0 - timedelta(days=1)
    )


def test_at_most_five_pending_invitations_per_sender() -> None:
    assert slot_refusal(4, LIMITS) is None
    assert slot_refusal(5, LIMITS) == "too_many_open_invitations"
    assert slot_refusal(2, Limits(max_open_per_sender=2)) == "too_many_open_invitations"


def test_only_the_owner_who_received_it_answers_a_pending_invitation() -> None:
    assert answer_refusal(state(), OWNER) is None
    assert answer_refusal(state(), SENDER) == "not_owner"
    assert answer_refusal(state(), OTHER) == "not_owner"
    for status in ("accepted", "declined", "withdrawn", "closed"):
        assert answer_refusal(state(status), OWNER) == "not_pending"


def test_only_the_sender_withdraws_a_pending_invitation() -> None:
    assert withdraw_refusal(state(), SENDER) is None
    assert withdraw_refusal(state(), OWNER) == "not_sender"
    assert withdraw_refusal(state("accepted"), SENDER) == "not_pending"


def test_only_the_two_parties_read_and_post_once_accepted() -> None:
    accepted = state("accepted")
    assert parties(accepted) == {SENDER, OWNER}
    assert parties(state("rejected", owner=None)) == {SENDER}
    assert post_refusal(accepted, SENDER, "hi", LIMITS) is None
    assert post_refusal(accepted, OWNER, "hi", LIMITS) is None
    assert post_refusal(accepted, OTHER, "hi", LIMITS) == "not_party"
    assert post_refusal(state(), SENDER, "hi", LIMITS) == "not_accepted"
    assert post_refusal(state("closed"), OWNER, "hi", LIMITS) == "not_accepted"
    assert post_refusal(accepted, OWNER, "x" * 2001, LIMITS) == "message_too_long"


def test_a_live_invitation_closes_when_the_record_loses_its_owner() -> None:
    assert closure(state(), facts()) is None
    assert closure(state(), facts(owner=None)) == "claim_revoked"
    assert closure(state("accepted"), facts(owner="u-new")) == "owner_changed"
    assert closure(state("declined"), facts(owner=None)) is None


# --- a book -----------------------------------------------------------------------------------


def cause(n: int, days: float = 0) -> Cause:
    return Cause(str(uuid.UUID(int=n)), T0 + timedelta(days=days))


def book(*invitations: InvitationState, declines: dict | None = None, author: AuthorFacts | None = None) -> Book:
    return Book(
        {"a1": author or facts()},
        {s.invitation_id: Invitation(s, [str(uuid.UUID(int=900 + i))]) for i, s in enumerate(invitations)},
        declines or {},
        LIMITS,
    )


def reason_of(emit: Emit) -> str:
    assert isinstance(emit.payload, InvitationCommandRejected)
    return emit.payload.reason


def request(invitation_id: str = "inv-1", sender: str = SENDER, message: str = "Shall we?") -> InvitationRequested:
    return InvitationRequested(invitation_id=invitation_id, author_id="a1", user_id=sender, message=message)


def test_a_request_that_passes_is_sent_and_notifies_the_owner_with_deterministic_ids() -> None:
    b = book()
    c = cause(1)
    assert b.request_refusal(request(), c.at) is None
    sent, note = b.request(request(), c, None)
    assert isinstance(sent.payload, InvitationSent) and sent.invitation_id == "inv-1"
    assert sent.event_id == deterministic_event_id(c.event_id, "InvitationSent", "inv-1")
    s = sent.payload.invitation
    assert (s.status, s.owner_user_id, s.sender_id, s.revision, s.created_at) == ("pending", OWNER, SENDER, 1, c.at)
    assert isinstance(note.payload, NotificationCreated) and note.invitation_id == "inv-1"
    assert note.payload.user_id == OWNER and note.payload.kind == "invitation_received"
    assert note.payload.notification_id == notification_id(sent.event_id, OWNER)
    assert note.payload.source_event_id == sent.event_id and SENDER in note.payload.title
    assert b.invitations["inv-1"].applied == [c.event_id] and b.dirty == {"inv-1"} == b.created
    # The same command again (a redelivery): nothing new.
    assert b.request(request(), c, None) == []
    # Another request with the same id: refused, and nothing touched.
    (clash,) = b.request(request(sender=OTHER), cause(2), None)
    assert isinstance(clash.payload, InvitationCommandRejected) and clash.invitation_id is None
    assert clash.payload.reason == "invitation_exists" and clash.payload.invitation is None


def test_a_refused_request_is_an_invitation_the_sender_reads_the_reason_of() -> None:
    b = book(author=facts(open_=False))
    c = cause(1)
    reason = b.request_refusal(request(), c.at)
    assert reason == "not_open_to_collaborate"
    (rejected,) = b.request(request(), c, reason)
    assert isinstance(rejected.payload, InvitationRejected) and rejected.payload.reason == reason
    s = rejected.payload.invitation
    assert (s.status, s.reason, s.owner_user_id) == ("rejected", reason, None)
    assert s.detail == "the researcher does not take invitations at the moment"
    # The sender's limit, decided by the store, comes in as a refusal too.
    (limited,) = book().request(request("inv-2"), cause(2), "too_many_open_invitations")
    assert isinstance(limited.payload, InvitationRejected)
    assert limited.payload.invitation.reason == "too_many_open_invitations"


def test_a_second_request_to_the_same_record_waits_for_the_first_to_end() -> None:
    b = book()
    b.request(request("inv-1"), cause(1), None)
    assert b.request_refusal(request("inv-2"), T0) == "already_invited"
    assert b.request_refusal(request("inv-2", sender=OTHER), T0) is None
    b.withdraw(InvitationWithdrawRequested(invitation_id="inv-1", author_id="a1", user_id=SENDER), cause(2))
    assert b.request_refusal(request("inv-2"), T0) is None


def test_accepting_notifies_the_sender_and_opens_the_thread() -> None:
    b = book(state())
    accept = InvitationAnswerRequested(invitation_id="inv-1", author_id="a1", user_id=OWNER, answer="accept")
    accepted, note = b.answer(accept, cause(5, days=1))
    assert isinstance(accepted.payload, InvitationAccepted)
    s = accepted.payload.invitation
    assert (s.status, s.revision, s.answered_at) == ("accepted", 2, T0 + timedelta(days=1))
    assert isinstance(note.payload, NotificationCreated) and note.payload.user_id == SENDER
    assert note.payload.kind == "invitation_answered" and note.payload.title.startswith("Quoc V. Le accepted")
    post = MessagePostRequested(invitation_id="inv-1", author_id="a1", user_id=SENDER, message_id="m1", text="Hi!")
    (posted,) = b.post(post, cause(6))
    assert isinstance(posted.payload, MessagePosted)
    assert posted.payload.invitation.message_count == 1 and posted.payload.invitation.revision == 3
    assert posted.payload.message.text == "Hi!" and b.posted["inv-1"] == [posted.payload.message]
    assert b.post(post, cause(6)) == []  # redelivered: posted once


def test_a_decline_keeps_the_sender_from_inviting_that_owner_again_for_30_days() -> None:
    b = book(state())
    decline = InvitationAnswerRequested(invitation_id="inv-1", author_id="a1", user_id=OWNER, answer="decline")
    declined, note = b.answer(decline, cause(5))
    assert isinstance(declined.payload, InvitationDeclined)
    assert isinstance(note.payload, NotificationCreated) and "declined" in note.payload.title
    assert b.declines == {(SENDER, OWNER): T0}
    assert b.request_refusal(request("inv-2"), T0 + timedelta(days=29)) == "declined_recently"
    assert b.request_refusal(request("inv-2"), T0 + timedelta(days=30)) is None


def test_commands_refused_on_an_invitation_are_steps_that_change_nothing_else() -> None:
    b = book(state())
    post = MessagePostRequested(invitation_id="inv-1", author_id="a1", user_id=SENDER, message_id="m1", text="Hi")
    (refused,) = b.post(post, cause(3))
    assert isinstance(refused.payload, InvitationCommandRejected)
    assert (refused.payload.command, refused.payload.reason) == ("message", "not_accepted")
    assert refused.payload.invitation is not None and refused.payload.invitation.revision == 2
    assert refused.payload.invitation.status == "pending" and refused.invitation_id == "inv-1"
    assert b.invitations["inv-1"].applied[-1] == cause(3).event_id
    stranger = InvitationAnswerRequested(invitation_id="inv-1", author_id="a1", user_id=OTHER, answer="accept")
    (not_owner,) = b.answer(stranger, cause(4))
    assert reason_of(not_owner) == "not_owner"
    (unknown,) = b.withdraw(InvitationWithdrawRequested(invitation_id="nope", author_id="a1", user_id=SENDER), cause(5))
    assert reason_of(unknown) == "unknown_invitation" and unknown.invitation_id is None
    # An invitation named with another record is unknown there.
    elsewhere = InvitationWithdrawRequested(invitation_id="inv-1", author_id="a2", user_id=SENDER)
    assert reason_of(b.withdraw(elsewhere, cause(6))[0]) == "unknown_invitation"
    (withdrawn,) = b.withdraw(
        InvitationWithdrawRequested(invitation_id="inv-1", author_id="a1", user_id=SENDER), cause(7)
    )
    assert isinstance(withdrawn.payload, InvitationWithdrawn) and withdrawn.payload.invitation.revision == 4


@pytest.mark.parametrize(("new_owner", "reason"), [(None, "claim_revoked"), ("u-new", "owner_changed")])
def test_a_claim_revoked_or_passed_on_closes_the_records_live_invitations(new_owner: str | None, reason: str) -> None:
    b = book(
        state(invitation_id="inv-1"),
        state("accepted", invitation_id="inv-2", sender=OTHER),
        state("declined", invitation_id="inv-3", sender="u-third"),
    )
    c = cause(8)
    closed = b.claim_seen("a1", Owner(new_owner is not None, new_owner, 4), c)
    assert [e.invitation_id for e in closed] == ["inv-1", "inv-2"]
    for e in closed:
        assert isinstance(e.payload, InvitationClosed) and e.payload.reason == reason
        assert e.payload.invitation.status == "closed" and e.payload.invitation.reason == reason
        assert e.event_id == deterministic_event_id(c.event_id, "InvitationClosed", e.invitation_id)
    assert b.dirty_owners == {"a1"}
    # An older claim event read late changes nothing, and closes nothing more.
    assert b.claim_seen("a1", Owner(True, OWNER, 2), cause(9)) == []
    assert b.authors["a1"].owner == Owner(new_owner is not None, new_owner, 4)


def test_a_claim_event_that_keeps_the_owner_closes_nothing_and_folds_only_newer_states() -> None:
    b = book(state())
    assert b.claim_seen("a1", Owner(True, OWNER, 9), cause(1)) == [] and b.dirty_owners == {"a1"}
    b.profile_seen("a1", Profile("Quoc V. Le", False, 6))
    assert b.authors["a1"].open_to_collaborate and not b.dirty_profiles
    b.profile_seen("a1", Profile("Quoc V. Le", False, 8))
    assert not b.authors["a1"].open_to_collaborate and b.dirty_profiles == {"a1"}
