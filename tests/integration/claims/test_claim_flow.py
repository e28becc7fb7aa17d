"""Claims through the real broker and store: evidence, review, waiting for authors, replays."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from contracts import Envelope
from contracts.events.claims import (
    ClaimEvidenceSubmitted,
    ClaimRequested,
    ClaimReviewed,
    ClaimWithdrawn,
    Evidence,
)
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from services.claims.processing import ClaimsProcessor
from tests.conftest import Namespace, eventually
from tests.integration.claims.helpers import (
    ORCID,
    author_registered,
    authors_known,
    claim_events,
    claims_service,
    command,
    events_until,
    of_type,
    send,
    stored,
)

EMAIL_OK = Evidence(email="qvl@cs.stanford.edu", email_verified=True)


async def test_lifecycle_auto_approval_review_and_revocation(ns: Namespace, producer: AIOKafkaProducer) -> None:
    service = claims_service(ns)
    async with service.running():
        await send(producer, ns, author_registered("a1"), author_registered("a2"))
        await authors_known(service, "a1", "a2")
        await send(
            producer,
            ns,
            command(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1", evidence=EMAIL_OK)),
            command(
                ClaimRequested(
                    claim_id="c2", author_id="a2", user_id="u2", evidence=Evidence(statement="my thesis is on my page")
                )
            ),
        )
        events = await events_until(
            ns,
            lambda ev: of_type(ev, "ClaimApproved", "c1") and of_type(ev, "ClaimNeedsReview", "c2"),
            "c1 approved, c2 under review",
        )
        approved = of_type(events, "ClaimApproved", "c1")[0]["data"]
        assert approved["verification_level"] == "L2"
        assert approved["author_claim"] | {"since": None} == {
            "claimed": True,
            "owner_user_id": "u1",
            "claim_id": "c1",
            "verification_level": "L2",
            "since": None,
            "revision": 2,
        }
        level = [e for e in events if e["event_type"] == "VerificationLevelChanged"]
        assert [
            (e["data"]["author_id"], e["data"]["previous_level"], e["data"]["verification_level"]) for e in level
        ] == [("a1", None, "L2")]

        await send(
            producer,
            ns,
            command(
                ClaimEvidenceSubmitted(
                    claim_id="c2",
                    author_id="a2",
                    user_id="u2",
                    evidence=Evidence(orcid=ORCID, orcid_authenticated=True),
                )
            ),
            command(
                ClaimReviewed(
                    claim_id="c1",
                    author_id="a1",
                    reviewer_id="rev",
                    decision="approve",
                    reason="checked the faculty page",
                )
            ),
        )
        events = await events_until(
            ns,
            lambda ev: of_type(ev, "ClaimApproved", "c2") and len(of_type(ev, "ClaimApproved", "c1")) == 2,
            "c2 upgraded by evidence, c1 confirmed L3",
        )
        assert of_type(events, "ClaimApproved", "c2")[0]["data"]["verification_level"] == "L2"
        assert of_type(events, "ClaimApproved", "c1")[1]["data"]["verification_level"] == "L3"

        await send(
            producer,
            ns,
            command(
                ClaimReviewed(claim_id="c1", author_id="a1", reviewer_id="rev", decision="revoke", reason="impostor")
            ),
        )
        events = await events_until(ns, lambda ev: of_type(ev, "ClaimRevoked", "c1"), "c1 revoked")
        revoked = of_type(events, "ClaimRevoked", "c1")[0]["data"]
        assert revoked["reason"] == "impostor" and revoked["author_claim"]["claimed"] is False
        assert revoked["author_claim"]["revision"] == 4
        levels = [
            (e["data"]["previous_level"], e["data"]["verification_level"])
            for e in events
            if e["event_type"] == "VerificationLevelChanged" and e["data"]["author_id"] == "a1"
        ]
        assert levels == [(None, "L2"), ("L2", "L3"), ("L3", None)]

        doc = await stored(service.db.claims, "c1")
        assert doc["status"] == "revoked" and doc["reason"] == "impostor" and doc["revision"] == 3
        await eventually(
            lambda: service.db.claims.count_documents({"outbox.0": {"$exists": True}}),
            until=lambda n: n == 0,
            what="every outbox published and emptied",
        )
        assert [h["event"] for h in doc["history"]] == ["requested", "reviewer_approved", "revoked"]
        assert [h.get("by") for h in doc["history"]] == [None, "rev", "rev"]
        assert len(doc["applied"]) == 3 and doc["author_claim"]["revision"] == 4
        author = await stored(service.db.authors, "a1")
        assert author["claim"]["claimed"] is False and author["claim"]["revision"] == 4
        assert await service.db.users.find_one({"_id": "u1"}) is None, "revocation freed the slot"
        assert (await stored(service.db.users, "u2"))["approved"] == ["c2"]


async def test_claim_waits_for_its_author_then_expires_or_is_decided(ns: Namespace, producer: AIOKafkaProducer) -> None:
    service = claims_service(ns, pending_author_timeout_s=5.0)
    async with service.running():
        await send(
            producer,
            ns,
            command(ClaimRequested(claim_id="early", author_id="late-author", user_id="u1", evidence=EMAIL_OK)),
            command(ClaimRequested(claim_id="never", author_id="ghost", user_id="u2", evidence=EMAIL_OK)),
        )
        # At-least-once: an event may come twice under its id (the sweeper republishes an
        # outbox whose writer is slow to mark it), so claims are counted, not events.
        events = await events_until(
            ns,
            lambda ev: {e["data"]["claim_id"] for e in of_type(ev, "ClaimSubmitted")} == {"early", "never"},
            "both submitted",
        )
        assert {e["data"]["status"] for e in events} == {"pending_author"}
        await send(producer, ns, author_registered("late-author"))
        events = await events_until(
            ns,
            lambda ev: of_type(ev, "ClaimApproved", "early") and of_type(ev, "ClaimRejected", "never"),
            "early approved when its author arrived, never rejected after the wait",
        )
        rejected = of_type(events, "ClaimRejected", "never")
        assert len(rejected) == 1 and rejected[0]["data"]["reason"] == "unknown_author"
        never = await stored(service.db.claims, "never")
        assert never["status"] == "rejected" and "waiting_since" not in never
        assert await service.db.users.find_one({"_id": "u2"}) is None, "the rejected claim is no longer open"
        # More sweeps change nothing and publish nothing new.
        processor = service.http.state.claims_processor
        assert await processor.sweep_once() == 0
    assert len(of_type(await claim_events(ns), "ClaimRejected", "never")) == 1


async def test_a_late_request_still_waits_its_full_time_for_its_author(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    """The wait for an author counts from when the service parked the claim, not from
    when the request was made: a request that reaches the service an hour late (consumer
    lag, a broker outage) is not expired by the next sweep."""
    service = claims_service(ns, pending_author_timeout_s=600)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    late = Envelope.wrap(
        ClaimRequested(claim_id="late", author_id="slow-author", user_id="u1", evidence=EMAIL_OK),
        producer="webapp",
        occurred_at=an_hour_ago,
    )
    async with service.running():
        await send(producer, ns, late)
        await events_until(ns, lambda ev: of_type(ev, "ClaimSubmitted", "late"), "late submitted")
        processor = service.http.state.claims_processor
        assert await processor.sweep_once() == 0
        assert (await stored(service.db.claims, "late"))["status"] == "pending_author"
        await send(producer, ns, author_registered("slow-author"))
        events = await events_until(
            ns, lambda ev: of_type(ev, "ClaimApproved", "late"), "approved once its author came"
        )
    assert not of_type(events, "ClaimRejected", "late")


async def test_a_claim_is_not_expired_while_its_authors_registration_is_still_unread(
    ns: Namespace, producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The author is registered in profile.events, but the consumer has not read that far
    (held here, as a long backlog holds it): a sweep after the wait must not reject the
    claim; it is decided once the registration is read."""
    gate = asyncio.Event()
    handle = ClaimsProcessor.handle

    async def held(self: ClaimsProcessor, batch: Sequence[Incoming[Any]]) -> None:
        if any(item.topic == Topic.PROFILE_EVENTS for item in batch):
            await gate.wait()
        await handle(self, batch)

    monkeypatch.setattr(ClaimsProcessor, "handle", held)
    service = claims_service(ns, pending_author_timeout_s=600)
    async with service.running():
        await send(
            producer,
            ns,
            command(ClaimRequested(claim_id="unread", author_id="behind", user_id="u1", evidence=EMAIL_OK)),
        )
        await events_until(ns, lambda ev: of_type(ev, "ClaimSubmitted", "unread"), "submitted, waiting")
        await send(producer, ns, author_registered("behind"))
        processor = service.http.state.claims_processor
        # Two hours on, the wait is long over on the clock; the registration is still unread.
        assert await processor.sweep_once(now=datetime.now(UTC) + timedelta(hours=2)) == 0
        gate.set()
        events = await events_until(ns, lambda ev: of_type(ev, "ClaimApproved", "unread"), "approved once read")
    assert not of_type(events, "ClaimRejected", "unread")


async def test_replayed_commands_change_nothing_twice(ns: Namespace, producer: AIOKafkaProducer) -> None:
    service = claims_service(ns)
    async with service.running():
        request = command(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1", evidence=EMAIL_OK))
        withdraw = command(ClaimWithdrawn(claim_id="c1", author_id="a1", user_id="u1"))
        await send(producer, ns, author_registered("a1"))
        await authors_known(service, "a1")
        await send(
            producer,
            ns,
            request,
            request,
            command(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1", evidence=EMAIL_OK)),
            withdraw,
            withdraw,
            command(ClaimWithdrawn(claim_id="c1", author_id="a1", user_id="u1")),
        )
        events = await events_until(ns, lambda ev: of_type(ev, "ClaimWithdrawn", "c1"), "withdrawn")
        await send(producer, ns, request)  # a late replay after everything else
        await send(producer, ns, command(ClaimRequested(claim_id="marker", author_id="a1", user_id="u9")))
        events = await events_until(ns, lambda ev: of_type(ev, "ClaimSubmitted", "marker"), "marker processed")
        doc = await stored(service.db.claims, "c1")
    assert [h["event"] for h in doc["history"]] == ["requested", "withdrawn"]
    mine = [
        e
        for e in events
        if e["data"].get("claim_id") == "c1"
        or (e["data"].get("author_id") == "a1" and e["event_type"] == "VerificationLevelChanged")
    ]
    assert len({e["event_id"] for e in mine}) == 5, [e["event_type"] for e in mine]
    assert sorted({e["event_type"] for e in mine}) == [
        "ClaimApproved",
        "ClaimSubmitted",
        "ClaimWithdrawn",
        "VerificationLevelChanged",
    ]
