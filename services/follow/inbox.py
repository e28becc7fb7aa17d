"""The inbox as notifications.events tells it: notifications created, and marked read.

One consumer, live and in a rebuild: ``NotificationCreated`` are inserted (idempotently,
by their deterministic id) and ``NotificationsRead`` marks what precedes it on the user's
partition. Live, it is wired to pass over the notifications this service published itself
(``skip_own``): the fan-out's chunk worker wrote each into the inbox before publishing it,
and a fan-out of 100,000 followers would otherwise decode 100,000 envelopes again here.
The notifications other services publish (collab's invitations and answers) come in
through it. A rebuild takes every notification from the topic: which follower got which
was decided live, against the followers of that moment.
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


INBOX = Dispatch[Step]().on(NotificationCreated, handler=_created).on(NotificationsRead, handler=_read)


class InboxEvents:
    accepts = INBOX.types

    def __init__(self, store: FollowStore) -> None:
        self.store = store

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        created: list[NotificationCreated] = []
        for step in (INBOX(item) for item in batch):  # in partition order
            await step.apply(self.store, created)
        await self.store.insert_notifications(created)
