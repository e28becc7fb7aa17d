"""A large fan-out is cut into chunks away from the source events, by the ``ChunkCutter``:
cut while its first chunks already run, and carried on where it stopped when the cutting
process dies, against the real store and broker."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import pytest

from contracts.envelope import Envelope
from contracts.events.notifications import FanoutCutRequested, fanout_id
from contracts.topics import Topic
from service_runtime.service import Service
from service_runtime.topic_reader import iter_topic
from services.follow.app import build_service
from services.follow.fanout import ChunkCutter
from services.follow.rules import ChunkRange, Plan, in_range
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore
from tests.conftest import Namespace, eventually
from tests.integration.follow.conftest import follow_settings, later, plan_of, publish, store_of, work_added

AUTHOR = "openalex:A95"
USERS = [f"u{i:03d}" for i in range(95)]
EDGES_EACH = 10


@pytest.fixture
async def cutting(ns: Namespace) -> AsyncIterator[Service]:
    settings = follow_settings(ns, fanout_shared_above=20, fanout_shared_chunk_size=EDGES_EACH)
    service = build_service(settings)
    async with service.running():
        yield service


class Killed(Exception):
    """The cutting process died here."""


async def chunk_requests_on_topic(ns: Namespace, fid: str) -> dict[str, dict[str, Any]]:
    """The chunk requests of the fan-out on follow.fanout, by event id."""
    out: dict[str, dict[str, Any]] = {}
    async for batch in iter_topic(ns.infra["kafka"], ns.topic(Topic.FOLLOW_FANOUT)):
        for record in batch:
            envelope = json.loads(record.value)
            if envelope["event_type"] == "FanoutChunkRequested" and envelope["data"]["fanout_id"] == fid:
                out[envelope["event_id"]] = envelope["data"]
    return out


def assert_ranges_cover_each_once(chunks: list[ChunkRange], users: list[str]) -> None:
    assert [c.number for c in chunks] == list(range(len(chunks)))
    assert chunks[0].after_user_id is None
    assert all(c.after_user_id == p.upto_user_id for p, c in itertools.pairwise(chunks))
    for user in users:
        assert sum(in_range(user, c.after_user_id, c.upto_user_id) for c in chunks) == 1, user
    assert sum(c.followers for c in chunks) == len(users)


async def test_a_cut_broken_off_carries_on_from_its_last_recorded_chunk(ns, cutting, monkeypatch) -> None:
    store = store_of(cutting)
    moment = later()
    await store.seed_followers(AUTHOR, "Nine Five", USERS, moment - timedelta(hours=1))
    source = uuid.uuid4()
    fid = str(fanout_id(source))
    plan = Plan(fid, AUTHOR, "new_work", "New work by Nine Five: X", source, moment, [], True, cut=False, counted=95)
    assert not await store.insert_plans([(plan, [])])
    request = FanoutCutRequested(
        fanout_id=uuid.UUID(fid),
        author_id=AUTHOR,
        kind="new_work",
        source_event_id=source,
        title=plan.title,
        followed_before=moment,
    )
    cause = Envelope.wrap(request, producer="test")

    # The first attempt dies after recording its fourth chunk, before publishing it.
    first = ChunkCutter(store, cutting.publisher, cutting.outbox, cast(FollowSettings, cutting.settings))
    recorded = 0
    add_cut = store.add_cut

    async def dying(fanout: str, chunk: ChunkRange, out: Any) -> bool:
        nonlocal recorded
        done = await add_cut(fanout, chunk, out)
        recorded += 1
        if recorded == 4:
            raise Killed
        return done

    monkeypatch.setattr(store, "add_cut", dying)
    with pytest.raises(Killed):
        await first.cut(request, cause)
    monkeypatch.undo()
    standing = await store.plan_cuts(fid)
    assert standing is not None and standing[0] is False and len(standing[1]) == 4

    # Redelivered: carries on from the fourth chunk; nothing is cut twice or left out.
    second = ChunkCutter(store, cutting.publisher, cutting.outbox, cast(FollowSettings, cutting.settings))
    await second.cut(request, cause)
    done, chunks = await store.plan_cuts(fid) or (False, [])
    assert done and len(chunks) == 10
    assert_ranges_cover_each_once(chunks, USERS)
    # Each chunk requested under one id, the fourth (recorded, unpublished) included.
    requests = await chunk_requests_on_topic(ns, fid)
    assert sorted((r["after_user_id"] or "", r["upto_user_id"]) for r in requests.values()) == sorted(
        (c.after_user_id or "", c.upto_user_id) for c in chunks
    )
    # The running service notifies the chunks: every follower once.
    finished = await eventually(
        lambda: plan_of(store, fid),
        what="every chunk notified",
        until=lambda p: bool(p.get("published")) and len(p["done"]) == len(p["chunks"]),
    )
    assert finished["shared"] and finished["followers"] == 95
    members = {d["_id"]: d["users"] async for d in store.shared.find({"fanout_id": fid}, {"users": 1})}
    assert sorted(u for users in members.values() for u in users) == USERS


async def test_a_large_authors_work_is_cut_and_notified_through_the_cutter(ns, producer, cutting) -> None:
    store: FollowStore = store_of(cutting)
    moment = later()
    await store.seed_followers(AUTHOR, "Nine Five", USERS, moment - timedelta(hours=1))
    work = work_added(AUTHOR, "Big news", at=moment)
    await publish(producer, ns, [work], Topic.PROFILE_EVENTS)
    fid = str(fanout_id(work.event_id))
    plan = await eventually(
        lambda: plan_of(store, fid),
        what="the fan-out cut and notified",
        until=lambda p: bool(p.get("published")) and len(p["done"]) == len(p["chunks"]) > 0,
    )
    assert plan["shared"] and plan["cut"] and len(plan["chunks"]) == 10
    chunks = [ChunkRange(c["number"], c["after_user_id"], c["upto_user_id"], c["followers"]) for c in plan["chunks"]]
    assert_ranges_cover_each_once(chunks, USERS)
    members = {d["_id"]: d["users"] async for d in store.shared.find({"fanout_id": fid}, {"users": 1})}
    assert sorted(u for users in members.values() for u in users) == USERS
