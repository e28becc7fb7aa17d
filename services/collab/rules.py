"""The collaboration rules, as functions of the current state: no broker, no driver.

Each rule is a pure function that says why a command is refused (a reason from the
contract) or ``None``; the HTTP routes call the same functions on what the projection
shows, and the consumer decides with them authoritatively, in partition order.

A ``Book`` holds what one batch needs (the records' owners and openness, the invitations
concerned, the senders' recent declines), applies inputs to it in partition order, and
says which invitations changed and which events to publish (``Emit``). Every decision on
an invitation is one step of it: its ``revision`` grows by one, the input's id joins
``applied``, and the event carries the invitation's state after the step. So
collab.events says everything this module decided, and a rebuild folds it
(``services.collab.rebuild``) instead of deciding again.

The one rule a book cannot decide alone is the sender's limit of pending invitations: a
sender's invitations go to records in other partitions, decided by other consumers. The
caller takes a slot in the store (an atomic conditional write) and tells ``request`` the
outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, TypedDict

from contracts.envelope import EventModel, deterministic_event_id
from contracts.events.collab import (
    ClosureReason,
    CollabCommandName,
    CommandRejectionReason,
    InvitationAccepted,
    InvitationAnswerRequested,
    InvitationClosed,
    InvitationCommandRejected,
    InvitationDeclined,
    InvitationRejected,
    InvitationRejectionReason,
    InvitationRequested,
    InvitationSent,
    InvitationState,
    InvitationWithdrawn,
    InvitationWithdrawRequested,
    MessagePosted,
    MessagePostRequested,
    ThreadMessage,
)
from contracts.events.common import is_newer
from contracts.events.notifications import NotificationCreated, NotificationKind, notification_id

PENDING: Final = "pending"
ACCEPTED: Final = "accepted"
# A live invitation: it keeps the sender from inviting the same record again, and it ends
# (closed) when the record loses the owner who received it.
ACTIVE: frozenset[str] = frozenset({PENDING, ACCEPTED})
EXCERPT_CHARS = 140


@dataclass(frozen=True, slots=True)
class Limits:
    max_open_per_sender: int = 5
    decline_cooldown: timedelta = timedelta(days=30)
    max_message_chars: int = 2000


# --- what the service knows of a record (folds of claims.events and profile.events) ---------


@dataclass(frozen=True, slots=True)
class Owner:
    """The record's claim state, from claims.events (newest revision kept)."""

    claimed: bool
    owner_user_id: str | None
    revision: int


@dataclass(frozen=True, slots=True)
class Profile:
    """The record's name and openness, from profile.events (newest revision kept)."""

    display_name: str
    open_to_collaborate: bool
    revision: int


@dataclass(slots=True)
class AuthorFacts:
    author_id: str
    owner: Owner | None = None
    profile: Profile | None = None

    @property
    def owner_id(self) -> str | None:
        """The user who owns the record now (None: unclaimed, or not known)."""
        return self.owner.owner_user_id if self.owner is not None and self.owner.claimed else None

    @property
    def open_to_collaborate(self) -> bool:
        return self.profile is not None and self.profile.open_to_collaborate

    @property
    def name(self) -> str:
        return self.profile.display_name if self.profile is not None else self.author_id


@dataclass(slots=True)
class Invitation:
    state: InvitationState
    applied: list[str] = field(default_factory=list)  # ids of the inputs of its steps, in order


# --- the rules ----------------------------------------------------------------------------


def message_refusal(text: str, limits: Limits) -> InvitationRejectionReason | None:
    """Messages (an invitation's, or one posted to its thread) are at most the configured length."""
    return "message_too_long" if len(text) > limits.max_message_chars else None


def declined_until(declined_at: datetime | None, limits: Limits) -> datetime | None:
    """Until when the owner's decline keeps the sender from inviting them again."""
    return None if declined_at is None else declined_at + limits.decline_cooldown


def invitation_refusal(
    sender: str,
    author: AuthorFacts | None,
    *,
    message: str,
    active_pair: bool,
    declined_at: datetime | None,
    now: datetime,
    limits: Limits,
) -> InvitationRejectionReason | None:
    """Every rule of a new invitation but the sender's limit (see ``slot_refusal``):
    a message within the limit; a claimed record, not the sender's own, open to
    collaborate; no live invitation from the sender to it yet; no decline of the sender by
    its owner within the cooldown (``declined_at``: the owner's latest decline of them)."""
    if message_refusal(message, limits):
        return "message_too_long"
    owner = author.owner_id if author is not None else None
    if author is None or owner is None:
        return "not_claimed"
    if owner == sender:
        return "self_invitation"
    if not author.open_to_collaborate:
        return "not_open_to_collaborate"
    if active_pair:
        return "already_invited"
    until = declined_until(declined_at, limits)
    if until is not None and now < until:
        return "declined_recently"
    return None


def slot_refusal(pending: int, limits: Limits) -> InvitationRejectionReason | None:
    """The sender's limit, on a count of their pending invitations (what HTTP can see; the
    consumer takes a slot atomically instead)."""
    return "too_many_open_invitations" if pending >= limits.max_open_per_sender else None


def answer_refusal(invitation: InvitationState, user: str) -> CommandRejectionReason | None:
    """Only the owner who received a pending invitation accepts or declines it."""
    if user != invitation.owner_user_id:
        return "not_owner"
    if invitation.status != PENDING:
        return "not_pending"
    return None


def withdraw_refusal(invitation: InvitationState, user: str) -> CommandRejectionReason | None:
    """Only the sender withdraws, and only while it is pending."""
    if user != invitation.sender_id:
        return "not_sender"
    if invitation.status != PENDING:
        return "not_pending"
    return None


def parties(invitation: InvitationState) -> frozenset[str]:
    """Who reads the invitation and its thread: its sender, and the owner who received it
    (a refused invitation never reached anyone)."""
    if invitation.owner_user_id is None or invitation.status == "rejected":
        return frozenset({invitation.sender_id})
    return frozenset({invitation.sender_id, invitation.owner_user_id})


def post_refusal(invitation: InvitationState, user: str, text: str, limits: Limits) -> CommandRejectionReason | None:
    """Only the two parties post, once the invitation is accepted, within the length."""
    if user not in parties(invitation):
        return "not_party"
    if invitation.status != ACCEPTED:
        return "not_accepted"
    if message_refusal(text, limits):
        return "message_too_long"
    return None


def closure(invitation: InvitationState, author: AuthorFacts) -> ClosureReason | None:
    """A live invitation ends when the record no longer has the owner who received it."""
    if invitation.status not in ACTIVE or author.owner_id == invitation.owner_user_id:
        return None
    return "claim_revoked" if author.owner_id is None else "owner_changed"


def refusal_detail(
    reason: InvitationRejectionReason | CommandRejectionReason,
    limits: Limits,
    *,
    declined_at: datetime | None = None,
    status: str | None = None,
) -> str:
    """What the sender (or whoever acted) reads about a refusal."""
    if reason == "declined_recently" and declined_at is not None:
        until = declined_until(declined_at, limits)
        assert until is not None
        return (
            f"the researcher declined your invitation on {declined_at:%Y-%m-%d}; "
            f"you can invite them again from {until:%Y-%m-%d %H:%M} UTC"
        )
    if reason in ("not_pending", "not_accepted") and status is not None:
        return f"the invitation is {status}"
    return {
        "self_invitation": "you own this record",
        "not_claimed": "the record is not claimed: its researcher has to claim it first",
        "not_open_to_collaborate": "the researcher does not take invitations at the moment",
        "already_invited": "you have an invitation to this researcher already",
        "too_many_open_invitations": (
            f"you have {limits.max_open_per_sender} invitations waiting for an answer, the most allowed"
        ),
        "declined_recently": "the researcher declined your invitation recently",
        "message_too_long": f"messages are at most {limits.max_message_chars} characters",
        "invitation_exists": "another request has this invitation id",
        "unknown_invitation": "no such invitation",
        "not_owner": "only the researcher who received the invitation answers it",
        "not_sender": "only its sender withdraws an invitation",
        "not_party": "only the sender and the researcher take part in the conversation",
        "not_pending": "the invitation is not waiting for an answer",
        "not_accepted": "the invitation has not been accepted",
    }[reason]


def closure_detail(reason: ClosureReason) -> str:
    if reason == "claim_revoked":
        return "the record's claim was revoked"
    return "the record has a new owner"


# --- one batch --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cause:
    """The input a decision comes from: its event id and when it happened."""

    event_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Emit:
    """An event to publish, its id derived from its cause, and the invitation whose outbox
    keeps it (None: nothing was stored; the id alone makes a redelivery publish the same)."""

    payload: EventModel
    event_id: uuid.UUID
    invitation_id: str | None


class Book:
    def __init__(
        self,
        authors: dict[str, AuthorFacts],
        invitations: dict[str, Invitation],
        declines: dict[tuple[str, str], datetime],
        limits: Limits,
    ) -> None:
        self.authors = authors
        # The invitations named by the batch, and every live one of the records concerned.
        self.invitations = invitations
        # (sender, owner) -> when that owner last declined that sender.
        self.declines = declines
        self.limits = limits
        self.dirty_owners: set[str] = set()
        self.dirty_profiles: set[str] = set()
        self.dirty: set[str] = set()  # invitations changed by this batch
        self.created: set[str] = set()  # invitations this batch created
        self.posted: dict[str, list[ThreadMessage]] = {}  # messages this batch added, per invitation

    def author(self, author_id: str) -> AuthorFacts:
        return self.authors.setdefault(author_id, AuthorFacts(author_id))

    # --- facts ------------------------------------------------------------------------

    def profile_seen(self, author_id: str, profile: Profile) -> None:
        author = self.author(author_id)
        if is_newer(profile.revision, author.profile.revision if author.profile else None):
            author.profile = profile
            self.dirty_profiles.add(author_id)

    def claim_seen(self, author_id: str, owner: Owner, cause: Cause) -> list[Emit]:
        """Keep the newest claim state, then close the record's live invitations whose
        owner it no longer is (whether or not this event was the newest: the invitations
        are compared with the state held, so a redelivery closes what a crash left open)."""
        author = self.author(author_id)
        if is_newer(owner.revision, author.owner.revision if author.owner else None):
            author.owner = owner
            self.dirty_owners.add(author_id)
        out: list[Emit] = []
        live = sorted(
            (i for i in self.invitations.values() if i.state.author_id == author_id and i.state.status in ACTIVE),
            key=lambda i: (i.state.created_at, i.state.invitation_id),
        )
        for invitation in live:
            reason = closure(invitation.state, author)
            if reason is None:
                continue
            state = self._step(
                invitation, cause, status="closed", reason=reason, detail=closure_detail(reason), updated_at=cause.at
            )
            out.append(self._emit(InvitationClosed(**_common(state), reason=reason), cause, state.invitation_id))
        return out

    # --- commands ---------------------------------------------------------------------

    def already_applied(self, invitation_id: str, cause: Cause) -> bool:
        invitation = self.invitations.get(invitation_id)
        return invitation is not None and cause.event_id in invitation.applied

    def request_refusal(self, cmd: InvitationRequested, now: datetime) -> InvitationRejectionReason | None:
        """Every rule of the request but the sender's limit, on the book's state."""
        author = self.authors.get(cmd.author_id)
        owner = author.owner_id if author is not None else None
        return invitation_refusal(
            cmd.user_id,
            author,
            message=cmd.message,
            active_pair=any(
                i.state.author_id == cmd.author_id and i.state.sender_id == cmd.user_id and i.state.status in ACTIVE
                for i in self.invitations.values()
            ),
            declined_at=self.declines.get((cmd.user_id, owner)) if owner is not None else None,
            now=now,
            limits=self.limits,
        )

    def request(self, cmd: InvitationRequested, cause: Cause, refusal: InvitationRejectionReason | None) -> list[Emit]:
        """A new invitation, pending (``refusal`` None: every rule passed and the sender's
        slot is taken) or rejected with the reason the sender reads."""
        existing = self.invitations.get(cmd.invitation_id)
        if existing is not None:
            if cause.event_id in existing.applied:
                return []
            return [
                self._command_refusal(
                    "invite", cmd.invitation_id, cmd.author_id, cmd.user_id, "invitation_exists", cause
                )
            ]
        author = self.author(cmd.author_id)
        owner = author.owner_id
        detail = None
        if refusal is not None:
            declined_at = self.declines.get((cmd.user_id, owner)) if owner is not None else None
            detail = refusal_detail(refusal, self.limits, declined_at=declined_at)
        state = InvitationState(
            invitation_id=cmd.invitation_id,
            author_id=cmd.author_id,
            sender_id=cmd.user_id,
            owner_user_id=owner if refusal is None else None,
            status=PENDING if refusal is None else "rejected",
            reason=refusal,
            detail=detail,
            message=cmd.message,
            created_at=cause.at,
            updated_at=cause.at,
            revision=1,
        )
        self.invitations[cmd.invitation_id] = Invitation(state, [cause.event_id])
        self.dirty.add(cmd.invitation_id)
        self.created.add(cmd.invitation_id)
        if refusal is not None:
            return [self._emit(InvitationRejected(**_common(state), reason=refusal), cause, cmd.invitation_id)]
        sent = self._emit(InvitationSent(**_common(state)), cause, cmd.invitation_id)
        assert owner is not None
        title = f'{cmd.user_id} invites you to collaborate: "{_excerpt(cmd.message)}"'
        return [sent, self._notify(sent, owner, "invitation_received", title, cause)]

    def answer(self, cmd: InvitationAnswerRequested, cause: Cause) -> list[Emit]:
        invitation = self._named(cmd.invitation_id, cmd.author_id)
        if invitation is None:
            return [self._unknown("answer", cmd.invitation_id, cmd.author_id, cmd.user_id, cause)]
        if cause.event_id in invitation.applied:
            return []
        refusal = answer_refusal(invitation.state, cmd.user_id)
        if refusal is not None:
            return [self._refused_step("answer", invitation, cmd.user_id, refusal, cause)]
        state = self._step(
            invitation,
            cause,
            status="accepted" if cmd.answer == "accept" else "declined",
            answered_at=cause.at,
            updated_at=cause.at,
        )
        if cmd.answer == "accept":
            event: EventModel = InvitationAccepted(**_common(state))
            title = f"{self.author(state.author_id).name} accepted your invitation to collaborate"
        else:
            event = InvitationDeclined(**_common(state))
            title = f"{self.author(state.author_id).name} declined your invitation to collaborate"
            assert state.owner_user_id is not None
            key = (state.sender_id, state.owner_user_id)
            if key not in self.declines or self.declines[key] < cause.at:
                self.declines[key] = cause.at
        answered = self._emit(event, cause, state.invitation_id)
        return [answered, self._notify(answered, state.sender_id, "invitation_answered", title, cause)]

    def withdraw(self, cmd: InvitationWithdrawRequested, cause: Cause) -> list[Emit]:
        invitation = self._named(cmd.invitation_id, cmd.author_id)
        if invitation is None:
            return [self._unknown("withdraw", cmd.invitation_id, cmd.author_id, cmd.user_id, cause)]
        if cause.event_id in invitation.applied:
            return []
        refusal = withdraw_refusal(invitation.state, cmd.user_id)
        if refusal is not None:
            return [self._refused_step("withdraw", invitation, cmd.user_id, refusal, cause)]
        state = self._step(invitation, cause, status="withdrawn", updated_at=cause.at)
        return [self._emit(InvitationWithdrawn(**_common(state)), cause, state.invitation_id)]

    def post(self, cmd: MessagePostRequested, cause: Cause) -> list[Emit]:
        invitation = self._named(cmd.invitation_id, cmd.author_id)
        if invitation is None:
            return [self._unknown("message", cmd.invitation_id, cmd.author_id, cmd.user_id, cause)]
        if cause.event_id in invitation.applied:
            return []
        refusal = post_refusal(invitation.state, cmd.user_id, cmd.text, self.limits)
        if refusal is not None:
            return [self._refused_step("message", invitation, cmd.user_id, refusal, cause)]
        message = ThreadMessage(message_id=cmd.message_id, user_id=cmd.user_id, text=cmd.text, posted_at=cause.at)
        state = self._step(invitation, cause, message_count=invitation.state.message_count + 1, updated_at=cause.at)
        self.posted.setdefault(state.invitation_id, []).append(message)
        return [self._emit(MessagePosted(**_common(state), message=message), cause, state.invitation_id)]

    # --- bookkeeping ----------------------------------------------------------------------

    def _named(self, invitation_id: str, author_id: str) -> Invitation | None:
        invitation = self.invitations.get(invitation_id)
        return invitation if invitation is not None and invitation.state.author_id == author_id else None

    def _step(self, invitation: Invitation, cause: Cause, **changes: object) -> InvitationState:
        """One decision on an invitation: its state after it, one revision on."""
        state = invitation.state.model_copy(update={**changes, "revision": invitation.state.revision + 1})
        invitation.state = state
        invitation.applied.append(cause.event_id)
        self.dirty.add(state.invitation_id)
        return state

    def _refused_step(
        self,
        command: CollabCommandName,
        invitation: Invitation,
        user: str,
        reason: CommandRejectionReason,
        cause: Cause,
    ) -> Emit:
        """A command on an invitation refused: a step too (so a redelivery finds it applied
        and cannot decide otherwise later), that changes nothing but the revision."""
        state = self._step(invitation, cause)
        payload = InvitationCommandRejected(
            invitation_id=state.invitation_id,
            author_id=state.author_id,
            user_id=user,
            command=command,
            reason=reason,
            detail=refusal_detail(reason, self.limits, status=state.status),
            invitation=state,
        )
        return self._emit(payload, cause, state.invitation_id)

    def _unknown(self, command: CollabCommandName, invitation_id: str, author_id: str, user: str, cause: Cause) -> Emit:
        return self._command_refusal(command, invitation_id, author_id, user, "unknown_invitation", cause)

    def _command_refusal(
        self,
        command: CollabCommandName,
        invitation_id: str,
        author_id: str,
        user: str,
        reason: CommandRejectionReason,
        cause: Cause,
    ) -> Emit:
        """A refusal that touches no invitation: nothing stored, published as it is."""
        payload = InvitationCommandRejected(
            invitation_id=invitation_id,
            author_id=author_id,
            user_id=user,
            command=command,
            reason=reason,
            detail=refusal_detail(reason, self.limits),
        )
        return Emit(payload, deterministic_event_id(cause.event_id, payload.event_type, invitation_id), None)

    @staticmethod
    def _emit(payload: EventModel, cause: Cause, invitation_id: str) -> Emit:
        return Emit(payload, deterministic_event_id(cause.event_id, payload.event_type, invitation_id), invitation_id)

    @staticmethod
    def _notify(source: Emit, user: str, kind: NotificationKind, title: str, cause: Cause) -> Emit:
        """The notification of one party, in the same invitation's outbox as its source."""
        assert source.invitation_id is not None
        payload = NotificationCreated(
            notification_id=notification_id(source.event_id, user),
            user_id=user,
            author_id=source.payload.key(),
            kind=kind,
            source_event_id=source.event_id,
            title=title[:600],
            created_at=cause.at,
        )
        return Emit(payload, deterministic_event_id(source.event_id, payload.event_type, user), source.invitation_id)


class _Common(TypedDict):
    invitation_id: str
    author_id: str
    invitation: InvitationState


def _common(state: InvitationState) -> _Common:
    return {"invitation_id": state.invitation_id, "author_id": state.author_id, "invitation": state}


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"
