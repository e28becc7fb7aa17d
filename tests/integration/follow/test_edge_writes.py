"""Edges written at once by several writers, on the real store: the consumer of an
author's partition, the healer and another replica delivering an outbox left behind can
each write a new edge, from different runs of its events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from pymongo import AsyncMongoClient

from service_runtime.store import Document
from services.follow.rules import EdgeChange
from services.follow.store import FollowStore
from tests.conftest import Namespace

FOLLOWED = datetime(2026, 1, 1, tzinfo=UTC)
UNFOLLOWED = FOLLOWED + timedelta(minutes=1)


async def test_a_stale_write_racing_the_creation_of_an_edge_never_stands(ns: Namespace) -> None:
    """One writer has the follow (revision 1), the other the follow and the unfollow after
    it (revision 2); whichever creates the edge, it ends unfollowed at revision 2."""
    database = f"t{ns.id}_follow_edges"
    ns.databases.append(database)
    clients: list[AsyncMongoClient[Document]] = [
        AsyncMongoClient(ns.infra["mongodb"], tz_aware=True, maxPoolSize=4) for _ in range(2)
    ]
    try:
        stale, newer = (FollowStore(c[database]) for c in clients)
        users = [f"u{i:03d}" for i in range(300)]
        followed = EdgeChange(True, FOLLOWED, True, None, 1)
        unfollowed = EdgeChange(False, FOLLOWED, True, UNFOLLOWED, 2)

        async def write(store: FollowStore, change: EdgeChange, user: str) -> None:
            await store.write_edges({("a1", user): change}, {"a1": change.revision or 0})

        await asyncio.gather(*(w for u in users for w in (write(stale, followed, u), write(newer, unfollowed, u))))
        edges = dict(await stale.author_edges("a1"))
        assert sorted(edges) == users
        standing = [u for u, e in edges.items() if e.active or e.unfollowed_at != UNFOLLOWED]
        assert standing == [], f"{len(standing)} of {len(users)} edges kept the stale follow"
        revisions = await stale.edges.distinct("revision", {"author_id": "a1"})
        assert revisions == [2]
    finally:
        for c in clients:
            await c.close()
