"""Building input events and reading trust's output, shared by the trust integration tests."""

from __future__ import annotations

import json
from typing import Any

from aiokafka import AIOKafkaProducer

from contracts.envelope import Envelope, EventModel
from contracts.events.claims import AuthorClaimState, ClaimApproved
from contracts.events.follows import FollowerCountChanged
from contracts.events.profile import AuthorRegistered, AuthorState, Collaborator, TopicCount, WorkAdded, WorkSummary
from contracts.topics import Topic
from service_runtime.topic_reader import read_topic
from tests.conftest import Namespace

SEED_YEARS = {"2020": 16, "2021": 3, "2022": 8, "2023": 1}


def author(
    author_id: str,
    revision: int,
    extra_2024: int = 0,
    works_by_year: dict[str, int] | None = None,
    works_count: int | None = None,
) -> AuthorState:
    years = dict(SEED_YEARS if works_by_year is None else works_by_year)
    if extra_2024:
        years["2024"] = extra_2024
    return AuthorState(
        author_id=author_id,
        display_name="Quoc V. Le",
        works_count=sum(max(0, n) for n in years.values()) if works_count is None else works_count,
        works_by_year=years,
        topics=[TopicCount(name=f"topic {i}", count=1) for i in range(9)],
        close_collaborators=[Collaborator(author_id=f"c{i}", display_name=f"C {i}", shared_works=2) for i in range(4)],
        record_verification_level="L1",
        revision=revision,
    )


def registered(author_id: str, revision: int = 1, **kw: Any) -> AuthorRegistered:
    return AuthorRegistered(author_id=author_id, author=author(author_id, revision, **kw))


def work_added(author_id: str, revision: int, extra_2024: int) -> WorkAdded:
    return WorkAdded(
        author_id=author_id,
        author=author(author_id, revision, extra_2024=extra_2024),
        work=WorkSummary(work_id=f"w{revision}", type="preprint", year=2024, title="A new preprint"),
    )


def approved(author_id: str, revision: int = 1, level: str = "L2") -> ClaimApproved:
    state = AuthorClaimState(
        claimed=True, owner_user_id="u1", claim_id="k1", verification_level=level, revision=revision
    )
    return ClaimApproved(claim_id="k1", author_id=author_id, user_id="u1", author_claim=state, verification_level=level)


def followers(author_id: str, count: int, revision: int) -> FollowerCountChanged:
    return FollowerCountChanged(author_id=author_id, count=count, revision=revision)


async def send(producer: AIOKafkaProducer, ns: Namespace, *payloads: EventModel) -> list[Envelope]:
    envelopes = [Envelope.wrap(p, producer="test") for p in payloads]
    await send_envelopes(producer, ns, envelopes)
    return envelopes


async def send_burst(ns: Namespace, *payloads: EventModel) -> list[Envelope]:
    """Events of one author that reach the log together, in one produce request: a burst.
    (Through the shared producer, 500 events go out as ~50 requests of 16 KB acknowledged
    one after the other; on a loaded machine that trickle lasts seconds, with pauses longer
    than the coalescing window, and is rightly not treated as one burst.)"""
    envelopes = [Envelope.wrap(p, producer="test") for p in payloads]
    assert len({e.data["author_id"] for e in envelopes}) == 1, "one author: one partition, one request"
    producer = AIOKafkaProducer(
        bootstrap_servers=ns.infra["kafka"],
        enable_idempotence=True,
        linger_ms=1000,
        max_batch_size=1024 * 1024,
        compression_type="gzip",
    )
    await producer.start()
    try:
        await send_envelopes(producer, ns, envelopes)
    finally:
        await producer.stop()
    return envelopes


async def send_envelopes(producer: AIOKafkaProducer, ns: Namespace, envelopes: list[Envelope]) -> None:
    futures = [
        await producer.send(ns.topic(str(Topic(_topic_of(e)))), e.to_bytes(), key=e.data["author_id"].encode())
        for e in envelopes
    ]
    for f in futures:
        await f


async def send_raw(producer: AIOKafkaProducer, ns: Namespace, topic: str, value: bytes, key: str) -> None:
    await producer.send_and_wait(ns.topic(topic), value, key=key.encode())


def _topic_of(envelope: Envelope) -> str:
    from contracts.registry import EVENT_TYPES

    topics = {t for (t, et) in EVENT_TYPES if et == envelope.event_type and t != Topic.WEBAPP_CLAIMS}
    assert len(topics) == 1, envelope.event_type
    return topics.pop()


async def trust_events(ns: Namespace) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in await read_topic(ns.infra["kafka"], ns.topic(Topic.TRUST_EVENTS))]
