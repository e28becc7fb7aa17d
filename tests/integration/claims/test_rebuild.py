"""A claims projection rebuilt from the log equals the live one: the rebuild folds
claims.events (every claim's state after each of its steps, every record's claim state)
and profile.events (identities), deciding nothing again. So it does not matter in which
order the rebuild reads the partitions, nor in which order live saw its inputs: whether a
claim arrived before its author (it waited, then the author's registration decided it),
after it (decided at once), waited in vain (the sweeper rejected it), or raced another
claim of its user for the last slot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from pymongo import AsyncMongoClient

from contracts import Envelope
from contracts.events.claims import (
    ClaimEvidenceSubmitted,
    ClaimRequested,
    ClaimReviewed,
    ClaimWithdrawn,
    Evidence,
)
from contracts.topics import TOPICS, Topic
from service_runtime.kafka import delete_topics
from service_runtime.offsets import group_progress
from service_runtime.replay import compare_databases, rebuild
from service_runtime.service import Service
from service_runtime.settings import RuntimeSettings
from services.claims.app import build_service
from services.claims.settings import ClaimsSettings
from services.claims.store import ClaimsStore
from tests.conftest import Namespace, eventually
from tests.integration.claims.helpers import (
    ORCID,
    author_registered,
    authors_known,
    claims_service,
    command,
    events_until,
    of_type,
    send,
)

EMAIL_OK = Evidence(email="qvl@cs.stanford.edu", email_verified=True)
ORCID_OK = Evidence(orcid=ORCID, orcid_authenticated=True)
REVIEW = Evidence(statement="please review")


def claim(claim_id: str, author_id: str, user_id: str, evidence: Evidence = EMAIL_OK) -> Envelope:
    return command(ClaimRequested(claim_id=claim_id, author_id=author_id, user_id=user_id, evidence=evidence))


def build(settings: RuntimeSettings) -> Service:
    assert isinstance(settings, ClaimsSettings)  # the live settings, copied for the rebuild
    return build_service(settings)


async def rebuilt_paths(ns: Namespace, live: RuntimeSettings) -> dict[str, list[tuple[str, str]]]:
    """Rebuild the claims projection from the log beside live's, check the two are equal,
    and return each rebuilt claim's path (status, event) to show it took live's way."""
    rebuilt_db = live.database_name + "_rebuilt"
    ns.databases.append(rebuilt_db)
    result = await rebuild(build, live, database=rebuilt_db)
    assert result.projection == ClaimsStore.projection
    assert await compare_databases(live.mongodb_uri, live.database_name, rebuilt_db, result.projection) == []
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(live.mongodb_uri)
    try:
        return {
            c["_id"]: [(h["status"], h["event"]) for h in c["history"]]
            async for c in client[rebuilt_db].claims.find({})
        }
    finally:
        await client.close()


async def test_rebuild_equals_live_for_claims_before_and_after_their_author(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    service = claims_service(ns)
    processor = service.http.state.claims_processor
    async with service.running():
        # Before its author: waits, then the registration decides it.
        await send(producer, ns, claim("early", "late-author", "u1"), claim("ghost", "ghost-author", "u3"))
        events = await events_until(
            ns,
            lambda ev: {e["data"]["claim_id"] for e in of_type(ev, "ClaimSubmitted")} == {"early", "ghost"},
            "both claims waiting",
        )
        assert {e["data"]["status"] for e in of_type(events, "ClaimSubmitted")} == {"pending_author"}
        await send(producer, ns, author_registered("late-author"))
        await events_until(ns, lambda ev: of_type(ev, "ClaimApproved", "early"), "early approved when its author came")
        # After its author: decided at once.
        await send(producer, ns, author_registered("known"))
        await authors_known(service, "known")
        await send(producer, ns, claim("after", "known", "u2"))
        await events_until(ns, lambda ev: of_type(ev, "ClaimApproved", "after"), "after approved at once")
        # Waited in vain: the sweeper (its clock moved past the wait) rejects it; the
        # author's registration comes too late to change that.
        assert await processor.sweep_once(now=datetime.now(UTC) + timedelta(days=1)) == 1
        await send(producer, ns, author_registered("ghost-author"))
        await authors_known(service, "ghost-author")
        await events_until(ns, lambda ev: of_type(ev, "ClaimRejected", "ghost"), "ghost expired")
    # Not equal by accident: the rebuilt claims took the same paths as live.
    assert await rebuilt_paths(ns, service.settings) == {
        "early": [("pending_author", "requested"), ("approved", "author_arrived")],
        "after": [("approved", "requested")],
        "ghost": [("pending_author", "requested"), ("rejected", "expired")],
    }


async def send_at(producer: AIOKafkaProducer, ns: Namespace, envelope: Envelope, timestamp_ms: int) -> None:
    """One record with the append time given: what a rebuild sees of records that a lagging
    consumer fetched in another order than they were appended."""
    topic = Topic.PROFILE_EVENTS if envelope.producer == "profile" else Topic.WEBAPP_CLAIMS
    await producer.send(
        ns.topic(topic), envelope.to_bytes(), key=envelope.data["author_id"].encode(), timestamp_ms=timestamp_ms
    )
    await producer.flush()


async def test_rebuild_follows_what_live_decided_not_the_append_times(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    """A lagging consumer fetches the partitions of two topics in whatever order its fetches
    return: it may see an author's registration before a claim appended earlier (and decide
    the claim at once), or a claim before a registration appended earlier (and park it).
    The record timestamps say the other order; the rebuild takes live's path all the same,
    because it reads the decisions, not the inputs."""
    service = claims_service(ns)
    base = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    async with service.running():
        # Live sees the author first, then a claim whose record says it was appended earlier.
        await send_at(producer, ns, author_registered("seen-first"), base + 10_000)
        await authors_known(service, "seen-first")
        await send_at(producer, ns, claim("at-once", "seen-first", "u1"), base)
        await events_until(ns, lambda ev: of_type(ev, "ClaimApproved", "at-once"), "at-once approved at once")
        # Live sees the claim first (it waits), then a registration appended "earlier".
        await send_at(producer, ns, claim("parked", "seen-late", "u2"), base + 20_000)
        await events_until(ns, lambda ev: of_type(ev, "ClaimSubmitted", "parked"), "parked waiting")
        await send_at(producer, ns, author_registered("seen-late"), base + 15_000)
        await events_until(
            ns, lambda ev: of_type(ev, "ClaimApproved", "parked"), "parked approved when its author came"
        )
    assert await rebuilt_paths(ns, service.settings) == {
        "at-once": [("approved", "requested")],
        "parked": [("pending_author", "requested"), ("approved", "author_arrived")],
    }


def partition_of(key: str, partitions: int = 6) -> int:
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions


async def test_rebuild_gives_the_last_slot_to_the_claim_live_gave_it_to(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    """Two claims of one user in two partitions race for the user's last open slot: live
    took the first it saw; the record timestamps say the other claim came first. The
    rebuild gives the slot where live gave it."""
    service = claims_service(ns, max_open_claims_per_user=1)
    base = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    assert {partition_of("race-a"), partition_of("race-b")} == {4, 3}  # two partitions of webapp.claims
    async with service.running():
        await send_at(producer, ns, claim("won", "race-a", "u1"), base + 20_000)
        await events_until(ns, lambda ev: of_type(ev, "ClaimSubmitted", "won"), "won waiting with the slot")
        await send_at(producer, ns, claim("lost", "race-b", "u1"), base + 10_000)
        events = await events_until(ns, lambda ev: of_type(ev, "ClaimRejected", "lost"), "lost refused")
        assert of_type(events, "ClaimRejected", "lost")[0]["data"]["reason"] == "too_many_open_claims"
    assert await rebuilt_paths(ns, service.settings) == {
        "won": [("pending_author", "requested")],
        "lost": [("rejected", "requested")],
    }


# --- a mixed sequence, and the same inputs in two interleavings -----------------------------


async def settled(settings: RuntimeSettings) -> None:
    """Wait until the live consumer has committed every input sent so far."""
    topics = [settings.physical_topic(t) for t in (Topic.WEBAPP_CLAIMS, Topic.PROFILE_EVENTS)]

    async def behind() -> int:
        progress = await group_progress(settings.kafka_bootstrap_servers, settings.consumer_group, topics)
        return sum(p.lag for p in progress)

    await eventually(behind, until=lambda n: n == 0, what="inputs consumed", timeout=60)


def inputs(prefix: str) -> dict[str, list[Envelope]]:
    """Per author (so per partition, in its order), the inputs of a mixed story: racing
    claims, a claim waiting for its author (with evidence meanwhile), one that waits in
    vain, a user's claims on three records racing for two open slots, review, confirmation
    to L3, withdrawal, revocation, refusals."""
    a = {name: f"{prefix}{name}" for name in ("race", "late", "ghost", "s1", "s2", "s3", "rev")}
    return {
        a["race"]: [
            author_registered(a["race"]),
            claim("race-1", a["race"], "r1", REVIEW),
            claim("race-2", a["race"], "r2"),
            claim("race-3", a["race"], "r3", ORCID_OK),
            command(ClaimWithdrawn(claim_id="race-1", author_id=a["race"], user_id="r1")),  # refused: lost
            command(
                ClaimReviewed(
                    claim_id="race-2", author_id=a["race"], reviewer_id="rev", decision="approve", reason="ok"
                )
            ),
        ],
        a["late"]: [
            claim("late-1", a["late"], "l1", REVIEW),
            command(ClaimEvidenceSubmitted(claim_id="late-1", author_id=a["late"], user_id="l1", evidence=EMAIL_OK)),
            author_registered(a["late"]),
        ],
        a["ghost"]: [claim("ghost-1", a["ghost"], "g1")],
        **{a[s]: [author_registered(a[s]), claim(f"{s}-shared", a[s], "shared", REVIEW)] for s in ("s1", "s2", "s3")},
        a["rev"]: [
            author_registered(a["rev"]),
            claim("rev-1", a["rev"], "v1"),
            command(
                ClaimReviewed(
                    claim_id="rev-1", author_id=a["rev"], reviewer_id="rev", decision="revoke", reason="impostor"
                )
            ),
            claim("rev-2", a["rev"], "v2", REVIEW),
            command(ClaimWithdrawn(claim_id="rev-2", author_id=a["rev"], user_id="v2")),
            command(ClaimWithdrawn(claim_id="nope", author_id=a["rev"], user_id="v2")),  # refused: unknown
        ],
    }


async def play(
    ns: Namespace, producer: AIOKafkaProducer, order: Callable[[dict[str, list[Envelope]]], list[Envelope]]
) -> tuple[RuntimeSettings, dict[str, tuple[str, str | None]]]:
    """Run a live claims service over the inputs, one at a time in ``order`` (each consumed
    before the next is sent: the order live sees them), expire the ghost's claim, rebuild,
    compare, and return what live decided per claim."""
    service = claims_service(ns, max_open_claims_per_user=2)
    settings = service.settings
    async with service.running():
        for envelope in order(inputs("")):
            await send(producer, ns, envelope)
            await settled(settings)
        assert await service.http.state.claims_processor.sweep_once(now=datetime.now(UTC) + timedelta(days=1)) == 1
        await eventually(
            lambda: service.db.claims.count_documents({"outbox.0": {"$exists": True}}),
            until=lambda n: n == 0,
            what="every outbox published",
        )
        decided = {
            d["_id"]: (d["status"], d.get("reason"))
            async for d in service.db.claims.find({}, {"status": 1, "reason": 1})
        }
    await rebuilt_paths(ns, settings)
    return settings, decided


@pytest.fixture
async def other_ns(ns: Namespace) -> AsyncIterator[Namespace]:
    """A second private slice of the broker and store, for a second live run."""
    other = Namespace(ns.infra)
    yield other
    await delete_topics(other.infra["kafka"], [other.topic(t) for t in TOPICS])
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(other.infra["mongodb"])
    try:
        for db in set(other.databases):
            await client.drop_database(db)
    finally:
        await client.close()


async def test_the_same_inputs_in_two_interleavings_give_rebuilds_equal_to_their_live_copies(
    ns: Namespace, other_ns: Namespace, producer: AIOKafkaProducer
) -> None:
    """The same inputs, each author's (partition's) in its own order, seen by live in two
    interleavings: author by author, and round-robin over the authors from the last. Live
    decides differently (which of a user's three claims, on three records in other
    partitions, lose the race for the user's two open slots), and each rebuild equals its
    own live copy."""

    def by_author(per_author: dict[str, list[Envelope]]) -> list[Envelope]:
        return [e for envelopes in per_author.values() for e in envelopes]

    def round_robin_from_the_last(per_author: dict[str, list[Envelope]]) -> list[Envelope]:
        queues = [list(envelopes) for envelopes in reversed(per_author.values())]
        out: list[Envelope] = []
        while any(queues):
            for queue in queues:
                if queue:
                    out.append(queue.pop(0))
        return out

    second = AIOKafkaProducer(bootstrap_servers=other_ns.infra["kafka"], enable_idempotence=True, linger_ms=5)
    await second.start()
    try:
        _, first_decided = await play(ns, producer, by_author)
        _, second_decided = await play(other_ns, second, round_robin_from_the_last)
    finally:
        await second.stop()
    assert first_decided.keys() == second_decided.keys()
    assert first_decided != second_decided, "the two interleavings should have led live to other decisions"
    shared = {c: first_decided[c] for c in ("s1-shared", "s2-shared", "s3-shared")}
    assert shared == {
        "s1-shared": ("needs_review", None),
        "s2-shared": ("needs_review", None),
        "s3-shared": ("rejected", "too_many_open_claims"),
    }
    assert {c: second_decided[c] for c in shared} == {
        "s1-shared": ("rejected", "too_many_open_claims"),
        "s2-shared": ("needs_review", None),
        "s3-shared": ("needs_review", None),
    }
    for decided in (first_decided, second_decided):
        assert decided["ghost-1"] == ("rejected", "unknown_author")
        assert decided["late-1"][0] == "approved" and decided["rev-1"][0] == "revoked"
        assert decided["rev-2"][0] == "withdrawn"
