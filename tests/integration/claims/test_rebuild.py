"""A claims projection rebuilt from the log equals the live one, whether a claim arrived
before its author (it waited, then the author's registration decided it), after it
(decided at once), or waited in vain (the sweeper rejected it, and its author came later)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiokafka.partitioner import murmur2
from pymongo import AsyncMongoClient

from contracts.events.claims import ClaimRequested, Evidence
from contracts.topics import Topic
from service_runtime.replay import compare_databases, rebuild
from services.claims.app import build_service
from services.claims.store import PROJECTION
from tests.conftest import Namespace
from tests.integration.claims.helpers import (
    author_registered,
    authors_known,
    claims_service,
    command,
    events_until,
    of_type,
    send,
)

EMAIL_OK = Evidence(email="qvl@cs.stanford.edu", email_verified=True)


def claim(claim_id: str, author_id: str, user_id: str) -> object:
    return command(ClaimRequested(claim_id=claim_id, author_id=author_id, user_id=user_id, evidence=EMAIL_OK))


async def rebuilt_paths(ns: Namespace, live: object) -> dict[str, list[tuple[str, str]]]:
    """Rebuild the claims projection from the log beside live's, check the two are equal,
    and return each rebuilt claim's path (status, event) to show it took live's way."""
    rebuilt_db = live.database_name + "_rebuilt"  # type: ignore[attr-defined]
    ns.databases.append(rebuilt_db)
    result = await rebuild(build_service, live, database=rebuilt_db)
    assert (
        await compare_databases(
            live.mongodb_uri,
            live.database_name,
            rebuilt_db,  # type: ignore[attr-defined]
            result.projection,
        )
        == []
    )
    assert result.projection == PROJECTION
    client: AsyncMongoClient = AsyncMongoClient(live.mongodb_uri)  # type: ignore[attr-defined]
    try:
        return {
            c["_id"]: [(h["status"], h["event"]) for h in c["history"]]
            async for c in client[rebuilt_db].claims.find({})
        }
    finally:
        await client.close()


async def test_rebuild_equals_live_for_claims_before_and_after_their_author(ns: Namespace, producer) -> None:
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


async def send_at(producer, ns: Namespace, envelope: object, timestamp_ms: int) -> None:
    """One record with the append time given: what a rebuild sees of records that a lagging
    consumer fetched in another order than they were appended."""
    topic = Topic.PROFILE_EVENTS if envelope.producer == "profile" else Topic.WEBAPP_CLAIMS  # type: ignore[attr-defined]
    await producer.send(
        ns.topic(topic),
        envelope.to_bytes(),
        key=envelope.data["author_id"].encode(),  # type: ignore[attr-defined]
        timestamp_ms=timestamp_ms,
    )
    await producer.flush()


async def test_rebuild_follows_the_order_live_saw_not_the_append_times(ns: Namespace, producer) -> None:
    """A lagging consumer fetches the partitions of two topics in whatever order its fetches
    return: it may see an author's registration before a claim appended earlier (and decide
    the claim at once), or a claim before a registration appended earlier (and park it).
    The record timestamps say the other order; the rebuild must still take live's path,
    which the decisions on claims.events record."""
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


async def test_rebuild_gives_the_last_slot_to_the_claim_live_gave_it_to(ns: Namespace, producer) -> None:
    """Two claims of one user in two partitions race for the user's last open slot: live
    took the first it saw, the rebuild merges the partitions in another order (here the
    record timestamps say the other claim came first). The rebuild refuses the claim live
    refused, so the slot goes where it went live."""
    service = claims_service(ns, max_open_claims_per_user=1)
    base = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    # Two records in two partitions of webapp.claims (partition = murmur2(key) % 6).
    assert {partition_of("race-a"), partition_of("race-b")} == {4, 3}
    async with service.running():
        await send_at(producer, ns, claim("won", "race-a", "u1"), base + 20_000)
        await events_until(ns, lambda ev: of_type(ev, "ClaimSubmitted", "won"), "won waiting with the slot")
        await send_at(producer, ns, claim("lost", "race-b", "u1"), base + 10_000)
        events = await events_until(ns, lambda ev: of_type(ev, "ClaimRejected", "lost"), "lost refused")
        assert of_type(events, "ClaimRejected", "lost")[0]["data"]["reason"] == "too_many_open_claims"
    await rebuilt_paths(ns, service.settings)


def partition_of(key: str, partitions: int = 6) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
