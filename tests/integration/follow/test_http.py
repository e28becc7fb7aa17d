"""The follow service's HTTP API against the real broker and store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from contracts.topics import Topic
from service_runtime.auth import mint_token
from tests.conftest import eventually
from tests.integration.follow.conftest import (
    events,
    follow_cmd,
    known,
    later,
    publish,
    registered,
    store_of,
    work_added,
)
from tests.integration.follow.test_follows import settled_count


@pytest.fixture
async def http(follow) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=follow.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://follow") as client:
        yield client


def bearer(follow, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(follow.settings, user)}"}


async def test_follow_and_unfollow_over_http_publish_commands_for_the_token_user(ns, producer, follow, http) -> None:
    await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
    await known(follow, "a1")
    r = await http.post("/follows", json={"author_id": "a1"}, headers=bearer(follow, "alice"))
    assert r.status_code == 202 and r.json()["command"] == "FollowRequested"
    await settled_count(ns, follow, "a1", 1)
    followed = await events(ns, Topic.FOLLOWS_EVENTS, "AuthorFollowed")
    assert followed[0]["data"]["user_id"] == "alice"
    r = await http.get("/users/alice/following")
    assert [f["author_id"] for f in r.json()["following"]] == ["a1"]
    r = await http.delete("/follows/a1", headers=bearer(follow, "alice"))
    assert r.status_code == 202
    await settled_count(ns, follow, "a1", 0)
    assert (await http.get("/users/alice/following")).json()["following"] == []


async def test_bad_requests_are_refused_clearly(follow, http) -> None:
    assert (await http.post("/follows", json={"author_id": "a1"})).status_code == 401
    bad_token = {"Authorization": "Bearer not-a-token"}
    assert (await http.post("/follows", json={"author_id": "a1"}, headers=bad_token)).status_code == 401
    r = await http.post("/follows", json={"author_id": "bad id!"}, headers=bearer(follow, "alice"))
    # Every error is an RFC 9457 problem; a 422 says what and where, never echoing the input.
    assert (r.status_code, r.headers["content-type"]) == (422, "application/problem+json")
    problem = r.json()
    assert {k: problem[k] for k in ("type", "title", "status", "instance")} == {
        "type": "about:blank",
        "title": "Unprocessable Entity",
        "status": 422,
        "instance": "/follows",
    }
    assert [e["loc"] for e in problem["errors"]] == [["body", "author_id"]] and "bad id!" not in r.text
    r = await http.post(
        "/follows", content=b'{"author_id": ', headers={**bearer(follow, "alice"), "content-type": "application/json"}
    )
    assert (r.status_code, r.json()["detail"]) == (400, "the body is not valid JSON")
    r = await http.post("/follows", json={"author_id": "a1", "user_id": "bob"}, headers=bearer(follow, "alice"))
    assert r.status_code == 422, "unknown fields are refused"
    r = await http.post("/follows", json={"author_id": "a1"}, headers=bearer(follow, "not an id"))
    assert (r.status_code, r.json()["title"]) == (401, "Unauthorized"), "a token whose subject is no id is invalid"
    assert (await http.post("/follows", json={}, headers=bearer(follow, "alice"))).status_code == 422
    assert (await http.delete("/follows/bad%20id", headers=bearer(follow, "alice"))).status_code == 422
    assert (await http.get("/authors/nobody/followers")).status_code == 404


async def test_followers_are_paged_by_cursor(ns, producer, follow, http) -> None:
    await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
    await known(follow, "a1")
    await publish(producer, ns, [follow_cmd(f"u{i:02d}", "a1") for i in range(25)], Topic.WEBAPP_FOLLOWS)
    await settled_count(ns, follow, "a1", 25)
    seen, cursor = [], None
    while True:
        r = await http.get("/authors/a1/followers", params={"limit": 10, **({"cursor": cursor} if cursor else {})})
        body = r.json()
        assert body["follower_count"] == 25
        seen += [f["user_id"] for f in body["followers"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"u{i:02d}" for i in range(25)]


async def test_notifications_are_only_for_the_user_themself(ns, producer, follow, http) -> None:
    await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
    await known(follow, "a1")
    await publish(producer, ns, [follow_cmd("alice", "a1"), follow_cmd("bob", "a1")], Topic.WEBAPP_FOLLOWS)
    await settled_count(ns, follow, "a1", 2)
    await publish(
        producer,
        ns,
        [work_added("a1", "Paper one", at=later(1)), work_added("a1", "Paper two", revision=3, at=later(2))],
        Topic.PROFILE_EVENTS,
    )
    await eventually(lambda: store_of(follow).inbox.count_documents({}), until=lambda n: n == 4)

    assert (await http.get("/users/alice/notifications")).status_code == 401
    assert (await http.get("/users/alice/notifications", headers=bearer(follow, "bob"))).status_code == 403
    assert (await http.post("/users/alice/notifications/read", headers=bearer(follow, "bob"))).status_code == 403

    alice = bearer(follow, "alice")
    first = (await http.get("/users/alice/notifications", params={"limit": 1}, headers=alice)).json()
    assert "Paper two" in first["notifications"][0]["title"]  # newest first
    second = (
        await http.get("/users/alice/notifications", params={"limit": 1, "cursor": first["next_cursor"]}, headers=alice)
    ).json()
    assert "Paper one" in second["notifications"][0]["title"] and second["next_cursor"] is None
    # The cursor is the (time, id) key of the last one shown: any such key is a place in the
    # inbox (before the first notification: an empty page), anything else is refused.
    created_ms, shown_id = first["next_cursor"].split(".")
    assert shown_id == first["notifications"][0]["notification_id"] and int(created_ms) > 0
    page = await http.get("/users/alice/notifications", params={"cursor": f"0.{shown_id}"}, headers=alice)
    assert (page.status_code, page.json()["notifications"]) == (200, [])
    page = await http.get("/users/alice/notifications", params={"cursor": "garbage"}, headers=alice)
    assert page.status_code == 422
    newest = first["notifications"][0]["notification_id"]
    r = await http.post("/users/alice/notifications/read", json={"notification_ids": [newest]}, headers=alice)
    assert r.status_code == 202 and r.json()["command"] == "NotificationsRead"

    async def alice_unread() -> list[str]:
        page = (await http.get("/users/alice/notifications", params={"unread": True}, headers=alice)).json()
        return [n["title"] for n in page["notifications"]]

    await eventually(
        alice_unread,
        until=lambda titles: titles == [second["notifications"][0]["title"]],
        what="the read mark applied through notifications.events",
    )
    bob_unread = (
        await http.get("/users/bob/notifications", params={"unread": True}, headers=bearer(follow, "bob"))
    ).json()
    assert len(bob_unread["notifications"]) == 2, "alice's read mark is hers only"
