"""The inbox as notifications.events tells it: notifications created, and marked read.

One consumer, live and in a rebuild: ``NotificationCreated`` are inserted (idempotently,
by their deterministic id) and ``NotificationsRead`` marks what precedes it on the user's
partition. Live, it is wired to pass over the notifications this service published itself
(``skip_own``): the fan-out's chunk worker wrote each into the inbox before publishing it,
and a fan-out of 100,000 followers would otherwise decode 100,000 envelopes again here.
The notifications other services publish (collab's invitations and answers) come in
through it. A rebuild takes every notification from the topic: which follower got which
was decided live, against the followers of that moment; a notification of a large
fan-out names its shared entry (``shared_id``), and the rebuild puts its user back there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contracts.events.notifications import NotificationCreated, NotificationsRead
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from services.follow.rules import SharedEntry
from services.follow.store import FollowStore


class Pending:
    """Notifications read and not written yet: entries of the users' own, and the members
    of shared entries (large fan-outs), per entry."""

    def __init__(self) -> None:
        self.own: list[NotificationCreated] = []
        self.shared: dict[str, tuple[SharedEntry, set[str]]] = {}
        self.members = 0

    def add(self, note: NotificationCreated) -> None:
        if note.shared_id is None:
            self.own.append(note)
            return
        entry = SharedEntry(
            note.shared_id, note.author_id, note.kind, note.title, note.source_event_id, note.created_at
        )
        self.shared.setdefault(note.shared_id, (entry, set()))[1].add(note.user_id)
        self.members += 1

    async def write(self, store: FollowStore, *, shared: bool = True) -> None:
        await store.insert_notifications(self.own)
        self.own.clear()
        if shared and self.shared:
            await store.add_shared_members(self.shared)
            self.shared.clear()
            self.members = 0


@dataclass(frozen=True, slots=True)
class Created:
    note: NotificationCreated

    async def apply(self, store: FollowStore, pending: Pending) -> None:
        pending.add(self.note)


@dataclass(frozen=True, slots=True)
class Read:
    mark: NotificationsRead

    async def apply(self, store: FollowStore, pending: Pending) -> None:
        # A read mark covers the notifications before it: those read so far go in first.
        await pending.write(store)
        ids = self.mark.notification_ids
        await store.mark_read(self.mark.user_id, None if ids is None else [str(i) for i in ids])


Step = Created | Read


def _created(p: NotificationCreated, item: Incoming[NotificationCreated]) -> Step:
    return Created(p)


def _read(p: NotificationsRead, item: Incoming[NotificationsRead]) -> Step:
    return Read(p)


INBOX = Dispatch[Step]().on(NotificationCreated, handler=_created).on(NotificationsRead, handler=_read)

# Members of shared entries a rebuild holds before writing them: each write rewrites the
# entries' member lists, so they are written in few large steps, not batch by batch.
HELD_MEMBERS = 200_000


class InboxEvents:
    accepts = INBOX.types

    def __init__(self, store: FollowStore, *, hold_shared: bool = False) -> None:
        self.store = store
        # A rebuild holds the members of shared entries across batches (until a read mark,
        # ``HELD_MEMBERS``, or the end: ``flush``, its drain hook). Only a rebuild may: it
        # starts from an empty database, so a crash loses nothing it cannot read again.
        self.hold_shared = hold_shared
        self.pending = Pending()

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        for step in (INBOX(item) for item in batch):  # in partition order
            await step.apply(self.store, self.pending)
        await self.pending.write(self.store, shared=not self.hold_shared or self.pending.members >= HELD_MEMBERS)

    async def flush(self) -> None:
        await self.pending.write(self.store)
