"""``webapp.collab`` (commands) and ``collab.events`` (what the collab service decided).

An invitation is a conversation a signed-in user (the sender) opens with the researcher who
claimed an author record (the owner). Every message on both topics is keyed by the
record's ``author_id``, so one invitation's commands and events keep their order.

Every event on ``collab.events`` carries the invitation's whole state after it
(``InvitationState``): consumers replace, never add. A thread message is the one thing
an event adds (``MessagePosted.message``): the state says how many messages the thread
holds after it (``message_count``), so a reader that holds that many already has it.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import EventModel
from contracts.events.common import Frozen, Id
from contracts.topics import Topic

# What the topic carries at most in one text. The service's rule is shorter (2,000
# characters, a setting) and a longer text is refused with ``message_too_long``: a
# business refusal the sender reads, not a record for the dead-letter topic.
TEXT_MAX_CHARS = 20_000

InvitationStatus = Literal["pending", "accepted", "declined", "withdrawn", "closed", "rejected"]
InvitationRejectionReason = Literal[
    "self_invitation",  # the sender owns the record
    "not_claimed",  # the record is not claimed (or not known)
    "not_open_to_collaborate",  # its owner does not take invitations
    "already_invited",  # the sender has a pending or accepted invitation to the record
    "too_many_open_invitations",  # the sender has as many pending invitations as allowed
    "declined_recently",  # the owner declined this sender less than the cooldown ago
    "message_too_long",
]
CommandRejectionReason = Literal[
    "invitation_exists",  # an invitation request whose id another request took
    "unknown_invitation",
    "not_owner",  # only the owner who received the invitation answers it
    "not_sender",  # only its sender withdraws it
    "not_party",  # only the sender and the owner post to the thread
    "not_pending",  # answered, withdrawn or closed already
    "not_accepted",  # a thread opens once the invitation is accepted
    "message_too_long",
]
ClosureReason = Literal["claim_revoked", "owner_changed"]
Answer = Literal["accept", "decline"]
CollabCommandName = Literal["invite", "answer", "withdraw", "message"]


# --- commands on webapp.collab --------------------------------------------------------------


class _CollabCommand(EventModel):
    topic: ClassVar[str] = Topic.WEBAPP_COLLAB

    invitation_id: Id
    author_id: Id
    user_id: Id  # who acts: the web app's signed-in user


class InvitationRequested(_CollabCommand):
    """The user (the sender) invites the owner of ``author_id`` to collaborate."""

    event_type: ClassVar[str] = "InvitationRequested"
    message: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)


class InvitationAnswerRequested(_CollabCommand):
    """The owner accepts or declines an invitation they received."""

    event_type: ClassVar[str] = "InvitationAnswerRequested"
    answer: Answer


class InvitationWithdrawRequested(_CollabCommand):
    """The sender takes back an invitation not answered yet."""

    event_type: ClassVar[str] = "InvitationWithdrawRequested"


class MessagePostRequested(_CollabCommand):
    """A party of an accepted invitation posts to its thread."""

    event_type: ClassVar[str] = "MessagePostRequested"
    message_id: Id
    text: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)


# --- events on collab.events ----------------------------------------------------------------


class InvitationState(Frozen):
    """An invitation after an event: consumers replace, never add."""

    invitation_id: Id
    author_id: Id
    sender_id: Id
    # Who received it: the record's owner when it was sent (None: refused before that).
    owner_user_id: Id | None = None
    status: InvitationStatus
    # Why it was refused (status rejected) or closed (status closed); None otherwise.
    reason: InvitationRejectionReason | ClosureReason | None = None
    detail: str | None = Field(default=None, max_length=1000)
    message: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)
    created_at: datetime
    updated_at: datetime
    answered_at: datetime | None = None  # accepted or declined
    message_count: int = Field(default=0, ge=0)  # messages in the thread after this event
    # Increases by one with every decision on this invitation (refusals of a command on it
    # too): a consumer keeps the state with the highest revision.
    revision: int = Field(ge=1)


class ThreadMessage(Frozen):
    message_id: Id
    user_id: Id
    text: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)
    posted_at: datetime


class _InvitationEvent(EventModel):
    topic: ClassVar[str] = Topic.COLLAB_EVENTS

    invitation_id: Id
    author_id: Id
    invitation: InvitationState


class InvitationSent(_InvitationEvent):
    """Accepted by the rules: the owner has it, pending their answer."""

    event_type: ClassVar[str] = "InvitationSent"


class InvitationRejected(_InvitationEvent):
    """The invitation request was refused; the sender reads why (``invitation.reason``)."""

    event_type: ClassVar[str] = "InvitationRejected"
    reason: InvitationRejectionReason


class InvitationAccepted(_InvitationEvent):
    event_type: ClassVar[str] = "InvitationAccepted"


class InvitationDeclined(_InvitationEvent):
    event_type: ClassVar[str] = "InvitationDeclined"


class InvitationWithdrawn(_InvitationEvent):
    event_type: ClassVar[str] = "InvitationWithdrawn"


class InvitationClosed(_InvitationEvent):
    """The record's claim was revoked, or the record changed owner: the invitation (pending
    or accepted) ends, and its thread takes no more messages."""

    event_type: ClassVar[str] = "InvitationClosed"
    reason: ClosureReason


class MessagePosted(_InvitationEvent):
    event_type: ClassVar[str] = "MessagePosted"
    message: ThreadMessage


class InvitationCommandRejected(EventModel):
    """A command on an invitation refused (an answer, withdrawal or message; or a request
    whose invitation id is taken). ``invitation``: its state after the refusal (only the
    revision moved), or None when no invitation was touched (unknown, or not the sender's)."""

    event_type: ClassVar[str] = "InvitationCommandRejected"
    topic: ClassVar[str] = Topic.COLLAB_EVENTS

    invitation_id: Id
    author_id: Id
    user_id: Id
    command: CollabCommandName
    reason: CommandRejectionReason
    detail: str | None = Field(default=None, max_length=1000)
    invitation: InvitationState | None = None


# Events that carry an invitation's state (all but a refusal of an unknown invitation).
INVITATION_EVENTS: tuple[type[_InvitationEvent], ...] = (
    InvitationSent,
    InvitationRejected,
    InvitationAccepted,
    InvitationDeclined,
    InvitationWithdrawn,
    InvitationClosed,
    MessagePosted,
)


def invitation_of(payload: EventModel) -> InvitationState | None:
    """The invitation's state an event of collab.events carries (None: none touched)."""
    if isinstance(payload, _InvitationEvent):
        return payload.invitation
    if isinstance(payload, InvitationCommandRejected):
        return payload.invitation
    return None
