"""The inbox as notifications.events tells it: notifications created, and marked read.

Live, the fan-out's chunk worker inserts each notification before publishing it, so this
consumer applies only the read marks (``NotificationsRead``), which come after the
notifications they cover on the user's partition. A rebuild inserts the notifications
from the topic too: which follower got which notification was decided live, against the
followers of that moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.events.notifications import NotificationCreated, NotificationsRead
from service_runtime.delivery import Incoming
from services.follow.store import FollowStore


def inbox_doc(note: NotificationCreated) -> dict[str, Any]:
    return {
        "_id": str(note.notification_id),
        "user_id": note.user_id,
        "author_id": note.author_id,
        "kind": note.kind,
        "source_event_id": str(note.source_event_id),
        "title": note.title,
        "created_at": note.created_at,
        "read": False,
    }


class InboxEvents:
    def __init__(self, store: FollowStore, *, rebuilding: bool) -> None:
        self.store = store
        self.rebuilding = rebuilding

    async def handle(self, batch: Sequence[Incoming]) -> None:
        created: list[dict[str, Any]] = []
        for item in batch:  # in partition order: a read mark covers what precedes it
            if isinstance(item.payload, NotificationCreated) and self.rebuilding:
                created.append(inbox_doc(item.payload))
            elif isinstance(item.payload, NotificationsRead):
                await self.store.insert_notifications(created)
                created = []
                ids = item.payload.notification_ids
                await self.store.mark_read(item.payload.user_id, None if ids is None else [str(i) for i in ids])
        await self.store.insert_notifications(created)
