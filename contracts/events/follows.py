"""``webapp.follows`` (commands) and ``follows.events`` (edges and exact counts)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import EventModel
from contracts.events.common import Id
from contracts.topics import Topic

FollowRejectionReason = Literal["unknown_author", "self_follow"]


class _FollowCommand(EventModel):
    topic: ClassVar[str] = Topic.WEBAPP_FOLLOWS

    user_id: Id
    author_id: Id


class FollowRequested(_FollowCommand):
    event_type: ClassVar[str] = "FollowRequested"


class UnfollowRequested(_FollowCommand):
    event_type: ClassVar[str] = "UnfollowRequested"


class _FollowEvent(EventModel):
    topic: ClassVar[str] = Topic.FOLLOWS_EVENTS

    author_id: Id


class AuthorFollowed(_FollowEvent):
    event_type: ClassVar[str] = "AuthorFollowed"
    user_id: Id
    count: int = Field(ge=0)


class AuthorUnfollowed(_FollowEvent):
    event_type: ClassVar[str] = "AuthorUnfollowed"
    user_id: Id
    count: int = Field(ge=0)


class FollowerCountChanged(_FollowEvent):
    event_type: ClassVar[str] = "FollowerCountChanged"
    count: int = Field(ge=0)
    revision: int = Field(ge=1)  # per author, increases with every change of the count


class FollowRejected(_FollowEvent):
    event_type: ClassVar[str] = "FollowRejected"
    user_id: Id
    reason: FollowRejectionReason
