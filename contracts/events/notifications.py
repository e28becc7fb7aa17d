"""``notifications.events`` and the follow service's internal ``follow.fanout`` chunks."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import EventModel
from contracts.events.common import Id
from contracts.topics import Topic

# A follower's notifications (follow's fan-out), and a party's of an invitation (collab).
NotificationKind = Literal["new_work", "claim_approved", "trust_band_up", "invitation_received", "invitation_answered"]


def notification_id(source_event_id: uuid.UUID, user_id: str) -> uuid.UUID:
    """The one id of the notification a source event gives one follower: a retried or
    replayed fan-out derives the same id, so an inbox insert or a consumer dedupes it."""
    return uuid.uuid5(source_event_id, user_id)


def fanout_id(source_event_id: uuid.UUID) -> uuid.UUID:
    """The fan-out a source event starts: planning it twice plans the same chunks."""
    return uuid.uuid5(source_event_id, "fanout")


class NotificationCreated(EventModel):
    event_type: ClassVar[str] = "NotificationCreated"
    topic: ClassVar[str] = Topic.NOTIFICATIONS_EVENTS
    key_field: ClassVar[str] = "user_id"

    notification_id: uuid.UUID  # uuid5(source event id, user id): the same on every retry
    user_id: Id
    author_id: Id
    kind: NotificationKind
    source_event_id: uuid.UUID
    title: str = Field(max_length=600)
    created_at: datetime
    # A large fan-out keeps one shared inbox entry per chunk of followers instead of one
    # entry per follower: its id ("<fanout_id>:<n>"), so a rebuild puts the notification
    # back into the same entry. None: the notification is an entry of the user's own.
    shared_id: str | None = None


class NotificationsRead(EventModel):
    """A user marked notifications read (all of them when ``notification_ids`` is None):
    on the user's partition of notifications.events, after the notifications it covers, so
    a rebuild of the inbox from this topic marks the same ones."""

    event_type: ClassVar[str] = "NotificationsRead"
    topic: ClassVar[str] = Topic.NOTIFICATIONS_EVENTS
    key_field: ClassVar[str] = "user_id"

    user_id: Id
    notification_ids: list[uuid.UUID] | None = Field(default=None, max_length=1000)


class FanoutCutRequested(EventModel):
    """A large fan-out whose followers are still to be cut into chunks: taken by any
    replica of the follow service, away from the consumer of source events (cutting a
    million followers reads a million index entries)."""

    event_type: ClassVar[str] = "FanoutCutRequested"
    topic: ClassVar[str] = Topic.FOLLOW_FANOUT
    key_field: ClassVar[str] = "fanout_id"

    fanout_id: uuid.UUID
    author_id: Id
    kind: NotificationKind
    source_event_id: uuid.UUID
    title: str = Field(max_length=600)
    followed_before: datetime


class FanoutChunkRequested(EventModel):
    """One chunk of followers to notify, taken by any replica of the follow service."""

    event_type: ClassVar[str] = "FanoutChunkRequested"
    topic: ClassVar[str] = Topic.FOLLOW_FANOUT
    key_field: ClassVar[str] = "chunk_key"

    fanout_id: uuid.UUID
    chunk_key: str  # "<fanout_id>:<chunk number>": spreads chunks over partitions
    author_id: Id
    kind: NotificationKind
    source_event_id: uuid.UUID
    title: str = Field(max_length=600)
    # Followers whose user_id lies in (after_user_id, upto_user_id], followed before the source event.
    after_user_id: str | None = None
    upto_user_id: str
    followed_before: datetime
    # True: a large fan-out, the chunk writes one shared inbox entry for its followers.
    shared: bool = False
