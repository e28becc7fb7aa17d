"""Follows through the real broker and store: idempotent edges, exact counts under bursts,
redelivery and races, unknown authors, self-follows and malformed commands."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.topics import Topic, dlq_topic
from service_runtime.service import Service
from services.follow.app import build_service
from services.follow.sources import SourceEvents
from tests.conftest import Namespace, eventually
from tests.integration.follow.conftest import (
    author_doc,
    claim_approved,
    events,
    follow_cmd,
    follow_settings,
    known,
    publish,
    registered,
    store_of,
    unfollow_cmd,
)


async def edges_in_store(service: Service, author: str) -> int:
    return await store_of(service).edges.count_documents({"author_id": author, "active": True})


async def parked_for(service: Service, author: str) -> list[dict[str, Any]]:
    """The follows parked in the author's document, in the order they came."""
    return list((await store_of(service).author(author) or {}).get("parked") or [])


async def clock() -> datetime:
    return datetime.now(UTC)


async def settled_count(ns: Namespace, service: Service, author: str, expected: int) -> None:
    """Wait for the last FollowerCountChanged of the author to say ``expected``."""

    async def last_count() -> int | None:
        counts = [
            e
            for e in await events(ns, Topic.FOLLOWS_EVENTS, "FollowerCountChanged")
            if e["data"]["author_id"] == author
        ]
        return max(counts, key=lambda e: e["data"]["revision"])["data"]["count"] if counts else None

    await eventually(last_count, until=lambda c: c == expected, timeout=60, what=f"count {expected}")
    # The events leave the author's outbox right after the broker acknowledged them.
    doc = await eventually(
        lambda: author_doc(service, author), until=lambda d: bool(d) and not d.get("outbox"), what="outbox delivered"
    )
    assert doc["follower_count"] == expected


async def test_follow_twice_is_one_follow_and_unfollow_of_nothing_is_a_no_op(ns, producer, follow) -> None:
    await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
    await known(follow, "a1")
    await publish(
        producer,
        ns,
        [follow_cmd("u1", "a1"), follow_cmd("u1", "a1"), unfollow_cmd("u2", "a1"), follow_cmd("u2", "a1")],
        Topic.WEBAPP_FOLLOWS,
    )
    await settled_count(ns, follow, "a1", 2)
    followed = await events(ns, Topic.FOLLOWS_EVENTS, "AuthorFollowed")
    assert sorted((e["data"]["user_id"], e["data"]["count"]) for e in followed) == [("u1", 1), ("u2", 2)]
    assert await events(ns, Topic.FOLLOWS_EVENTS, "AuthorUnfollowed") == []
    assert await edges_in_store(follow, "a1") == 2


async def test_counts_stay_exact_under_a_burst_redelivery_and_races(ns, producer, follow) -> None:
    await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
    await known(follow, "a1")
    rng = random.Random(7)
    users = [f"u{i}" for i in range(300)]
    base = datetime.now(UTC)
    burst = []
    for n in range(1500):  # follows and unfollows of the same author, interleaved
        user = rng.choice(users)
        at = base + timedelta(milliseconds=n)
        burst.append(follow_cmd(user, "a1", at) if rng.random() < 0.6 else unfollow_cmd(user, "a1", at))
    # A follow racing an unfollow of the same user, back to back.
    burst += [follow_cmd("racer", "a1"), unfollow_cmd("racer", "a1"), follow_cmd("racer", "a1")]
    await publish(producer, ns, burst, Topic.WEBAPP_FOLLOWS)
    # A whole batch delivered again (the web app retried, or a producer re-sent it).
    await publish(producer, ns, burst[:400], Topic.WEBAPP_FOLLOWS)

    state: dict[str, bool] = {}
    for env in burst:  # the expected outcome: the commands applied once, in order
        state[env.data["user_id"]] = env.event_type == "FollowRequested"
    for env in burst[:400]:
        state[env.data["user_id"]] = env.event_type == "FollowRequested"
    expected = sum(state.values())
    await settled_count(ns, follow, "a1", expected)
    assert await edges_in_store(follow, "a1") == expected
    counts = [e["data"] for e in await events(ns, Topic.FOLLOWS_EVENTS, "FollowerCountChanged")]
    revisions = [c["revision"] for c in counts]
    assert len(set(revisions)) == len(revisions), "every count change has its own revision"


async def test_a_redelivered_batch_changes_nothing(ns, producer, follow) -> None:
    """The same command records again (same event ids, as after a crash before commit)."""
    await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
    await known(follow, "a1")
    batch = [follow_cmd(f"u{i}", "a1") for i in range(20)] + [unfollow_cmd("u3", "a1")]
    await publish(producer, ns, batch, Topic.WEBAPP_FOLLOWS)
    await settled_count(ns, follow, "a1", 19)
    await publish(producer, ns, batch, Topic.WEBAPP_FOLLOWS)
    await publish(producer, ns, [follow_cmd("marker", "a1")], Topic.WEBAPP_FOLLOWS)
    await settled_count(ns, follow, "a1", 20)  # only the marker added one
    followed = await events(ns, Topic.FOLLOWS_EVENTS, "AuthorFollowed")
    assert len({e["event_id"] for e in followed}) == 21


async def test_following_an_unknown_author_is_rejected_after_the_wait(ns, producer) -> None:
    service = build_service(follow_settings(ns, unknown_author_wait_s=1.0))
    async with service.running():
        await publish(producer, ns, [follow_cmd("u1", "ghost"), follow_cmd("u2", "ghost")], Topic.WEBAPP_FOLLOWS)
        rejected = await eventually(
            lambda: events(ns, Topic.FOLLOWS_EVENTS, "FollowRejected"),
            until=lambda r: len(r) == 2,
            what="two rejections",
        )
        assert {(r["data"]["user_id"], r["data"]["reason"]) for r in rejected} == {
            ("u1", "unknown_author"),
            ("u2", "unknown_author"),
        }
        assert await parked_for(service, "ghost") == []
        # The author arriving later changes nothing for the rejected follows.
        await publish(producer, ns, [registered("ghost")], Topic.PROFILE_EVENTS)
        await publish(producer, ns, [follow_cmd("u3", "ghost")], Topic.WEBAPP_FOLLOWS)
        await settled_count(ns, service, "ghost", 1)
        assert len(await events(ns, Topic.FOLLOWS_EVENTS, "FollowRejected")) == 2


async def test_a_follow_is_not_rejected_while_the_authors_registration_is_still_unread(
    ns, producer, monkeypatch
) -> None:
    """The author is registered in profile.events, but the source consumer has not read
    that far (held here, as a long backlog holds it): the wait running out on the clock
    must not reject the follow; it is applied once the registration is read."""
    gate = asyncio.Event()
    handle = SourceEvents.handle

    async def held(self: SourceEvents, batch) -> None:
        await gate.wait()
        await handle(self, batch)

    monkeypatch.setattr(SourceEvents, "handle", held)
    service = build_service(follow_settings(ns, unknown_author_wait_s=1.0))
    async with service.running():
        await publish(producer, ns, [registered("lagged")], Topic.PROFILE_EVENTS)
        await publish(producer, ns, [follow_cmd("u1", "lagged")], Topic.WEBAPP_FOLLOWS)
        first = await eventually(
            lambda: parked_for(service, "lagged"), until=lambda p: len(p) == 1, what="first follow parked"
        )
        await eventually(
            clock, until=lambda now: now > first[0]["wait_until"], what="the wait of the first follow over on the clock"
        )
        # A second command of the author: its batch decides on the first follow, whose
        # wait is over on the clock (a wall-clock rule rejects it here).
        second = follow_cmd("u2", "lagged")
        await publish(producer, ns, [second], Topic.WEBAPP_FOLLOWS)
        await eventually(
            lambda: parked_for(service, "lagged"),
            until=lambda p: str(second.event_id) in {d["follow_id"] for d in p},
            what="second follow parked",
        )
        gate.set()
        await settled_count(ns, service, "lagged", 2)
        assert await events(ns, Topic.FOLLOWS_EVENTS, "FollowRejected") == []
        assert await parked_for(service, "lagged") == []


async def test_a_parked_follow_and_its_unfollow_applied_together_store_the_count(ns, producer, follow) -> None:
    """Applied in one batch they net to no change, and the count is still stored (0), as
    when they are applied one batch each: a rebuild may batch them differently from live."""
    await publish(producer, ns, [follow_cmd("u1", "pair"), unfollow_cmd("u1", "pair")], Topic.WEBAPP_FOLLOWS)
    parked = await eventually(
        lambda: parked_for(follow, "pair"), until=lambda p: bool(p and p[0].get("unfollow")), what="both parked"
    )
    assert len(parked) == 1, "the unfollow waits with its follow"
    await publish(producer, ns, [registered("pair")], Topic.PROFILE_EVENTS)
    doc = await eventually(
        lambda: author_doc(follow, "pair"),
        until=lambda d: bool(d.get("known")) and not d.get("parked") and "follower_count" in d,
        what="applied, count stored",
    )
    assert doc["follower_count"] == 0 and await edges_in_store(follow, "pair") == 0
    assert "count_revision" not in doc, "no count change was published"
    assert [e["data"]["user_id"] for e in await events(ns, Topic.FOLLOWS_EVENTS, "AuthorUnfollowed")] == ["u1"]
    assert await events(ns, Topic.FOLLOWS_EVENTS, "FollowerCountChanged") == []


async def test_parked_follows_apply_in_order_when_the_author_arrives(ns, producer, follow) -> None:
    await publish(
        producer,
        ns,
        [follow_cmd("u1", "late"), follow_cmd("u2", "late"), unfollow_cmd("u1", "late"), follow_cmd("u3", "late")],
        Topic.WEBAPP_FOLLOWS,
    )
    # Three parked follows, u1's with its unfollow.
    await eventually(lambda: parked_for(follow, "late"), until=lambda p: len(p) == 3, what="parked")
    await publish(producer, ns, [registered("late")], Topic.PROFILE_EVENTS)
    await settled_count(ns, follow, "late", 2)
    followed = [e["data"]["user_id"] for e in await events(ns, Topic.FOLLOWS_EVENTS, "AuthorFollowed")]
    unfollowed = [e["data"]["user_id"] for e in await events(ns, Topic.FOLLOWS_EVENTS, "AuthorUnfollowed")]
    assert followed == ["u1", "u2", "u3"] and unfollowed == ["u1"]
    assert await events(ns, Topic.FOLLOWS_EVENTS, "FollowRejected") == []


async def test_the_owner_cannot_follow_their_own_record(ns, producer, follow) -> None:
    await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
    await publish(producer, ns, [claim_approved("a1", owner="quoc")], Topic.CLAIMS_EVENTS)
    await eventually(
        lambda: author_doc(follow, "a1"), until=lambda d: bool(d.get("known")) and d.get("owner_user_id") == "quoc"
    )
    await publish(producer, ns, [follow_cmd("quoc", "a1"), follow_cmd("fan", "a1")], Topic.WEBAPP_FOLLOWS)
    await settled_count(ns, follow, "a1", 1)
    rejected = await events(ns, Topic.FOLLOWS_EVENTS, "FollowRejected")
    assert [(r["data"]["user_id"], r["data"]["reason"]) for r in rejected] == [("quoc", "self_follow")]


async def test_malformed_commands_are_dead_lettered_and_the_stream_goes_on(ns, producer, follow) -> None:
    await publish(producer, ns, [registered("a1")], Topic.PROFILE_EVENTS)
    good = follow_cmd("u1", "a1")
    bad_id = good.model_copy(update={"data": {"user_id": "bad id with spaces", "author_id": "a1"}})
    missing = good.model_copy(update={"data": {"author_id": "a1"}})
    for raw in (b"{not json", bad_id.to_bytes(), missing.to_bytes()):
        await producer.send_and_wait(ns.topic(Topic.WEBAPP_FOLLOWS), raw, key=b"a1")
    await publish(producer, ns, [good], Topic.WEBAPP_FOLLOWS)
    await settled_count(ns, follow, "a1", 1)
    dead = await eventually(lambda: events(ns, dlq_topic(Topic.WEBAPP_FOLLOWS)), until=lambda d: len(d) == 3)
    assert all(d["reason"] == "undecodable" for d in dead)
    assert "user_id" in dead[1]["error"]


async def test_two_authors_are_independent_in_one_batch(ns, producer, follow) -> None:
    await publish(producer, ns, [registered("a1"), registered("a2")], Topic.PROFILE_EVENTS)
    await eventually(
        lambda: store_of(follow).author_facts(["a1", "a2"]), until=lambda d: all(f.known for f in d.values())
    )
    cmds = [follow_cmd(f"u{i}", "a1" if i % 2 else "a2") for i in range(40)]
    await asyncio.gather(publish(producer, ns, cmds, Topic.WEBAPP_FOLLOWS))
    await settled_count(ns, follow, "a1", 20)
    await settled_count(ns, follow, "a2", 20)
