"""follows.events folded by the follow rebuild, with a store that fails a write: a batch
folded again after a failed write gives what one clean pass gives."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from contracts.envelope import Envelope, EventModel
from contracts.events.follows import AuthorFollowed, FollowPending, FollowRequested
from service_runtime.delivery import Incoming
from services.follow.ledger import FollowsRebuild
from services.follow.rules import EdgeChange, FollowFold
from services.follow.store import FollowStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class StoreFailingOnce:
    """The authors' folds kept in memory; the first write of the folds fails like a store
    that answered "deadlock detected" (the delivery loop then runs the batch again)."""

    def __init__(self) -> None:
        self.folds: dict[str, FollowFold] = {}
        self.parked_written: set[str] = set()  # authors whose parked follows were written
        self.fail_next_write = True

    async def follow_folds(self, author_ids: Iterable[str]) -> dict[str, FollowFold]:
        empty = FollowFold(count=None, revision=None, count_revision=None, parked=[])
        return {a: replace(self.folds.get(a, empty), parked=list(self.folds.get(a, empty).parked)) for a in author_ids}

    async def write_follow_folds(self, folds: Mapping[str, FollowFold]) -> None:
        if self.fail_next_write:
            self.fail_next_write = False
            raise ConnectionError("deadlock detected")
        for a, f in folds.items():
            self.folds[a] = replace(f, parked_changed=False)
            if f.parked_changed:
                self.parked_written.add(a)

    async def write_edges(self, changes: Mapping[tuple[str, str], EdgeChange], revisions: Mapping[str, int]) -> None:
        pass


def incoming(payload: EventModel, cause: Envelope | None = None) -> Incoming[Any]:
    return Incoming(Envelope.wrap(payload, producer="follow", cause=cause), payload, "follows.events", 0, 0)


async def test_a_batch_folded_again_after_a_failed_write_ends_its_parked_follow_once() -> None:
    follow_cmd = Envelope.wrap(FollowRequested(user_id="u1", author_id="a1"), producer="web")
    parked = FollowPending(
        author_id="a1", user_id="u1", follow_id=follow_cmd.event_id, requested_at=T0, wait_until=T0 + timedelta(hours=1)
    )
    followed = AuthorFollowed(author_id="a1", user_id="u1", count=1, followed_at=T0, revision=1)
    batch = [incoming(parked, follow_cmd), incoming(followed, follow_cmd)]
    store = StoreFailingOnce()
    rebuild = FollowsRebuild(cast(FollowStore, store))

    with pytest.raises(ConnectionError):
        await rebuild.handle(batch)
    await rebuild.handle(batch)  # the delivery loop runs the batch again

    written = store.folds["a1"]
    assert written.parked == [] and written.count == 1 and written.revision == 1
    # The follow was parked and ended again in the second pass: the (empty) parked list
    # is written, as live writes it.
    assert "a1" in store.parked_written
    # A copy of its FollowPending read later does not park it again.
    await rebuild.handle([incoming(parked, follow_cmd)])
    assert store.folds["a1"].parked == []
