"""``webapp.follows`` (commands) and ``follows.events`` (edges, exact counts, and follows
waiting for their author).

Every decision of the follow service is one of these events, so its edges, counts and
waiting follows are a fold of ``follows.events``: ``AuthorFollowed`` and
``AuthorUnfollowed`` carry the moment of the follow or unfollow and the author's follow
revision; ``FollowerCountChanged`` the count and its revision; ``FollowPending`` a follow
parked for an author not known yet, which ends with the ``AuthorFollowed`` or
``FollowRejected`` caused by the same command.
"""

from __future__ import annotations

import uuid
from datetime import datetime
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
    # When the user asked to follow (the command's time): who was a follower at the moment
    # of a new work is decided by it. None from producers before it was added.
    followed_at: datetime | None = None
    # The author's follow revision after this change: +1 with every follow and unfollow
    # applied, so edges and counts rebuilt from the log keep the newest. None: not said.
    revision: int | None = Field(default=None, ge=1)


class AuthorUnfollowed(_FollowEvent):
    event_type: ClassVar[str] = "AuthorUnfollowed"
    user_id: Id
    count: int = Field(ge=0)
    unfollowed_at: datetime | None = None  # when the user asked to unfollow
    revision: int | None = Field(default=None, ge=1)  # as in AuthorFollowed


class FollowerCountChanged(_FollowEvent):
    event_type: ClassVar[str] = "FollowerCountChanged"
    count: int = Field(ge=0)
    revision: int = Field(ge=1)  # per author, increases with every change of the count


class FollowRejected(_FollowEvent):
    event_type: ClassVar[str] = "FollowRejected"
    user_id: Id
    reason: FollowRejectionReason


class FollowPending(_FollowEvent):
    """A follow of an author not known yet waits for the author (until ``wait_until``, and
    then until profile.events has been read that far). It ends with the ``AuthorFollowed``
    or ``FollowRejected`` caused by the same command (``follow_id``). An unfollow by the
    same user while it waits is kept with it (``unfollow_id``): this event again, with the
    unfollow, caused by the unfollow command; it is applied right after the follow."""

    event_type: ClassVar[str] = "FollowPending"
    user_id: Id
    follow_id: uuid.UUID  # the event id of the FollowRequested that waits
    requested_at: datetime  # its time: the follow's time once applied
    wait_until: datetime
    unfollow_id: uuid.UUID | None = None
    unfollow_requested_at: datetime | None = None
