"""HTTP: invitation commands (validated, authenticated, published to ``webapp.collab``) and reads.

Writes answer what they can check on the projection at once, with the rules the consumer
applies (``rules``): 401 without a valid token, 404 for an unknown invitation, 403 for a
user who is not the party the command needs, 409 for a state that forbids it (the rule
in the problem's ``reason``), 422 for invalid input (a message over the limit). Otherwise 202:
the command is published, and the consumer decides authoritatively in partition order
(a race these checks could not see ends in a refusal on ``collab.events``, and for a new
invitation in its status and reason on ``GET /invitations/{id}``).
"""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field

from contracts.events.collab import (
    TEXT_MAX_CHARS,
    CommandRejectionReason,
    InvitationAnswerRequested,
    InvitationRequested,
    InvitationState,
    InvitationWithdrawRequested,
    MessagePostRequested,
    ThreadMessage,
)
from contracts.events.common import ID_PATTERN, Id
from service_runtime.auth import CurrentUser
from service_runtime.problems import ProblemError, problem_responses
from service_runtime.publishing import EventPublisher
from service_runtime.requests import RequestBody
from services.collab.rules import (
    Limits,
    answer_refusal,
    invitation_refusal,
    message_refusal,
    parties,
    post_refusal,
    refusal_detail,
    slot_refusal,
    withdraw_refusal,
)
from services.collab.store import CollabStore

PathId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]


def _text(limits: Limits) -> Any:
    """A message's text. The schema states the configured limit; a longer text is still
    read (up to the contract's) so that it is refused with its reason, message_too_long."""
    limit = limits.max_message_chars
    return Field(
        min_length=1,
        max_length=TEXT_MAX_CHARS,
        json_schema_extra={"maxLength": limit},
        description=f"at most {limit:,} characters",
    )


class Accepted(BaseModel):
    invitation_id: str
    author_id: str
    message_id: str | None = None
    status: Literal["accepted"] = "accepted"


class InvitationView(BaseModel):
    invitation_id: str
    author_id: str
    sender_id: str
    owner_user_id: str | None
    status: str
    reason: str | None
    detail: str | None
    message: str
    created_at: datetime
    updated_at: datetime
    answered_at: datetime | None
    message_count: int

    @classmethod
    def of(cls, state: InvitationState) -> "InvitationView":
        return cls.model_validate(state.model_dump(exclude={"revision"}))


class MessageView(BaseModel):
    message_id: str
    user_id: str
    text: str
    posted_at: datetime

    @classmethod
    def of(cls, message: ThreadMessage) -> "MessageView":
        return cls.model_validate(message.model_dump())


class ConversationView(InvitationView):
    thread: list[MessageView] = Field(description="the messages, newest last")


class UserInvitations(BaseModel):
    user_id: str
    received: list[InvitationView] = Field(description="invitations to records the user owns, newest first")
    sent: list[InvitationView] = Field(description="invitations the user sent, newest first")
    invitations: list[InvitationView] = Field(description="both, newest first (what the web app's inbox lists)")


class AuthorCollaboration(BaseModel):
    author_id: str
    claimed: bool
    open_to_collaborate: bool
    accepts_invitations: bool = Field(description="claimed and open to collaborate: the invite action is available")


def refused(code: int, reason: str, message: str) -> ProblemError:
    return ProblemError(code, message, reason=reason)


# A command on an invitation: unknown (404), not the user's to give (403), or not in a
# state that takes it (409).
ANSWER_PROBLEMS = problem_responses(403, 404, 409)


def build_router(store: CollabStore, publisher: EventPublisher, limits: Limits, list_limit: int) -> APIRouter:
    router = APIRouter(tags=["collab"])

    # The bodies, with this service's limit in their schema (hence defined here, and no
    # postponed annotations in this module: FastAPI resolves them in the module's globals).
    class InvitationBody(RequestBody):
        author_id: Id
        message: str = _text(limits)

    class MessageBody(RequestBody):
        text: str = _text(limits)

    async def publish(command: Any) -> None:
        await publisher.publish([publisher.outgoing(command)])

    def check_length(text: str) -> None:
        if message_refusal(text, limits):
            raise refused(422, "message_too_long", refusal_detail("message_too_long", limits))

    async def known(invitation_id: str) -> InvitationState:
        found = await store.get_invitation(invitation_id)
        if found is None:
            raise refused(status.HTTP_404_NOT_FOUND, "unknown_invitation", "no such invitation")
        return found[0]

    def answer_http(reason: CommandRejectionReason | None, state: InvitationState) -> None:
        """A refusal of a command on an invitation, as HTTP: the wrong user is a 403, a
        state that forbids it a 409."""
        if reason is None:
            return
        code = 403 if reason in ("not_owner", "not_sender", "not_party") else 409
        if reason == "message_too_long":
            code = 422
        raise refused(code, reason, refusal_detail(reason, limits, status=state.status))

    @router.post(
        "/invitations",
        status_code=202,
        response_model=Accepted,
        summary="Invite a researcher",
        responses=problem_responses(409),
    )
    async def invite(body: InvitationBody, user: CurrentUser) -> Accepted:
        check_length(body.message)
        author = await store.get_author(body.author_id)
        owner = author.owner_id if author is not None else None
        declined_at = await store.latest_decline(user.user_id, owner) if owner else None
        reason = invitation_refusal(
            user.user_id,
            author,
            message=body.message,
            active_pair=await store.has_live_invitation(body.author_id, user.user_id),
            declined_at=declined_at,
            now=datetime.now(UTC),
            limits=limits,
        ) or slot_refusal(await store.pending_count(user.user_id), limits)
        if reason is not None:
            raise refused(status.HTTP_409_CONFLICT, reason, refusal_detail(reason, limits, declined_at=declined_at))
        invitation_id = f"inv-{uuid.uuid4().hex}"
        await publish(
            InvitationRequested(
                invitation_id=invitation_id, author_id=body.author_id, user_id=user.user_id, message=body.message
            )
        )
        return Accepted(invitation_id=invitation_id, author_id=body.author_id)

    async def answer(invitation_id: str, user_id: str, choice: Literal["accept", "decline"]) -> Accepted:
        state = await known(invitation_id)
        answer_http(answer_refusal(state, user_id), state)
        await publish(
            InvitationAnswerRequested(
                invitation_id=invitation_id, author_id=state.author_id, user_id=user_id, answer=choice
            )
        )
        return Accepted(invitation_id=invitation_id, author_id=state.author_id)

    @router.post(
        "/invitations/{invitation_id}/accept",
        status_code=202,
        response_model=Accepted,
        summary="Accept (the owner)",
        responses=ANSWER_PROBLEMS,
    )
    async def accept(invitation_id: PathId, user: CurrentUser) -> Accepted:
        return await answer(invitation_id, user.user_id, "accept")

    @router.post(
        "/invitations/{invitation_id}/decline",
        status_code=202,
        response_model=Accepted,
        summary="Decline (the owner)",
        responses=ANSWER_PROBLEMS,
    )
    async def decline(invitation_id: PathId, user: CurrentUser) -> Accepted:
        return await answer(invitation_id, user.user_id, "decline")

    @router.post(
        "/invitations/{invitation_id}/withdraw",
        status_code=202,
        response_model=Accepted,
        summary="Withdraw an invitation not answered yet (the sender)",
        responses=ANSWER_PROBLEMS,
    )
    async def withdraw(invitation_id: PathId, user: CurrentUser) -> Accepted:
        state = await known(invitation_id)
        answer_http(withdraw_refusal(state, user.user_id), state)
        await publish(
            InvitationWithdrawRequested(invitation_id=invitation_id, author_id=state.author_id, user_id=user.user_id)
        )
        return Accepted(invitation_id=invitation_id, author_id=state.author_id)

    @router.post(
        "/invitations/{invitation_id}/messages",
        status_code=202,
        response_model=Accepted,
        summary="Post to the thread of an accepted invitation (its two parties)",
        responses=ANSWER_PROBLEMS,
    )
    async def post_message(invitation_id: PathId, body: MessageBody, user: CurrentUser) -> Accepted:
        check_length(body.text)
        state = await known(invitation_id)
        answer_http(post_refusal(state, user.user_id, body.text, limits), state)
        message_id = f"msg-{uuid.uuid4().hex}"
        await publish(
            MessagePostRequested(
                invitation_id=invitation_id,
                author_id=state.author_id,
                user_id=user.user_id,
                message_id=message_id,
                text=body.text,
            )
        )
        return Accepted(invitation_id=invitation_id, author_id=state.author_id, message_id=message_id)

    @router.get(
        "/invitations/{invitation_id}",
        response_model=ConversationView,
        summary="An invitation and its thread, newest message last (its parties only)",
        responses=problem_responses(403, 404),
    )
    async def get_invitation(invitation_id: PathId, user: CurrentUser) -> ConversationView:
        found = await store.get_invitation(invitation_id)
        if found is None:
            raise refused(status.HTTP_404_NOT_FOUND, "unknown_invitation", "no such invitation")
        state, thread = found
        if user.user_id not in parties(state):
            raise refused(status.HTTP_403_FORBIDDEN, "not_party", refusal_detail("not_party", limits))
        return ConversationView(**InvitationView.of(state).model_dump(), thread=[MessageView.of(m) for m in thread])

    @router.get(
        "/authors/{author_id}/collaboration",
        response_model=AuthorCollaboration,
        summary="Whether a record takes invitations (public)",
    )
    async def author_collaboration(author_id: PathId) -> AuthorCollaboration:
        author = await store.get_author(author_id)
        claimed = author is not None and author.owner_id is not None
        open_ = author is not None and author.open_to_collaborate
        return AuthorCollaboration(
            author_id=author_id, claimed=claimed, open_to_collaborate=open_, accepts_invitations=claimed and open_
        )

    @router.get(
        "/users/{user_id}/invitations",
        response_model=UserInvitations,
        summary="The invitations a user received and sent (the user only)",
        responses=problem_responses(403),
    )
    async def user_invitations(user_id: PathId, user: CurrentUser) -> UserInvitations:
        if user.user_id != user_id:
            raise ProblemError(status.HTTP_403_FORBIDDEN, "only the user themself reads their invitations")
        received = [InvitationView.of(s) for s in await store.received(user_id, list_limit)]
        sent = [InvitationView.of(s) for s in await store.sent(user_id, list_limit)]
        both = sorted([*received, *sent], key=lambda i: (i.created_at, i.invitation_id), reverse=True)
        return UserInvitations(user_id=user_id, received=received, sent=sent, invitations=both[:list_limit])

    return router
