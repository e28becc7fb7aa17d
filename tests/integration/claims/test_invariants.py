"""The invariants under racing claims through the real broker, with one and with two replicas."""

from __future__ import annotations

import asyncio
import contextlib

from contracts.events.claims import ClaimRequested, Evidence
from contracts.registry import decode
from contracts.topics import Topic
from service_runtime.delivery import Incoming
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
)

EMAIL_OK = Evidence(email="someone@stanford.edu", email_verified=True)
ORCID_OK = Evidence(orcid=ORCID, orcid_authenticated=True)


async def test_racing_claims_on_one_record_first_in_partition_order_wins(ns: Namespace, producer) -> None:
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
        author = await service.db.authors.find_one({"_id": "a1"})
    approved = of_type(events, "ClaimApproved")
    assert [e["data"]["claim_id"] for e in approved] == ["c0"]
    rejected = of_type(events, "ClaimRejected")
    assert sorted(e["data"]["claim_id"] for e in rejected) == [f"c{i}" for i in range(1, 8)]
    assert {e["data"]["reason"] for e in rejected} == {"already_claimed"}
    assert author["claim"]["owner_user_id"] == "u0" and author["claim"]["revision"] == 2


def store_limits() -> Limits:
    return Limits(max_open_claims_per_user=3, max_approved_claims_per_user=1)


@contextlib.asynccontextmanager
async def two_replicas(ns: Namespace, **overrides):
    first, second = claims_service(ns, **overrides), claims_service(ns, **overrides)
    async with first.running(), second.running():
        yield first


async def test_one_approved_claim_per_user_across_partitions_and_replicas(ns: Namespace, producer) -> None:
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
        slots = [d async for d in service.db.user_slots.find({"user": "greedy", "kind": "approved"})]
        owned = await service.db.authors.count_documents({"claim.owner_user_id": "greedy"})
    assert len(of_type(events, "ClaimApproved")) == 1
    assert {e["data"]["reason"] for e in of_type(events, "ClaimRejected")} == {"user_already_owns_a_record"}
    assert len(of_type(events, "ClaimRejected")) == 11
    assert len(slots) == 1 and owned == 1


async def test_at_most_three_open_claims_per_user_across_replicas(ns: Namespace, producer) -> None:
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
    """What guards the per-user limits when replicas race: 20 concurrent conditional writes
    on one user's slot in the real store, and only the limit's worth succeed."""
    service = claims_service(ns)
    store = service.http.state.claims_processor.store

    results = await asyncio.gather(*(store.acquire("approved", "racer", f"c{i}", 1) for i in range(20)))
    assert sum(results) == 1
    results = await asyncio.gather(*(store.acquire("open", "racer", f"c{i}", 3) for i in range(20)))
    assert sum(results) == 3
    held = [d["claim_id"] async for d in service.db.user_slots.find({"user": "racer", "kind": "open"})]
    assert len(held) == 3
    assert await store.acquire("open", "racer", held[0], 3)  # holding it already: still yours
    assert not await store.acquire_all([("open", "racer", "another")], store_limits())
    await service.mongo.close()


async def test_a_slot_freed_and_taken_again_in_one_batch(ns: Namespace, producer) -> None:
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
        held = sorted([d["claim_id"] async for d in service.db.user_slots.find({"user": "busy", "kind": "open"})])
    assert [e["data"]["reason"] for e in of_type(events, "ClaimRejected", "c0")] == ["already_claimed"]
    assert held == ["c1", "c2", "c3"]
