"""follows.events read back: the follow service's own decisions folded into its projection.

* ``EdgeEvents``: the edges AuthorFollowed/AuthorUnfollowed say, to write. The command
  consumer writes them right after each decision from the events it just committed
  (``FollowCommands``); so does ``EdgeHealer`` from the topic.
* ``EdgeHealer`` (live): writes the edges of events the runtime's outbox sweeper published
  for a process that died between its decision and its edge writes. Edges at that
  revision or newer are left alone, so it writes nothing in the usual case.
* ``FollowsRebuild`` (rebuild only): edges, counts, revisions and parked follows from
  follows.events, in log order: the rebuild decides nothing again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from contracts.events.follows import (
    AuthorFollowed,
    AuthorUnfollowed,
    FollowerCountChanged,
    FollowPending,
    FollowRejected,
)
from contracts.registry import model_for
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from service_runtime.publishing import Outgoing
from services.follow.rules import EdgeFold, FollowFold
from services.follow.store import FollowStore

EDGE_EVENTS = (AuthorFollowed, AuthorUnfollowed)


def as_incoming(out: Outgoing) -> Incoming[Any]:
    """An event about to be published, as a consumer of its topic will read it."""
    payload = model_for(out.topic, out.envelope.event_type).model_validate(out.envelope.data)
    return Incoming(out.envelope, payload, out.topic, -1, -1)


class EdgeEvents:
    """Collects the edge changes of AuthorFollowed/AuthorUnfollowed events, in order
    (events of other types are passed over); ``write`` writes them."""

    def __init__(self, *, newer_than: Mapping[str, int] | None = None) -> None:
        # ``newer_than``: per author, the revision up to which its edges are written; only
        # events of a newer revision are taken (None: take every event).
        self.newer_than = newer_than
        self.fold = EdgeFold()
        self._reading = (
            Dispatch[None]().on(AuthorFollowed, handler=self._followed).on(AuthorUnfollowed, handler=self._unfollowed)
        )

    def add(self, items: Sequence[Incoming[Any]]) -> EdgeEvents:
        for item in items:
            if self._reading.handles(item):
                self._reading(item)
        return self

    def _taken(self, author_id: str, revision: int | None) -> bool:
        if self.newer_than is None:
            return True
        return revision is not None and revision > self.newer_than.get(author_id, 0)

    def _followed(self, p: AuthorFollowed, item: Incoming[AuthorFollowed]) -> None:
        if self._taken(p.author_id, p.revision):
            self.fold.followed(p, item.envelope.occurred_at)

    def _unfollowed(self, p: AuthorUnfollowed, item: Incoming[AuthorUnfollowed]) -> None:
        if self._taken(p.author_id, p.revision):
            self.fold.unfollowed(p, item.envelope.occurred_at)

    async def write(self, store: FollowStore) -> None:
        if self.fold.changes:
            await store.write_edges(self.fold.changes, self.fold.revisions())


class EdgeHealer:
    """Live: follows.events -> the edges not written yet (see the module doc). Events
    without a revision come from producers before revisions existed: their edges were
    written by that producer, and only a rebuild, from scratch, takes them."""

    accepts = EDGE_EVENTS

    def __init__(self, store: FollowStore) -> None:
        self.store = store

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        written = await self.store.edges_revisions(i.payload.author_id for i in batch)
        await EdgeEvents(newer_than=written).add(batch).write(self.store)


class FollowsRebuild:
    """Rebuild only: follows.events -> edges, counts, revisions and parked follows."""

    accepts = (AuthorFollowed, AuthorUnfollowed, FollowerCountChanged, FollowRejected, FollowPending)

    def __init__(self, store: FollowStore) -> None:
        self.store = store
        self._folds: dict[str, FollowFold] = {}
        self._ended: dict[str, set[uuid.UUID]] = {}  # per author, across batches
        self._reading = (
            Dispatch[None]()
            .on(AuthorFollowed, handler=self._followed)
            .on(AuthorUnfollowed, handler=self._unfollowed)
            .on(FollowerCountChanged, handler=self._count_changed)
            .on(FollowRejected, handler=self._rejected)
            .on(FollowPending, handler=self._pending)
        )

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        self._folds = await self.store.follow_folds(i.payload.author_id for i in batch)
        for author_id, fold in self._folds.items():
            # A copy: a batch that fails to write is folded again from the stored state, and
            # must not find the follows it ended in the failed attempt already ended.
            fold.ended = set(self._ended.get(author_id, ()))
        for item in batch:
            self._reading(item)
        # The authors first: the edges' writes record their revision in them.
        await self.store.write_follow_folds(self._folds)
        await EdgeEvents().add(batch).write(self.store)
        for author_id, fold in self._folds.items():
            if fold.ended:
                self._ended[author_id] = fold.ended

    def _followed(self, p: AuthorFollowed, item: Incoming[AuthorFollowed]) -> None:
        self._folds[p.author_id].followed(p, item.envelope.causation_id)

    def _unfollowed(self, p: AuthorUnfollowed, item: Incoming[AuthorUnfollowed]) -> None:
        self._folds[p.author_id].unfollowed(p)

    def _count_changed(self, p: FollowerCountChanged, item: Incoming[FollowerCountChanged]) -> None:
        self._folds[p.author_id].count_changed(p)

    def _rejected(self, p: FollowRejected, item: Incoming[FollowRejected]) -> None:
        self._folds[p.author_id].rejected(item.envelope.causation_id)

    def _pending(self, p: FollowPending, item: Incoming[FollowPending]) -> None:
        self._folds[p.author_id].pending(p, item.envelope.correlation_id)
