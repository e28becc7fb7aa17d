"""Notification fan-out through the real broker and store: one notification per follower
and source event, in chunks, replay-safe, only for who followed before the event."""

from __future__ import annotations

from collections import Counter

from contracts.events.notifications import fanout_id, notification_id
from contracts.topics import Topic
from tests.conftest import eventually
from tests.integration.follow.conftest import (
    claim_approved,
    events,
    follow_cmd,
    known,
    later,
    plan_of,
    publish,
    registered,
    store_of,
    trust_changed,
    unfollow_cmd,
    work_added,
)
from tests.integration.follow.test_follows import settled_count


async def inbox_count(service, **query) -> int:
    return await store_of(service).inbox.count_documents(query)


async def followers(ns, producer, service, author: str, users: list[str]) -> None:
    await publish(producer, ns, [registered(author)], Topic.PROFILE_EVENTS)
    await known(service, author)
    await publish(producer, ns, [follow_cmd(u, author) for u in users], Topic.WEBAPP_FOLLOWS)
    await settled_count(ns, service, author, len(users))


async def test_a_new_work_notifies_every_follower_once_in_chunks(ns, producer, follow) -> None:
    users = [f"u{i:02d}" for i in range(30)]
    await followers(ns, producer, follow, "a1", users)
    work = work_added("a1", at=later())
    await publish(producer, ns, [work], Topic.PROFILE_EVENTS)
    await eventually(lambda: inbox_count(follow), until=lambda n: n == 30, what="30 notifications")
    notes = await eventually(lambda: events(ns, Topic.NOTIFICATIONS_EVENTS), until=lambda e: len(e) >= 30)
    assert sorted(n["data"]["user_id"] for n in notes) == users
    assert {n["data"]["notification_id"] for n in notes} == {str(notification_id(work.event_id, u)) for u in users}
    assert all("Sequence to Sequence Learning" in n["data"]["title"] for n in notes)
    chunks = await events(ns, Topic.FOLLOW_FANOUT)
    assert len(chunks) == 5  # 30 followers in chunks of 7
    # Keys spread the chunks over partitions; every user is in exactly one chunk's range.
    assert len({c["data"]["chunk_key"] for c in chunks}) == 5


async def test_a_replayed_work_added_notifies_nobody_twice(ns, producer, follow) -> None:
    await followers(ns, producer, follow, "a1", [f"u{i}" for i in range(10)])
    work = work_added("a1", at=later())
    await publish(producer, ns, [work], Topic.PROFILE_EVENTS)
    await eventually(lambda: inbox_count(follow), until=lambda n: n == 10)
    await publish(producer, ns, [work, work], Topic.PROFILE_EVENTS)  # replayed, same event id
    second = work_added("a1", title="Another paper", revision=3, at=later())
    await publish(producer, ns, [second], Topic.PROFILE_EVENTS)
    await eventually(lambda: inbox_count(follow), until=lambda n: n == 20, what="the second work's 10")
    notes = await eventually(lambda: events(ns, Topic.NOTIFICATIONS_EVENTS), until=lambda e: len(e) >= 20)
    per_id = Counter(n["data"]["notification_id"] for n in notes)
    assert len(per_id) == 20 and max(per_id.values()) == 1


async def test_only_who_followed_before_the_event_is_notified(ns, producer, follow) -> None:
    await followers(ns, producer, follow, "a1", ["stays", "leaves", "returns"])
    await publish(producer, ns, [unfollow_cmd("leaves", "a1"), unfollow_cmd("returns", "a1")], Topic.WEBAPP_FOLLOWS)
    await settled_count(ns, follow, "a1", 1)
    work = work_added("a1", at=later(0.5))
    # Follows after the source event (by their own time) are not notified of it.
    await publish(
        producer,
        ns,
        [follow_cmd("newcomer", "a1", at=later(5)), follow_cmd("returns", "a1", at=later(5))],
        Topic.WEBAPP_FOLLOWS,
    )
    await settled_count(ns, follow, "a1", 3)
    await publish(producer, ns, [work], Topic.PROFILE_EVENTS)
    plan = await eventually(
        lambda: plan_of(store_of(follow), str(fanout_id(work.event_id))),
        until=lambda p: bool(p) and len(p["done"]) == len(p["chunks"]),
    )
    assert plan["followers"] == 1
    inbox = await store_of(follow).inbox.find({}).to_list(None)
    assert [d["user_id"] for d in inbox] == ["stays"]


async def test_claim_approved_and_upward_band_changes_notify_but_downward_ones_do_not(ns, producer, follow) -> None:
    await followers(ns, producer, follow, "a1", ["f1", "f2"])
    await publish(producer, ns, [claim_approved("a1", owner="quoc", at=later())], Topic.CLAIMS_EVENTS)
    await publish(
        producer,
        ns,
        [
            trust_changed("a1", "Trusted", "Established", revision=2, at=later()),
            trust_changed("a1", "Emerging", "Trusted", revision=3, at=later()),
            trust_changed("a1", "Emerging", None, revision=4, at=later()),
        ],
        Topic.TRUST_EVENTS,
    )
    await eventually(lambda: inbox_count(follow), until=lambda n: n == 4)
    kinds = Counter(d["kind"] for d in await store_of(follow).inbox.find({}).to_list(None))
    assert kinds == {"claim_approved": 2, "trust_band_up": 2}
    titles = {d["title"] for d in await store_of(follow).inbox.find({"kind": "trust_band_up"}).to_list(None)}
    assert titles == {"Quoc V. Le is now Trusted"}


async def test_an_author_without_followers_plans_an_empty_fanout(ns, producer, follow) -> None:
    await publish(producer, ns, [registered("lonely")], Topic.PROFILE_EVENTS)
    work = work_added("lonely", at=later())
    await publish(producer, ns, [work], Topic.PROFILE_EVENTS)
    plan = await eventually(
        lambda: plan_of(store_of(follow), str(fanout_id(work.event_id))), until=lambda p: bool(p.get("published"))
    )
    assert plan["chunks"] == [] and await inbox_count(follow) == 0
