"""A large fan-out keeps shared inbox entries (one per chunk of followers) instead of one
per follower; the inbox API behaves the same for its followers: newest first with the
user's own entries, paged by cursor, the unread ones, marks of some or all read; and a
rebuild from the log gives the same store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from contracts.topics import Topic
from service_runtime.service import Service
from services.follow.app import build_service
from tests.conftest import eventually
from tests.integration.follow.conftest import (
    follow_cmd,
    follow_settings,
    known,
    later,
    publish,
    registered,
    store_of,
    work_added,
)
from tests.integration.follow.test_follows import settled_count
from tests.integration.follow.test_http import bearer
from tests.integration.follow.test_rebuild import quiet, rebuilt_differences

BIG = ["alice", "bob", "carol", "dan", "erin"]


@pytest.fixture
async def sharing(ns) -> AsyncIterator[Service]:
    # More than 2 followers share entries, 2 per entry: "big" has 3 entries per work.
    service = build_service(follow_settings(ns, fanout_shared_above=2, fanout_shared_chunk_size=2))
    async with service.running():
        yield service


@pytest.fixture
async def http(sharing) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sharing.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://follow") as client:
        yield client


async def titles(http: httpx.AsyncClient, service: Service, user: str, **params: Any) -> list[tuple[str, bool]]:
    """The user's whole inbox, page by page (pages of 1: every cursor is used)."""
    out: list[tuple[str, bool]] = []
    cursor = None
    while True:
        query = {"limit": 1, **params, **({"cursor": cursor} if cursor else {})}
        page = (await http.get(f"/users/{user}/notifications", params=query, headers=bearer(service, user))).json()
        out += [(n["title"].rsplit(": ", 1)[1], n["read"]) for n in page["notifications"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


async def test_shared_entries_page_mark_read_and_rebuild_like_a_users_own(ns, producer, sharing, http) -> None:
    store = store_of(sharing)
    await publish(producer, ns, [registered("big"), registered("small", name="Ada")], Topic.PROFILE_EVENTS)
    await known(sharing, "big")
    await known(sharing, "small")
    await publish(
        producer, ns, [follow_cmd(u, "big") for u in BIG] + [follow_cmd("alice", "small")], Topic.WEBAPP_FOLLOWS
    )
    await settled_count(ns, sharing, "big", 5)
    await settled_count(ns, sharing, "small", 1)
    works = [
        work_added("big", "W1", at=later(1)),
        work_added("small", "S1", at=later(2)),
        work_added("big", "W2", revision=3, at=later(3)),
        work_added("small", "S2", revision=3, at=later(4)),
    ]
    await publish(producer, ns, works[::2], Topic.PROFILE_EVENTS, key="big")
    await publish(producer, ns, works[1::2], Topic.PROFILE_EVENTS, key="small")
    await eventually(lambda: store.shared.count_documents({"published": True}), until=lambda n: n == 6)
    await eventually(lambda: store.inbox.count_documents({}), until=lambda n: n == 2)
    assert await store.inbox.count_documents({"author_id": "big"}) == 0, "the big fan-outs wrote no own entries"

    everything = [("S2", False), ("W2", False), ("S1", False), ("W1", False)]
    assert await titles(http, sharing, "alice") == everything
    assert await titles(http, sharing, "alice", unread=True) == everything
    assert await titles(http, sharing, "bob") == [("W2", False), ("W1", False)]

    alice = bearer(sharing, "alice")
    page = (await http.get("/users/alice/notifications", headers=alice)).json()["notifications"]
    w2 = next(n["notification_id"] for n in page if n["title"].endswith("W2"))
    await http.post("/users/alice/notifications/read", json={"notification_ids": [w2]}, headers=alice)
    await eventually(
        lambda: titles(http, sharing, "alice", unread=True),
        until=lambda t: t == [("S2", False), ("S1", False), ("W1", False)],
        what="W2 read",
    )
    assert await titles(http, sharing, "alice") == [("S2", False), ("W2", True), ("S1", False), ("W1", False)]
    await http.post("/users/alice/notifications/read", headers=alice)
    await eventually(lambda: titles(http, sharing, "alice", unread=True), until=lambda t: t == [], what="all read")
    assert await titles(http, sharing, "alice") == [(t, True) for t, _ in everything]
    assert await titles(http, sharing, "bob", unread=True) == [("W2", False), ("W1", False)], "alice's marks only"

    await quiet(sharing)
    differences, _ = await rebuilt_differences(ns, sharing.settings)
    assert differences == []
