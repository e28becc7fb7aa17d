"""The profile service against the real broker and store: the seed page, corrections,
bad input, standing from other services, crash healing, and the HTTP import."""

from __future__ import annotations

import json
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from contracts import Envelope
from contracts.events.claims import AuthorClaimState, VerificationLevelChanged
from contracts.events.follows import FollowerCountChanged
from contracts.events.publications import AuthorImported, Work, WorkIngested
from contracts.events.trust import TrustScoreChanged
from contracts.registry import decode
from contracts.topics import Topic, dlq_topic
from service_runtime.auth import IMPORTER, mint_token
from service_runtime.delivery import Incoming
from service_runtime.kafka import ensure_topics
from service_runtime.service import Service
from service_runtime.topic_reader import read_topic
from services.profile.app import build_service
from services.profile.handlers import IngestPublications
from services.profile.seed import SEED_AUTHOR_ID, load_seed
from services.profile.settings import ProfileSettings
from services.profile.store import ProfileStore
from tests.conftest import Namespace, eventually


def work(work_id: str, *authors: str, title: str = "A study", year: int = 2021, **extra: Any) -> dict[str, Any]:
    return {
        "work_id": work_id,
        "type": "article",
        "year": year,
        "title": title,
        "authors": [{"author_id": a, "display_name": a.title()} for a in authors],
        **extra,
    }


def ingested(w: dict[str, Any]) -> Envelope:
    return Envelope.wrap(
        WorkIngested(author_id=w["authors"][0]["author_id"], work=Work(**w), source="test"), producer="test"
    )


async def send(
    producer: AIOKafkaProducer,
    ns: Namespace,
    env: Envelope | bytes,
    key: str = "k",
    topic: str = Topic.PUBLICATIONS_INGESTED,
) -> None:
    value = env if isinstance(env, bytes) else env.to_bytes()
    if isinstance(env, Envelope):
        key = env.data["author_id"]
    await producer.send_and_wait(ns.topic(topic), value, key=key.encode())


async def profile_events(ns: Namespace) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in await read_topic(ns.infra["kafka"], ns.topic(Topic.PROFILE_EVENTS))]


async def page(http: httpx.AsyncClient, author_id: str) -> httpx.Response:
    return await http.get(f"/authors/{author_id}")


async def test_seed_page_matches_the_researcher_page_and_loading_twice_changes_nothing(
    ns: Namespace, profile: Service, http: httpx.AsyncClient
) -> None:
    await load_seed(ns.infra["kafka"], topic_prefix=ns.topic_prefix)
    await eventually(
        lambda: page(http, SEED_AUTHOR_ID),
        until=lambda r: r.status_code == 200 and r.json()["counts"]["works"] == 28,
        what="seed page with 28 works",
        timeout=60,
    )
    events_after_first = await eventually(lambda: profile_events(ns), until=lambda e: len(e) >= 345)
    await load_seed(ns.infra["kafka"], topic_prefix=ns.topic_prefix)  # idempotent: same ids, same content
    marker = work("after-second-load", "marker-author")
    await load_marker(ns, marker)
    await eventually(lambda: page(http, "marker-author"), until=lambda r: r.status_code == 200)

    body = (await page(http, SEED_AUTHOR_ID)).json()
    assert body["display_name"] == "Quoc V. Le" and body["affiliation"] is None
    assert body["description"] == "Quoc V. Le contributes to research discovery and scholarly infrastructure."
    assert body["open_to_collaborate"] is True and body["orcid"] is None
    assert body["counts"] == {"works": 28, "followers": 0, "topics": 9, "close_collaborators": 4}
    assert body["trust_snapshot"] == {"score": None, "band": None, "verification_level": "L1", "claimed": False}
    assert body["direct_collaboration_unlocked"] is False
    assert [c["display_name"] for c in body["close_collaborators"]] == [
        "Mingxing Tan",
        "Hanxiao Liu",
        "Minh-Thang Luong",
        "Zihang Dai",
    ]
    first = body["works"]["items"]
    assert first[0]["title"] == "Symbol tuning improves in-context learning in language models"
    assert [w["year"] for w in first] == sorted((w["year"] for w in first), reverse=True)

    seen = [w["work_id"] for w in first]
    cursor = body["works"]["next_cursor"]
    while cursor:
        more = (await http.get(f"/authors/{SEED_AUTHOR_ID}/works", params={"cursor": cursor, "limit": 5})).json()
        seen += [w["work_id"] for w in more["items"]]
        cursor = more["next_cursor"]
    assert len(seen) == len(set(seen)) == 28

    events = await profile_events(ns)
    seed_events = [e for e in events if e["data"]["author_id"] != "marker-author"]
    assert len(seed_events) == len(events_after_first), "the second load published nothing new"
    mine = [e for e in seed_events if e["data"]["author_id"] == SEED_AUTHOR_ID]
    # 1 registration + 28 works (+ 1 AuthorUpdated when a work, on another partition,
    # registered the author before the AuthorImported arrived): one revision per change.
    assert [e["data"]["author"]["revision"] for e in mine] == list(range(1, len(mine) + 1))
    assert len(mine) in (29, 30) and mine[0]["event_type"] == "AuthorRegistered"
    assert mine[-1]["data"]["author"]["works_by_year"] == {"2023": 1, "2022": 8, "2021": 3, "2020": 16}


async def load_marker(ns: Namespace, w: dict[str, Any]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"])
    await p.start()
    try:
        await send(p, ns, ingested(w))
    finally:
        await p.stop()


async def test_a_demo_copy_is_its_own_record_with_the_example_orcid(
    ns: Namespace, profile: Service, http: httpx.AsyncClient
) -> None:
    await load_seed(profile.publisher, author_id="demo:run-1", demo_copy=True)
    body = (
        await eventually(
            lambda: page(http, "demo:run-1"),
            until=lambda r: r.status_code == 200 and r.json()["counts"]["works"] == 28,
            timeout=60,
        )
    ).json()
    assert body["display_name"] == "Quoc V. Le (demo copy)" and body["orcid"] == "0000-0002-1825-0097"
    assert body["counts"]["close_collaborators"] == 4 and body["counts"]["topics"] == 9
    assert {c["display_name"] for c in body["close_collaborators"]} >= {"Mingxing Tan", "Hanxiao Liu"}
    assert (await page(http, SEED_AUTHOR_ID)).status_code == 404, "the seed record itself was not touched"
    assert (await page(http, "seed:mingxing-tan")).status_code == 404, "nor the records of its real co-authors"


async def test_corrected_work_publishes_work_updated_and_identical_reingest_publishes_nothing(
    ns: Namespace, profile: Service, http: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    original = work("w-1", "ada", "bob", title="First title", abstract="v1")
    await send(producer, ns, ingested(original))
    await send(producer, ns, ingested(original))  # a new event id, the same work: nothing changes
    corrected = {**original, "title": "Corrected title"}
    await send(producer, ns, ingested(corrected))
    events = await eventually(lambda: profile_events(ns), until=lambda e: len(e) >= 6)
    body = (await page(http, "bob")).json()
    assert body["works"]["items"][0]["title"] == "Corrected title"
    kinds = sorted((e["data"]["author_id"], e["event_type"], e["data"]["author"]["revision"]) for e in events)
    assert kinds == [
        ("ada", "AuthorRegistered", 1),
        ("ada", "WorkAdded", 2),
        ("ada", "WorkUpdated", 3),
        ("bob", "AuthorRegistered", 1),
        ("bob", "WorkAdded", 2),
        ("bob", "WorkUpdated", 3),
    ]
    assert all(e["data"]["work"]["title"] == "Corrected title" for e in events if e["event_type"] == "WorkUpdated")


async def test_the_page_first_works_follow_new_works_corrections_and_a_dropped_author(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    # The page's first works are cut at ingestion and stored with the author; whatever
    # happens to the works, they must be what the works route shows for the first page.
    service = build_service(ns.settings("profile", cls=ProfileSettings, page_works=3))
    async with (
        service.running(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http), base_url="http://profile") as http,
    ):

        async def shown(author_id: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]], Any, Any]:
            response = await page(http, author_id)
            if response.status_code == 404:
                return [], [], None, None
            body = response.json()
            listed = (await http.get(f"/authors/{author_id}/works", params={"limit": 3})).json()
            return (
                [(w["work_id"], w["title"]) for w in body["works"]["items"]],
                [(w["work_id"], w["title"]) for w in listed["items"]],
                body["works"]["next_cursor"],
                listed["next_cursor"],
            )

        works = [work(f"w{i}", "ada", "bob", title=f"Title {i}", year=2010 + i) for i in range(5)]
        for w in works:
            await send(producer, ns, ingested(w))
        first, listed, cursor, listed_cursor = await eventually(
            lambda: shown("ada"), until=lambda s: len(s[0]) == 3 and s[0][0][0] == "w4", what="newest three works"
        )
        assert first == listed == [("w4", "Title 4"), ("w3", "Title 3"), ("w2", "Title 2")]
        assert cursor == listed_cursor is not None

        await send(producer, ns, ingested({**works[3], "title": "Title 3, corrected"}))
        first, listed, *_ = await eventually(lambda: shown("bob"), until=lambda s: s[0][1][1] == "Title 3, corrected")
        assert first == listed == [("w4", "Title 4"), ("w3", "Title 3, corrected"), ("w2", "Title 2")]

        # ada is dropped from w4: w1, which neither the batch nor ada's stored page holds, moves up.
        await send(producer, ns, ingested(work("w4", "bob", title="Title 4", year=2014)))
        first, listed, *_ = await eventually(lambda: shown("ada"), until=lambda s: s[0][0][0] == "w3")
        assert first == listed == [("w3", "Title 3, corrected"), ("w2", "Title 2"), ("w1", "Title 1")]
        stored = await ProfileStore(service.db).page_source("ada")
        assert stored is not None and stored["first_page"]["limit"] == 3, "the page was served from the author"
        assert [w["title"] for w in stored["first_page"]["works"]] == [t for _, t in first], "plain subdocuments"


def bad_inputs() -> list[tuple[str, bytes]]:
    good = ingested(work("w-ok", "ada")).model_dump(mode="json")

    def variant(**work_changes: Any) -> bytes:
        doc = json.loads(json.dumps(good))
        doc["data"]["work"].update(work_changes)
        return json.dumps(doc).encode()

    unknown = dict(good, event_type="WorkDeleted")
    return [
        ("no authors", variant(authors=[])),
        ("negative year", variant(year=-5)),
        ("future year", variant(year=3000)),
        ("title over 500 characters", variant(title="x" * 501)),
        ("not UTF-8", b"\xff\xfe not utf-8 \xc3\x28"),
        ("unknown event type", json.dumps(unknown).encode()),
    ]


async def test_bad_input_is_dead_lettered_never_half_applied_and_the_stream_goes_on(
    ns: Namespace, profile: Service, http: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    cases = bad_inputs()
    for _, value in cases:
        await send(producer, ns, value, key="ada")
    await send(producer, ns, ingested(work("w-after", "ada", title="After the bad ones")))
    await eventually(lambda: page(http, "ada"), until=lambda r: r.status_code == 200)
    dead = await eventually(
        lambda: read_topic(ns.infra["kafka"], ns.topic(dlq_topic(Topic.PUBLICATIONS_INGESTED))),
        until=lambda r: len(r) >= len(cases),
    )
    errors = [json.loads(r.value)["error"] for r in dead]
    assert "authors" in errors[0] and "List should have at least 1 item" in errors[0]
    assert "work.year: Input should be greater than or equal to 1600" in errors[1]
    assert "work.year: Input should be less than or equal to 2100" in errors[2]
    assert "title" in errors[3] and "at most 500 characters" in errors[3]
    assert "not UTF-8" in errors[4] and "unknown event type 'WorkDeleted'" in errors[5]
    body = (await page(http, "ada")).json()
    assert [w["work_id"] for w in body["works"]["items"]] == ["w-after"], "no bad work was applied"
    assert await profile.db["works"].count_documents({}) == 1


async def test_standing_from_other_services_including_out_of_order_and_stale(
    ns: Namespace, profile: Service, http: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    def env(payload: Any) -> Envelope:
        return Envelope.wrap(payload, producer="test")

    trust = dict(
        author_id="early", band="Emerging", verification_level="L1", components=[], reason="r", formula_version=1
    )
    # Trust and followers arrive before the author exists: kept, not shown until registered.
    await send(producer, ns, env(TrustScoreChanged(score=21, revision=2, **trust)), topic=Topic.TRUST_EVENTS)
    await send(producer, ns, env(TrustScoreChanged(score=90, revision=1, **trust)), topic=Topic.TRUST_EVENTS)  # stale
    await send(
        producer, ns, env(FollowerCountChanged(author_id="early", count=3, revision=3)), topic=Topic.FOLLOWS_EVENTS
    )
    await eventually(
        lambda: profile.db["standing"].find_one({"_id": "early"}),
        until=lambda d: d is not None and "followers" in d and d["trust"]["revision"] == 2,
    )
    assert (await page(http, "early")).status_code == 404
    await send(producer, ns, env(AuthorImported(author_id="early", display_name="Early Bird", source="test")))
    body = (await eventually(lambda: page(http, "early"), until=lambda r: r.status_code == 200)).json()
    assert body["trust_snapshot"] == {"score": 21, "band": "Emerging", "verification_level": "L0", "claimed": False}
    assert body["counts"]["followers"] == 3

    claim = AuthorClaimState(claimed=True, owner_user_id="u1", claim_id="c1", verification_level="L2", revision=4)
    await send(
        producer,
        ns,
        env(VerificationLevelChanged(author_id="early", verification_level="L2", author_claim=claim)),
        topic=Topic.CLAIMS_EVENTS,
    )
    body = (await eventually(lambda: page(http, "early"), until=lambda r: r.json()["trust_snapshot"]["claimed"])).json()
    assert body["trust_snapshot"]["verification_level"] == "L2" and body["direct_collaboration_unlocked"] is True


def incoming(env: Envelope, offset: int = 0) -> Incoming[Any]:
    envelope, payload = decode(Topic.PUBLICATIONS_INGESTED, env.to_bytes())
    return Incoming(envelope, payload, Topic.PUBLICATIONS_INGESTED, 0, offset)


def handler_of(service: Service) -> IngestPublications:
    settings = service.settings
    assert isinstance(settings, ProfileSettings)
    store = ProfileStore(service.db, settings.written_cache_size)
    return IngestPublications(store, service.publisher, service.outbox, settings)


async def crash_between_write_and_publish(settings: ProfileSettings, env: Envelope) -> None:
    """The crash: the handler writes state and outbox for ``env``, then the process dies
    before publishing."""
    service = build_service(settings)
    await service.broker.start()
    try:
        await handler_of(service).write([incoming(env)])
    finally:
        await service.broker.stop()


async def pending_outboxes(service: Service) -> int:
    return await service.db["authors"].count_documents({"outbox.0": {"$exists": True}})


async def test_events_written_but_not_published_before_a_crash_are_published_on_redelivery(ns: Namespace) -> None:
    env = ingested(work("w-crash", "ada", "bob"))
    await crash_between_write_and_publish(ns.settings("profile", cls=ProfileSettings), env)
    assert await read_topic(ns.infra["kafka"], ns.topic(Topic.PROFILE_EVENTS)) == []

    restarted = build_service(ns.settings("profile", cls=ProfileSettings))
    async with restarted.running():
        p = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"])
        await p.start()
        await send(p, ns, env)  # the redelivered input
        await p.stop()
        events = await eventually(lambda: profile_events(ns), until=lambda e: len({x["event_id"] for x in e}) >= 4)
        # Nothing is left in an outbox: every event written is published.
        assert await eventually(lambda: pending_outboxes(restarted), until=lambda n: n == 0) == 0
    # The startup sweep and the redelivered input may both publish the outbox: a duplicate
    # carries the same event id, so consumers see each event once.
    distinct = {e["event_id"]: (e["data"]["author_id"], e["event_type"]) for e in events}
    assert sorted(distinct.values()) == [
        ("ada", "AuthorRegistered"),
        ("ada", "WorkAdded"),
        ("bob", "AuthorRegistered"),
        ("bob", "WorkAdded"),
    ]


async def test_an_outbox_whose_input_never_comes_again_is_published_by_the_sweep_once(ns: Namespace) -> None:
    # The crash between write and publish, and the input is never redelivered (e.g. it
    # was dead-lettered): the runtime's sweeper publishes what the outbox holds and pulls
    # it: the author's next change publishes only its own event.
    settings = ns.settings("profile", cls=ProfileSettings, outbox_grace_s=0)
    env = ingested(work("w-lost", "ada", "bob"))
    await crash_between_write_and_publish(settings, env)

    restarted = build_service(settings)
    async with restarted.running():
        swept = await eventually(lambda: profile_events(ns), until=lambda e: len(e) >= 4, what="outbox swept")
        assert await eventually(lambda: pending_outboxes(restarted), until=lambda n: n == 0) == 0
        p = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"])
        await p.start()
        await send(p, ns, ingested(work("w-next", "ada")))
        await p.stop()
        events = await eventually(lambda: profile_events(ns), until=lambda e: len(e) >= 5, what="next event")
        assert await eventually(lambda: pending_outboxes(restarted), until=lambda n: n == 0) == 0
    assert sorted((e["data"]["author_id"], e["event_type"]) for e in swept) == [
        ("ada", "AuthorRegistered"),
        ("ada", "WorkAdded"),
        ("bob", "AuthorRegistered"),
        ("bob", "WorkAdded"),
    ]
    assert len(events) == len({e["event_id"] for e in events}) == 5, "each event once"
    [nxt] = [e for e in events if (e["data"].get("work") or {}).get("work_id") == "w-next"]
    assert nxt["data"]["author_id"] == "ada" and nxt["data"]["author"]["works_count"] == 2


async def test_http_import_requires_the_importer_role_and_publishes_the_work(
    ns: Namespace, profile: Service, http: httpx.AsyncClient
) -> None:
    body = work("w-http", "zoé", title="Imported over HTTP")
    body["authors"][0]["author_id"] = "zoe"
    body["authors"][0]["display_name"] = "Zoé Ñúñez"
    assert (await http.post("/works", json=body)).status_code == 401
    reader = mint_token(profile.settings, "u-1", ["reviewer"])
    assert (await http.post("/works", json=body, headers={"Authorization": f"Bearer {reader}"})).status_code == 403
    importer = {"Authorization": f"Bearer {mint_token(profile.settings, 'svc-import', [IMPORTER])}"}
    assert (await http.post("/works", json={**body, "year": 1200}, headers=importer)).status_code == 422
    accepted = await http.post("/works", json=body, headers=importer)
    assert accepted.status_code == 202 and accepted.json()["author_id"] == "zoe"
    await eventually(lambda: page(http, "zoe"), until=lambda r: r.status_code == 200)
    for q in ("zoe", "ZOÉ", "nunez", "zoe nu"):
        found = (await http.get("/authors", params={"q": q})).json()["items"]
        assert [a["author_id"] for a in found] == ["zoe"], q
    assert (await http.get("/authors", params={"q": "xyz"})).json()["items"] == []
    assert (await http.get("/authors", params={"q": "!!!"})).json()["items"] == [], "names no one: no match"
    missing = await http.get("/authors/nobody")
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no author record with id 'nobody'",
        "instance": "/authors/nobody",
    }
    assert (await http.get("/authors/zoe/works", params={"cursor": "!!"})).status_code == 422
    past_the_end = await http.get("/authors/zoe/works", params={"cursor": "1600:zzz"})
    assert (past_the_end.status_code, past_the_end.json()["items"]) == (200, [])
    assert (await http.get("/authors/zoe/works", params={"limit": 0})).status_code == 422
    assert (await http.get("/authors", params={"q": ""})).status_code == 422


async def test_events_left_in_an_outbox_go_out_before_the_next_change_of_the_author(ns: Namespace) -> None:
    """A crash left ada's and bob's first events in their outboxes; the input is not
    redelivered, and ada changes again before the sweeper's grace is over: her pending
    events are published first, then the new one, in revision order. bob's wait for the
    sweeper, in his document."""
    settings = ns.settings("profile", cls=ProfileSettings, outbox_grace_s=600)
    await crash_between_write_and_publish(settings, ingested(work("w-crash", "ada", "bob")))
    restarted = build_service(settings)
    async with restarted.running():
        p = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"])
        await p.start()
        await send(p, ns, ingested(work("w-next", "ada")))
        await p.stop()
        events = await eventually(lambda: profile_events(ns), until=lambda e: len(e) >= 3, what="ada's events")
        bob = await restarted.db["authors"].find_one({"_id": "bob"})
    assert [(e["data"]["author_id"], e["event_type"], e["data"]["author"]["revision"]) for e in events] == [
        ("ada", "AuthorRegistered", 1),
        ("ada", "WorkAdded", 2),
        ("ada", "WorkAdded", 3),
    ]
    assert bob is not None
    assert [o["envelope"]["event_type"] for o in bob["outbox"]] == ["AuthorRegistered", "WorkAdded"]
    assert bob["outbox"][1]["envelope"]["data"]["work"]["work_id"] == "w-crash", "a readable subdocument"


async def test_two_replicas_writing_the_same_authors_in_turn_build_on_each_others_writes(ns: Namespace) -> None:
    """Each process keeps the entries and first page of the authors it wrote
    (``WrittenAuthors``); an author another replica changed since is read whole from the
    store, not taken from memory."""
    settings = ns.settings("profile", cls=ProfileSettings)
    a, b = build_service(settings), build_service(settings)
    replicas = [handler_of(a), handler_of(b)]
    await ensure_topics(ns.infra["kafka"], prefix=ns.topic_prefix)
    await a.broker.start()
    await b.broker.start()
    try:
        for n, replica in enumerate([0, 1, 0, 0, 1]):
            await replicas[replica]([incoming(ingested(work(f"w-{n}", "ada", "bob", year=2010 + n)), n)])
        doc = await a.db["authors"].find_one({"_id": "ada"})
        assert doc is not None
        assert sorted(e["work_id"] for e in doc["works"]) == [f"w-{n}" for n in range(5)]
        assert doc["state"]["works_count"] == 5 and doc["state"]["close_collaborators"][0]["shared_works"] == 5
        assert doc["revision"] == doc["state"]["revision"] == 6
        # Published, so removed a moment later (or rewritten away by the next write).
        await eventually(lambda: pending_outboxes(a), until=lambda n: n == 0, what="outboxes emptied")
        assert [w["work_id"] for w in doc["first_page"]["works"]] == [f"w-{n}" for n in range(4, -1, -1)]
        # The other replica may publish again what one published and has not removed from the
        # outbox yet (the same event ids): consumers see each event once, in revision order.
        firsts: dict[str, int] = {}
        for e in await profile_events(ns):
            if e["data"]["author_id"] == "ada":
                firsts.setdefault(e["event_id"], e["data"]["author"]["revision"])
        assert list(firsts.values()) == [1, 2, 3, 4, 5, 6]
    finally:
        await a.broker.stop()
        await b.broker.stop()
