"""The inbox as notifications.events tells it: notifications created, and marked read.

Live, the fan-out's chunk worker writes each notification into the inbox before
publishing it, so ``InboxReads`` applies only the read marks (``NotificationsRead``, which
come after the notifications they cover on the user's partition); the NotificationCreated
records are passed over undecoded (a fan-out of 100,000 followers would otherwise decode
100,000 envelopes in this process). A rebuild (``InboxRebuild``) inserts the
notifications from the topic too: which follower got which notification was decided live,
against the followers of that moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contracts.events.notifications import NotificationCreated, NotificationsRead
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from services.follow.store import FollowStore


@dataclass(frozen=True, slots=True)
class Created:
    note: NotificationCreated

    async def apply(self, store: FollowStore, created: list[NotificationCreated]) -> None:
        created.append(self.note)


@dataclass(frozen=True, slots=True)
class Read:
    mark: NotificationsRead

    async def apply(self, store: FollowStore, created: list[NotificationCreated]) -> None:
        # A read mark covers the notifications before it: those read so far go in first.
        await store.insert_notifications(created)
        created.clear()
        ids = self.mark.notification_ids
        await store.mark_read(self.mark.user_id, None if ids is None else [str(i) for i in ids])


Step = Created | Read


def _created(p: NotificationCreated, item: Incoming[NotificationCreated]) -> Step:
    return Created(p)


def _read(p: NotificationsRead, item: Incoming[NotificationsRead]) -> Step:
    return Read(p)


READ_MARKS = Dispatch[Step]().on(NotificationsRead, handler=_read)
READ_INBOX = Dispatch[Step]().on(NotificationCreated, handler=_created).on(NotificationsRead, handler=_read)


async def _apply(store: FollowStore, steps: Sequence[Step]) -> None:
    created: list[NotificationCreated] = []
    for step in steps:  # in partition order
        await step.apply(store, created)
    await store.insert_notifications(created)


class InboxReads:
    """Live: the read marks."""

    accepts = READ_MARKS.types

    def __init__(self, store: FollowStore) -> None:
        self.store = store

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        await _apply(self.store, [READ_MARKS(item) for item in batch])


class InboxRebuild:
    """Rebuild only: the notifications and the read marks, in partition order."""

    accepts = READ_INBOX.types

    def __init__(self, store: FollowStore) -> None:
        self.store = store

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        await _apply(self.store, [READ_INBOX(item) for item in batch])
