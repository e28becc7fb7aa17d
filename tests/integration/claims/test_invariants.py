"""The invariants under racing claims through the real broker, with one and with two replicas."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from contracts.events.claims import ClaimRequested, Evidence
from contracts.registry import decode
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from service_runtime.outbox import retry_conflicts
from service_runtime.service import Service
from services.claims.rules import Limits
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
    stored,
)

EMAIL_OK = Evidence(email="someone@stanford.edu", email_verified=True)
ORCID_OK = Evidence(orcid=ORCID, orcid_authenticated=True)


async def test_racing_claims_on_one_record_first_in_partition_order_wins(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    service = claims_service(ns)
    async with service.running():
        await send(producer, ns, author_registered("a1"))
        await authors_known(service, "a1")
        await send(
            producer,
            ns,
            *(
                command(
                    ClaimRequested(
                        claim_id=f"c{i}", author_id="a1", user_id=f"u{i}", evidence=EMAIL_OK if i % 2 else ORCID_OK
                    )
                )
                for i in range(8)
            ),
        )
        events = await events_until(ns, lambda ev: len(of_type(ev, "ClaimSubmitted")) == 8, "8 claims decided")
        author = await stored(service.db.authors, "a1")
    approved = of_type(events, "ClaimApproved")
    assert [e["data"]["claim_id"] for e in approved] == ["c0"]
    rejected = of_type(events, "ClaimRejected")
    assert sorted(e["data"]["claim_id"] for e in rejected) == [f"c{i}" for i in range(1, 8)]
    assert {e["data"]["reason"] for e in rejected} == {"already_claimed"}
    assert author["claim"]["owner_user_id"] == "u0" and author["claim"]["revision"] == 2


def store_limits() -> Limits:
    return Limits(max_open_claims_per_user=3, max_approved_claims_per_user=1)


@contextlib.asynccontextmanager
async def two_replicas(ns: Namespace, **overrides: Any) -> AsyncIterator[Service]:
    first, second = claims_service(ns, **overrides), claims_service(ns, **overrides)
    async with first.running(), second.running():
        yield first


async def test_one_approved_claim_per_user_across_partitions_and_replicas(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    authors = [f"author-{i}" for i in range(12)]  # spread over the six partitions
    async with two_replicas(ns) as service:
        await send(producer, ns, *(author_registered(a) for a in authors))
        await authors_known(service, *authors)
        await send(
            producer,
            ns,
            *(
                command(ClaimRequested(claim_id=f"c{i}", author_id=a, user_id="greedy", evidence=EMAIL_OK))
                for i, a in enumerate(authors)
            ),
        )
        events = await events_until(ns, lambda ev: len(of_type(ev, "ClaimSubmitted")) == 12, "12 claims decided")
        slots = (await stored(service.db.users, "greedy"))["approved"]
        owned = await service.db.authors.count_documents({"claim.owner_user_id": "greedy"})
    assert len(of_type(events, "ClaimApproved")) == 1
    assert {e["data"]["reason"] for e in of_type(events, "ClaimRejected")} == {"user_already_owns_a_record"}
    assert len(of_type(events, "ClaimRejected")) == 11
    assert len(slots) == 1 and owned == 1


async def test_at_most_three_open_claims_per_user_across_replicas(ns: Namespace, producer: AIOKafkaProducer) -> None:
    authors = [f"author-{i}" for i in range(7)]
    async with two_replicas(ns) as service:
        await send(producer, ns, *(author_registered(a) for a in authors))
        await authors_known(service, *authors)
        await send(
            producer,
            ns,
            *(
                command(
                    ClaimRequested(
                        claim_id=f"c{i}", author_id=a, user_id="busy", evidence=Evidence(statement="please review")
                    )
                )
                for i, a in enumerate(authors)
            ),
        )
        events = await events_until(ns, lambda ev: len(of_type(ev, "ClaimSubmitted")) == 7, "7 claims decided")
        open_now = await eventually(
            lambda: service.db.claims.count_documents({"status": "needs_review"}), until=lambda n: n == 3
        )
    assert len(of_type(events, "ClaimNeedsReview")) == 3 == open_now
    assert [e["data"]["reason"] for e in of_type(events, "ClaimRejected")] == ["too_many_open_claims"] * 4


async def test_a_slot_is_taken_atomically_by_concurrent_writers(ns: Namespace) -> None:
    """What guards the per-user limits when replicas race: 20 writers at once, each reading
    the user's slots, taking one for its claim and writing only if the slots it read are
    still there (else reading again), and only the limit's worth succeed."""
    service = claims_service(ns)
    store = service.http.state.claims_processor.store
    await store.create_indexes()

    async def take(kind: str, claim_id: str) -> bool:
        async def attempt() -> bool:
            loaded = await store.load_book([], [], ["racer"], store_limits(), clock=datetime.now(UTC))
            if not loaded.book.slots.acquire(kind, "racer", claim_id):
                return False
            await store.save(loaded, {})
            return True

        return await retry_conflicts(attempt, attempts=100, what="take a slot")

    results = await asyncio.gather(*(take("approved", f"c{i}") for i in range(20)))
    assert sum(results) == 1
    results = await asyncio.gather(*(take("open", f"c{i}") for i in range(20)))
    assert sum(results) == 3
    held = await stored(service.db.users, "racer")
    assert len(held["open"]) == 3 and held["open"] == sorted(held["open"]) and len(held["approved"]) == 1
    assert await take("open", held["open"][0])  # holding it already: still yours
    assert not await take("open", "another")
    await service.mongo.close()


async def test_a_slot_freed_and_taken_again_in_one_batch(ns: Namespace, producer: AIOKafkaProducer) -> None:
    """A user at the open limit: in one batch, one of their claims loses its record and they
    open another. The freed slot goes to the new claim (the batch is not refused as if
    another writer had taken it) and the user still holds three open claims."""
    authors = [f"author-{i}" for i in range(5)]
    service = claims_service(ns)
    async with service.running():
        await send(producer, ns, *(author_registered(a) for a in authors))
        await authors_known(service, *authors)
        await send(
            producer,
            ns,
            *(
                command(
                    ClaimRequested(
                        claim_id=f"c{i}",
                        author_id=authors[i],
                        user_id="busy",
                        evidence=Evidence(statement="please review"),
                    )
                )
                for i in range(3)
            ),
        )
        await events_until(ns, lambda ev: len(of_type(ev, "ClaimNeedsReview")) == 3, "three claims open")
        one_batch = [
            command(ClaimRequested(claim_id="winner", author_id=authors[0], user_id="owner", evidence=EMAIL_OK)),
            command(
                ClaimRequested(
                    claim_id="c3", author_id=authors[3], user_id="busy", evidence=Evidence(statement="please review")
                )
            ),
        ]
        processor = service.http.state.claims_processor
        await processor.handle(
            [
                Incoming(env, decode(Topic.WEBAPP_CLAIMS, env.to_bytes())[1], Topic.WEBAPP_CLAIMS, 0, n)
                for n, env in enumerate(one_batch)
            ]
        )
        events = await events_until(ns, lambda ev: of_type(ev, "ClaimNeedsReview", "c3"), "c3 open")
        held = (await stored(service.db.users, "busy"))["open"]
    assert [e["data"]["reason"] for e in of_type(events, "ClaimRejected", "c0")] == ["already_claimed"]
    assert held == ["c1", "c2", "c3"]
