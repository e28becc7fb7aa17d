"""A rebuild of the profile projection (folds of profile.events, publications.ingested and
the standing topics, nothing decided again) equals the live projection, whatever order
the live service read the partitions in: the same inputs are fed in two interleavings,
each rebuilt and compared with its own live copy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts import Envelope
from contracts.envelope import EventModel
from contracts.events.claims import AuthorClaimState, VerificationLevelChanged
from contracts.events.follows import FollowerCountChanged
from contracts.events.publications import AuthorImported, Work, WorkIngested
from contracts.events.trust import TrustScoreChanged
from contracts.topics import TOPICS, Topic
from service_runtime.kafka import delete_topics
from service_runtime.offsets import group_progress
from service_runtime.replay import compare_databases, rebuild
from service_runtime.service import Service
from service_runtime.settings import RuntimeSettings
from service_runtime.store import Document
from service_runtime.topic_reader import read_topic
from services.profile.app import build_service
from services.profile.seed import SEED_AUTHOR_ID, seed_envelopes
from services.profile.settings import ProfileSettings
from tests.conftest import Namespace, eventually

Input = tuple[str, str, bytes]  # logical topic, key, value


def _env(payload: EventModel) -> Envelope:
    return Envelope.wrap(payload, producer="test")


BANGOR = {"institution_id": "openalex:I161548249", "display_name": "Bangor University"}


def _work(
    work_id: str, *authors: str, title: str = "A study", year: int = 2021, at: dict[str, list[Any]] | None = None
) -> WorkIngested:
    """``at``: the institutions of some authors' authorships."""
    work = Work(
        work_id=work_id,
        type="article",
        year=year,
        title=title,
        topics=["Speech"],
        authors=[{"author_id": a, "display_name": a.title(), "institutions": (at or {}).get(a, [])} for a in authors],
    )
    return WorkIngested(author_id=authors[0], work=work, source="test")


def inputs() -> list[Input]:
    """The seed, corrections (a new title, an author dropped, the same version again),
    importers describing authors before and after works named them, standing of known and
    unknown authors (one stale), and a poison record."""
    items: list[Input] = [(Topic.PUBLICATIONS_INGESTED, e.data["author_id"], e.to_bytes()) for e in seed_envelopes()]
    trust = dict(band="Emerging", verification_level="L1", components=[], reason="r", formula_version=1)
    claim = AuthorClaimState(claimed=True, owner_user_id="u1", claim_id="c1", verification_level="L2", revision=3)
    payloads: list[EventModel] = [
        AuthorImported(author_id="cyd", display_name="Cyd Charisse", source="test"),
        _work("w-1", "ada", "bob", SEED_AUTHOR_ID, title="First title"),
        _work("w-2", "bob", "cyd", year=2019),
        _work("w-1", "ada", "bob", SEED_AUTHOR_ID, title="Corrected title"),
        _work("w-3", "cyd", "ada", year=2023),
        _work("w-4", "cyd", "ada", year=2024, at={"ada": [BANGOR], "cyd": [BANGOR]}),
        _work("w-4", "cyd", "ada", year=2024, at={"ada": [BANGOR]}),  # cyd's institution corrected away
        _work("w-1", "ada", SEED_AUTHOR_ID, title="Corrected title"),  # bob dropped
        _work("w-1", "ada", SEED_AUTHOR_ID, title="Corrected title"),  # the same again
        AuthorImported(author_id="bob", display_name="Robert Bobson", description="imported", source="test"),
        TrustScoreChanged(author_id=SEED_AUTHOR_ID, score=21, revision=2, **trust),
        TrustScoreChanged(author_id=SEED_AUTHOR_ID, score=90, revision=1, **trust),  # stale
        FollowerCountChanged(author_id=SEED_AUTHOR_ID, count=2, revision=2),
        FollowerCountChanged(author_id="ghost", count=1, revision=1),  # never registered
        VerificationLevelChanged(author_id="ada", verification_level="L2", author_claim=claim),
    ]
    items += [(str(p.topic), p.key(), _env(p).to_bytes()) for p in payloads]
    items.append((Topic.PUBLICATIONS_INGESTED, "ada", b"poison"))
    return items


def interleaved(items: list[Input], *, reverse: bool) -> list[Input]:
    """Round-robin over the (topic, key) streams, in their order or reversed: each stream
    keeps its own order (as its partition does), the streams interleave differently."""
    streams: dict[tuple[str, str], list[Input]] = {}
    for item in items:
        streams.setdefault(item[:2], []).append(item)
    queues = list(streams.values())[::-1] if reverse else list(streams.values())
    out: list[Input] = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


async def caught_up(service: Service) -> bool:
    settings = service.settings
    for group, topics in service.inputs:
        for p in await group_progress(
            settings.kafka_bootstrap_servers, group, [settings.physical_topic(t) for t in topics]
        ):
            if p.committed < p.end:
                return False
    return await service.db["authors"].count_documents({"outbox.0": {"$exists": True}}) == 0


async def play_then_rebuild(ns: Namespace, items: list[Input]) -> dict[str, dict[str, Document]]:
    """Live over ``items`` (small batches, publishing while it consumes), then a rebuild
    compared with it; returns the live projection."""
    settings = ns.settings("profile", cls=ProfileSettings, consumer_max_records=3)
    live = build_service(settings)
    async with live.running():
        producer = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"], enable_idempotence=True)
        await producer.start()
        try:
            for topic, key, value in items:
                await producer.send_and_wait(ns.topic(topic), value, key=key.encode())
        finally:
            await producer.stop()
        await eventually(lambda: caught_up(live), timeout=90, what="live caught up, outboxes empty")
        projection = {
            name: {d["_id"]: d async for d in live.db[name].find({}, {"outbox": 0})}
            for name in live.projection.collections
        }
    published = len(await read_topic(ns.infra["kafka"], ns.topic(Topic.PROFILE_EVENTS)))

    def build(s: RuntimeSettings) -> Service:
        assert isinstance(s, ProfileSettings)
        return build_service(s)

    rebuilt_db = settings.database_name + "_rebuilt"
    ns.databases.append(rebuilt_db)
    result = await rebuild(build, settings, database=rebuilt_db)
    differences = await compare_databases(ns.infra["mongodb"], settings.database_name, rebuilt_db, result.projection)
    assert differences == []
    assert len(await read_topic(ns.infra["kafka"], ns.topic(Topic.PROFILE_EVENTS))) == published, "published nothing"
    return projection


@pytest.fixture
async def other_ns(infra: dict[str, str], kafka_ready: None) -> AsyncIterator[Namespace]:
    namespace = Namespace(infra)
    yield namespace
    await delete_topics(infra["kafka"], [namespace.topic(t) for t in TOPICS])
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra["mongodb"])
    try:
        for db in set(namespace.databases):
            await client.drop_database(db)
    finally:
        await client.close()


def without_revisions(projection: dict[str, dict[str, Document]]) -> dict[str, Any]:
    authors = {
        a: {k: v for k, v in d.items() if k != "revision"} | {"state": {**d["state"], "revision": None}}
        for a, d in projection["authors"].items()
    }
    return {**projection, "authors": authors}


async def test_both_interleavings_rebuild_to_their_live_copies(ns: Namespace, other_ns: Namespace) -> None:
    items = inputs()
    first = await play_then_rebuild(ns, interleaved(items, reverse=False))
    second = await play_then_rebuild(other_ns, interleaved(items, reverse=True))
    # Live itself holds the same facts either way; only how many changes it counted (the
    # revisions) may differ, e.g. whether a work registered the seed author before its import.
    assert without_revisions(first) == without_revisions(second)
    seed = first["authors"][SEED_AUTHOR_ID]
    assert seed["state"]["works_count"] == 29 and seed["imported"] and seed["display_name"] == "Quoc V. Le"
    assert first["authors"]["bob"]["display_name"] == "Robert Bobson"
    assert [e["work_id"] for e in first["authors"]["bob"]["works"]] == ["w-2"], "dropped from w-1"
    assert first["works"]["w-1"]["work"]["title"] == "Corrected title"
    assert first["standing"][SEED_AUTHOR_ID]["trust"]["score"] == 21 and "ghost" in first["standing"]
    # The research graph kept with each author is rebuilt too (compared above).
    ada = first["authors"]["ada"]["graph"]
    assert ada["institutions"] == [
        {"institution_id": BANGOR["institution_id"], "display_name": BANGOR["display_name"], "works": 1}
    ]
    assert first["authors"]["cyd"]["graph"]["institutions"] == []
    assert {c["author_id"]: c["shared_works"] for c in ada["coauthors"]} == {"cyd": 2, SEED_AUTHOR_ID: 1}
    seed_graph = first["authors"][SEED_AUTHOR_ID]["graph"]
    assert [c["display_name"] for c in seed_graph["coauthors"] if c["close"]] == [
        "Mingxing Tan",
        "Hanxiao Liu",
        "Minh-Thang Luong",
        "Zihang Dai",
    ]
