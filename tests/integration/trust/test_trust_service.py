"""The trust service against the real broker and store: scores from events, coalesced,
published only on change, with history over HTTP, and bad input that never moves a score."""

from __future__ import annotations

import json
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from contracts.envelope import Envelope
from contracts.events.follows import AuthorFollowed
from contracts.topics import Topic, dlq_topic
from service_runtime.topic_reader import read_topic
from services.trust.app import TrustService, build_service
from services.trust.settings import TrustSettings
from services.trust.store import Author
from tests.conftest import Namespace, eventually
from tests.integration.trust.helpers import (
    approved,
    followers,
    registered,
    send,
    send_burst,
    send_envelopes,
    send_raw,
    trust_events,
    work_added,
)


def trust(ns: Namespace, **overrides: Any) -> TrustService:
    return build_service(ns.settings("trust", cls=TrustSettings, **overrides))


def http(service: TrustService) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(service.http), base_url="http://trust")


async def events_for(ns: Namespace, author_id: str, n: int) -> list[dict[str, Any]]:
    return await eventually(lambda: _of(ns, author_id), until=lambda e: len(e) >= n, what=f"{n} TrustScoreChanged")


async def settled(service: TrustService, author_id: str) -> Author | None:
    """The author once scored from its latest signals, its changes published and recorded
    in its history (None until then)."""
    store = service.trust_store
    author = await store.author(author_id)
    if author is None or author.score is None or author.dirty or author.pending:
        return None
    recorded = await store.history_page(author_id, None, 1)
    return author if recorded and recorded[0]["revision"] == author.score["revision"] else None


async def _of(ns: Namespace, author_id: str) -> list[dict[str, Any]]:
    return [e for e in await trust_events(ns) if e["data"]["author_id"] == author_id]


async def test_seed_profile_scores_21_then_claim_raises_it_with_history(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    service = trust(ns)
    async with service.running(), http(service) as client:
        await send(producer, ns, registered("quoc"))
        [first] = await events_for(ns, "quoc", 1)
        assert first["data"] | {"components": None} == first["data"] | {
            "score": 21,
            "band": "Emerging",
            "verification_level": "L1",
            "previous_score": None,
            "reason": "first score",
            "formula_version": 1,
            "revision": 1,
            "components": None,
        }
        view = (await client.get("/trust/quoc")).json()
        assert (view["status"], view["score"], view["band"], view["verification_level"], view["claimed"]) == (
            "scored",
            21,
            "Emerging",
            "L1",
            False,
        )
        assert {c["name"]: c["points"] for c in view["components"]}["recent_works"] == 6.0

        await send(producer, ns, approved("quoc", level="L2"))
        second = (await events_for(ns, "quoc", 2))[1]["data"]
        assert (second["score"], second["previous_score"], second["verification_level"]) == (38, 21, "L2")
        assert "claimed" in second["reason"] and "verification level L1 -> L2" in second["reason"]

        await send(producer, ns, work_added("quoc", 2, extra_2024=1))
        third = (await events_for(ns, "quoc", 3))[2]["data"]
        assert (third["score"], third["previous_score"]) == (39, 38)
        assert "recent works 12 -> 13" in third["reason"]
        await eventually(lambda: settled(service, "quoc"), what="third change recorded")

        page1 = (await client.get("/trust/quoc/history", params={"limit": 2})).json()
        assert [i["score"] for i in page1["items"]] == [39, 38] and page1["next_cursor"] == 2
        page2 = (await client.get("/trust/quoc/history", params={"limit": 2, "cursor": page1["next_cursor"]})).json()
        assert [i["score"] for i in page2["items"]] == [21] and page2["next_cursor"] is None
        assert page2["items"][0]["signals"]["works_count"] == 28  # the inputs are kept with each change

        assert (await client.get("/trust/nobody")).status_code == 404
        assert (await client.get("/trust/nobody/history")).status_code == 404
        assert (await client.get("/trust/quoc/history", params={"limit": 0})).status_code == 422
        assert (await client.get("/trust/quoc/history", params={"cursor": "abc"})).status_code == 422
        assert (await client.get("/trust/bad id!")).status_code == 422


async def test_history_pages_newest_first_by_cursor_each_change_once(ns: Namespace, producer: AIOKafkaProducer) -> None:
    # Seven changes: the first score, then two more 2024 preprints at a time (+1.2 points
    # each step, so every step moves the rounded score). Each is sent once the previous
    # one is published, so none is coalesced with the next.
    service = trust(ns)
    async with service.running(), http(service) as client:
        await send(producer, ns, registered("pager"))
        await events_for(ns, "pager", 1)
        for step in range(1, 7):
            await send(producer, ns, work_added("pager", step + 1, extra_2024=2 * step))
            await events_for(ns, "pager", step + 1)
        events = await events_for(ns, "pager", 7)
        await eventually(lambda: settled(service, "pager"), what="last change recorded")

        pages, cursor = [], None
        while True:
            params = {"limit": 3} | ({"cursor": cursor} if cursor is not None else {})
            page = (await client.get("/trust/pager/history", params=params)).json()
            pages.append(page)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        whole = (await client.get("/trust/pager/history", params={"limit": 7})).json()
        six = (await client.get("/trust/pager/history", params={"limit": 6})).json()
        below_one = (await client.get("/trust/pager/history", params={"cursor": 1})).json()
        above_all = (await client.get("/trust/pager/history", params={"cursor": 99, "limit": 2})).json()

    assert [[i["revision"] for i in p["items"]] for p in pages] == [[7, 6, 5], [4, 3, 2], [1]]
    assert [p["next_cursor"] for p in pages] == [5, 2, None]
    items = [i for p in pages for i in p["items"]]
    newest_first = sorted((e for e in events), key=lambda e: -e["data"]["revision"])
    assert [i["event_id"] for i in items] == [e["event_id"] for e in newest_first]  # each change once, in order
    assert [(i["score"], i["previous_score"]) for i in items] == [
        (e["data"]["score"], e["data"]["previous_score"]) for e in newest_first
    ]
    assert [i["score"] for i in items] == [28, 27, 26, 25, 23, 22, 21]
    assert whole["items"] == items and whole["next_cursor"] is None
    assert six["items"] == items[:6] and six["next_cursor"] == 2
    assert below_one == {"items": [], "next_cursor": None}
    assert above_all["items"] == items[:2] and above_all["next_cursor"] == 6


async def test_a_change_not_yet_recorded_leaves_no_hole_in_the_first_page(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    # The author's newest revision is stored with its outbox, not yet in the history (not
    # published, or not read back from trust.events yet): the first page starts one
    # revision lower, full.
    service = trust(ns)
    async with service.running(), http(service) as client:
        await send(producer, ns, registered("gap"))
        await events_for(ns, "gap", 1)
        for step in range(1, 4):
            await send(producer, ns, work_added("gap", step + 1, extra_2024=2 * step))
            await events_for(ns, "gap", step + 1)
        await eventually(lambda: settled(service, "gap"), what="fourth change recorded")
        store = service.trust_store
        await store.history.delete_one({"revision": 4, "author_id": "gap"})  # as if not recorded yet
        page = (await client.get("/trust/gap/history", params={"limit": 3})).json()
        assert [i["revision"] for i in page["items"]] == [3, 2, 1] and page["next_cursor"] is None
        assert [d["revision"] for d in await store.history_page("gap", 3, 3)] == [2, 1]


async def test_a_burst_of_500_works_is_one_recomputation_and_one_event(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    await burst_of_500_works_is_one_recomputation(ns, producer, trust(ns))


async def test_a_burst_already_in_the_log_is_one_recomputation_however_long_reading_it_takes(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    # The burst is in the log before the consumer reads any of it, as when the service is
    # catching up (a restart, a loaded machine): reading 500 events then takes as long as
    # it takes, longer than the window or the cap on a loaded machine, and must still
    # give one recomputation.
    first = trust(ns)
    async with first.running():
        await send(producer, ns, registered("burst"))
        await events_for(ns, "burst", 1)
        await eventually(lambda: settled(first, "burst"), what="first score")
    await send(producer, ns, *[work_added("burst", r, extra_2024=r - 1) for r in range(2, 502)])
    await burst_of_500_works_is_one_recomputation(ns, producer, trust(ns), registered_already=True)


async def burst_of_500_works_is_one_recomputation(
    ns: Namespace, producer: AIOKafkaProducer, service: TrustService, registered_already: bool = False
) -> None:
    async with service.running():
        if not registered_already:
            await send(producer, ns, registered("burst"))
            await events_for(ns, "burst", 1)
            before = service.recomputer.recomputations
            await send_burst(ns, *[work_added("burst", r, extra_2024=r - 1) for r in range(2, 502)])
        else:
            before = 0
        await events_for(ns, "burst", 2)
        await eventually(
            lambda: service.trust_store.author("burst"),
            until=lambda a: a is not None and a.signals["profile"]["revision"] == 501 and not a.dirty,
        )
        assert service.recomputer.recomputations - before == 1
        # A follower count that does not move the score is recomputed but publishes nothing...
        await send(producer, ns, followers("burst", 0, 1))
        await eventually(
            lambda: service.trust_store.author("burst"),
            until=lambda a: a is not None and "followers" in a.signals and not a.dirty,
        )
        assert service.recomputer.recomputations - before == 2
        # ...so the claim's event comes right after the burst's one.
        await send(producer, ns, approved("burst"))
        events = await events_for(ns, "burst", 3)
    assert [e["data"]["revision"] for e in events] == [1, 2, 3]
    burst_event = events[1]["data"]
    # 500 more works from 2024: works 28 -> 528 (capped at 150: 15 points), recent 12 -> 512 (capped: 20)
    assert (burst_event["previous_score"], burst_event["score"]) == (21, 47)  # 21.0 - 2.8 + 15 - 6.0 + 20 = 47.2
    assert events[2]["data"]["previous_score"] == burst_event["score"]


async def test_duplicates_and_stale_revisions_never_move_the_score(ns: Namespace, producer: AIOKafkaProducer) -> None:
    service = trust(ns)
    async with service.running():
        newest = work_added("a1", 3, extra_2024=2)
        envs = await send(producer, ns, registered("a1"), newest)
        await send_envelopes(producer, ns, envs)  # the same two events again (redelivery)
        await send(producer, ns, work_added("a1", 2, extra_2024=1))  # an older state, late
        await send(producer, ns, followers("a1", 900, 5), followers("a1", 2, 4))  # count 2 is older
        author = await eventually(
            lambda: settled(service, "a1"),
            until=lambda a: a is not None and a.score is not None and (a.score["inputs"] or {}).get("followers") == 900,
        )
    assert author is not None
    assert author.signals["profile"]["revision"] == 3 and author.signals["followers"] == {"revision": 5, "count": 900}
    assert author.score is not None and author.score["inputs"] is not None
    assert author.score["inputs"]["works_count"] == 30 and author.score["inputs"]["followers"] == 900
    published = await _of(ns, "a1")
    assert len({e["event_id"] for e in published}) == len(published) == author.score["revision"]


async def test_signals_before_the_profile_are_kept_and_the_author_is_scored_only_once_registered(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    service = trust(ns)
    async with service.running(), http(service) as client:
        await send(
            producer,
            ns,
            followers("early", 25, 1),
            approved("early", level="L3"),
            AuthorFollowed(author_id="early", user_id="u9", count=26),
        )
        await eventually(
            lambda: service.trust_store.author("early"), until=lambda a: a is not None and "claim" in a.signals
        )
        assert (await client.get("/trust/early")).status_code == 404  # no record of this author yet
        assert await _of(ns, "early") == []
        await send(producer, ns, registered("early"))
        [event] = await events_for(ns, "early", 1)
    assert event["data"]["verification_level"] == "L3"
    assert {c["name"]: c["signal"] for c in event["data"]["components"]}["followers"] == 25


async def test_impossible_values_are_dead_lettered_or_dropped_never_scored(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    service = trust(ns)
    async with service.running():
        bad = json.loads(Envelope.wrap(registered("bad"), producer="test").to_bytes())
        bad["data"]["author"]["works_count"] = -4
        await send_raw(producer, ns, Topic.PROFILE_EVENTS, json.dumps(bad).encode(), "bad")
        level = json.loads(Envelope.wrap(followers("bad", 3, 1), producer="test").to_bytes())
        level["data"]["count"] = -3
        await send_raw(producer, ns, Topic.FOLLOWS_EVENTS, json.dumps(level).encode(), "bad")
        # Negative per-year counts pass the contract: the domain drops them.
        await send(producer, ns, registered("odd", works_by_year={"2020": 16, "2022": -40, "2023": 1}, works_count=17))
        [event] = await events_for(ns, "odd", 1)
        dead = await eventually(
            lambda: read_topic(ns.infra["kafka"], ns.topic(dlq_topic(Topic.PROFILE_EVENTS))),
            until=lambda r: len(r) >= 1,
        )
        dead_follows = await eventually(
            lambda: read_topic(ns.infra["kafka"], ns.topic(dlq_topic(Topic.FOLLOWS_EVENTS))),
            until=lambda r: len(r) >= 1,
        )
        assert await service.trust_store.author("bad") is None
    assert "works_count" in json.loads(dead[0].value)["error"]
    assert "count" in json.loads(dead_follows[0].value)["error"]
    assert {c["name"]: c["signal"] for c in event["data"]["components"]}["recent_works"] == 1
