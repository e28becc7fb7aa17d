"""A batch of source events for many authors, handled as one batch by the follow
service's source handler against the real store and broker (the running service's chunk
workers notify): exactly the expected notifications, once, also when the batch comes
again, whole or after a crash between writing a plan and publishing its chunks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from contracts.envelope import Envelope
from contracts.events.notifications import fanout_id, notification_id
from contracts.events.profile import AuthorUpdated, WorkAdded, WorkSummary
from contracts.registry import decode
from contracts.topics import Topic
from service_runtime import outbox
from service_runtime.delivery import Incoming
from service_runtime.outbox import Outbox
from service_runtime.publishing import Outgoing
from services.follow.fanout import FanoutPlanner
from services.follow.sources import SourceEvents
from tests.conftest import eventually
from tests.integration.follow.conftest import (
    author_state,
    claim_approved,
    events,
    follow_cmd,
    later,
    plan_of,
    publish,
    registered,
    store_of,
    trust_changed,
    wrap,
)
from tests.integration.follow.test_follows import settled_count

AUTHORS = [f"b{i}" for i in range(12)]
# Every third author has followers (different sets, some shared); the rest have none.
FOLLOWERS = {a: [f"{a}-fan{j}" for j in range(3 + i)] + ["everyone"] for i, a in enumerate(AUTHORS) if i % 3 == 0}


async def _never(chunks: object, sizes: object) -> None:
    raise AssertionError("no fan-out is notified by the planner here")


def as_batch(envelopes: list[Envelope], topic_of: Mapping[str, str]) -> list[Incoming[Any]]:
    """The records a consumer would hand over: decoded the way the runtime decodes them."""
    out = []
    for offset, e in enumerate(envelopes):
        topic = topic_of[e.event_type]
        envelope, payload = decode(topic, e.to_bytes())
        out.append(Incoming(envelope, payload, topic, partition=0, offset=offset))
    return out


async def test_a_batch_for_many_authors_notifies_exactly_the_followers_once_even_redelivered(
    ns, producer, follow
) -> None:
    store = store_of(follow)
    await publish(producer, ns, [registered(a, name=f"Old {a}") for a in AUTHORS], Topic.PROFILE_EVENTS)
    await eventually(lambda: store.author_facts(AUTHORS), until=lambda d: all(f.known for f in d.values()))
    await publish(
        producer, ns, [follow_cmd(u, a) for a, users in FOLLOWERS.items() for u in users], Topic.WEBAPP_FOLLOWS
    )
    for a, users in FOLLOWERS.items():
        await settled_count(ns, follow, a, len(users))

    # Per author, interleaved with the others: a band up (old name), a rename, a new work,
    # the claim approved (new name), a band down (no notification), a stale rename (ignored).
    per_author = {
        a: [
            trust_changed(a, "Trusted", "Established", revision=2, at=later()),
            wrap(AuthorUpdated(author_id=a, author=author_state(a, name=f"New {a}", revision=2))),
            wrap(
                WorkAdded(
                    author_id=a,
                    author=author_state(a, name=f"New {a}", revision=3),
                    work=WorkSummary(work_id=f"w-{a}", type="article", year=2026, title=f"Paper of {a}"),
                ),
                later(),
            ),
            claim_approved(a, owner=f"owner-{a}", at=later()),
            trust_changed(a, "Emerging", "Trusted", revision=3, at=later()),
            wrap(AuthorUpdated(author_id=a, author=author_state(a, name="Stale", revision=1))),
        ]
        for a in AUTHORS
    }
    envelopes = [e for step in zip(*per_author.values(), strict=True) for e in step]
    topic_of = {
        "TrustScoreChanged": Topic.TRUST_EVENTS,
        "AuthorUpdated": Topic.PROFILE_EVENTS,
        "WorkAdded": Topic.PROFILE_EVENTS,
        "ClaimApproved": Topic.CLAIMS_EVENTS,
    }
    batch = as_batch(envelopes, topic_of)
    # Every plan through follow.fanout (none notified by the planner), as the crash below needs.
    settings = follow.settings.model_copy(update={"fanout_inline_chunks": 0})
    sources = SourceEvents(store, FanoutPlanner(store, follow.publisher, follow.outbox, settings, _never))

    await sources.handle(batch)
    expected = {
        str(notification_id(e.event_id, u)): (u, e.event_type)
        for a, users in FOLLOWERS.items()
        for e in per_author[a][:4]
        if e.event_type != "AuthorUpdated"
        for u in users
    }
    assert len(expected) == 3 * sum(len(u) for u in FOLLOWERS.values())

    async def inbox() -> list[dict]:
        return await store.inbox.find({}).to_list(None)

    await eventually(inbox, until=lambda d: len(d) == len(expected), timeout=60, what="every notification")

    # The same batch again (a redelivery), then once more after a crash that left one plan
    # written but not published (its chunk requests still in its outbox): nothing new in
    # the inbox, no notification id twice.
    await sources.handle(batch)
    crashed = str(fanout_id(per_author["b0"][2].event_id))
    requests = [
        Outgoing(str(Topic.FOLLOW_FANOUT), c["data"]["chunk_key"], Envelope.model_validate(c))
        for c in await events(ns, Topic.FOLLOW_FANOUT)
        if c["data"]["fanout_id"] == crashed
    ]
    await store.fanouts.update_one({"_id": crashed}, outbox.push({}, requests))
    # The process that comes back remembers nothing of what it published before.
    restarted = Outbox(follow.publisher, clear_after_s=follow.settings.outbox_clear_after_s)
    await SourceEvents(store, FanoutPlanner(store, follow.publisher, restarted, settings, _never)).handle(batch)
    plan = await eventually(lambda: plan_of(store, crashed), until=lambda p: bool(p.get("published")))
    assert len(plan["done"]) == len(plan["chunks"])

    docs = await inbox()
    assert {d["_id"]: (d["user_id"], _kind_event(d["kind"])) for d in docs} == expected
    titles = {(d["author_id"], d["kind"]): d["title"] for d in docs}
    for a in FOLLOWERS:
        assert titles[(a, "trust_band_up")] == f"Old {a} is now Trusted"  # the name known at that point
        assert titles[(a, "new_work")] == f"New {a} published a new work: Paper of {a}"
        assert titles[(a, "claim_approved")] == f"New {a} claimed their researcher profile"
    notes = await eventually(
        lambda: events(ns, Topic.NOTIFICATIONS_EVENTS, "NotificationCreated"),
        until=lambda n: len({x["event_id"] for x in n}) >= len(expected),
    )
    assert {n["data"]["notification_id"] for n in notes} == set(expected)
    # Only the crashed plan's chunks went out a second time, with their first event ids.
    sent = Counter(c["event_id"] for c in await events(ns, Topic.FOLLOW_FANOUT))
    planned = sum(len(p["chunks"]) for p in (await _plans(store, per_author)).values())
    assert len(sent) == planned and sum(sent.values()) == planned + len(plan["chunks"])

    # Authors without followers: a plan each, empty and published at once; owners and names set.
    plans = await _plans(store, per_author)
    assert len(plans) == 3 * len(AUTHORS)
    for p in plans.values():
        assert p["published"] and (p["followers"] > 0) == (p["author_id"] in FOLLOWERS)
    authors = {d["_id"]: d async for d in store.authors.find({"_id": {"$in": AUTHORS}})}
    assert {a: (d["display_name"], d["owner_user_id"]) for a, d in authors.items()} == {
        a: (f"New {a}", f"owner-{a}") for a in AUTHORS
    }


def _kind_event(kind: str) -> str:
    return {"trust_band_up": "TrustScoreChanged", "new_work": "WorkAdded", "claim_approved": "ClaimApproved"}[kind]


async def _plans(store, per_author) -> dict[str, dict]:
    ids = [
        str(fanout_id(e.event_id))
        for steps in per_author.values()
        for e in steps[:4]
        if e.event_type != "AuthorUpdated"
    ]
    plans = {p["_id"]: p async for p in store.fanouts.find({"_id": {"$in": ids}})}
    return {i: {**p, "published": not p.get("outbox")} for i, p in plans.items()}
