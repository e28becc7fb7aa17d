"""Bad commands on the topic (dead letters or rejection events) and recovery of events a
stopped writer left unpublished."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer

from contracts import Envelope
from contracts.events.claims import ClaimRequested, ClaimReviewed, ClaimWithdrawn, Evidence
from contracts.topics import Topic, dlq_topic
from service_runtime import outbox
from service_runtime.publishing import Outgoing
from service_runtime.service import Service
from service_runtime.topic_reader import read_topic
from tests.conftest import Namespace, eventually
from tests.integration.claims.helpers import (
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


def tampered(data_changes: dict[str, object]) -> bytes:
    """A valid ClaimRequested envelope whose data was altered after validation."""
    env = command(ClaimRequested(claim_id="c-bad", author_id="a1", user_id="u1"))
    data = env.data | data_changes
    return env.model_copy(update={"data": data}).to_bytes()


async def test_bad_commands_are_dead_lettered_or_rejected(ns: Namespace, producer: AIOKafkaProducer) -> None:
    service = claims_service(ns)
    async with service.running():
        await send(producer, ns, author_registered("a1"))
        await authors_known(service, "a1")
        topic = ns.topic(Topic.WEBAPP_CLAIMS)
        bad = {
            "malformed claim id": tampered({"claim_id": "has spaces/and slashes"}),
            "missing author id": tampered({"author_id": None}),
            "bad ORCID checksum": tampered({"evidence": {"orcid": "0000-0002-1825-0098", "orcid_authenticated": True}}),
            "not an email": tampered({"evidence": {"email": "not-an-email", "email_verified": True}}),
            "a secret field": tampered({"evidence": {"orcid_access_token": "s3cr3t"}}),
        }
        for value in bad.values():
            await producer.send_and_wait(topic, value, key=b"a1")
        await send(
            producer,
            ns,
            command(
                ClaimReviewed(
                    claim_id="ghost", author_id="a1", reviewer_id="rita", decision="approve", reason="looks fine"
                )
            ),
            command(ClaimWithdrawn(claim_id="ghost", author_id="a1", user_id="u1")),
        )
        dead = await eventually(
            lambda: read_topic(ns.infra["kafka"], ns.topic(dlq_topic(Topic.WEBAPP_CLAIMS))),
            until=lambda r: len(r) >= len(bad),
            what="dead letters",
        )
        events = await events_until(
            ns, lambda ev: len(of_type(ev, "ClaimRejected", "ghost")) == 2, "unknown claim refused"
        )
        assert await service.db.claims.count_documents({}) == 0, "nothing half-applied"
    errors = [json.loads(r.value)["error"] for r in dead]
    assert len(errors) == len(bad)
    assert "claim_id" in errors[0] and "author_id" in errors[1] and "check digit" in errors[2]
    assert "email" in errors[3] and "orcid_access_token" in errors[4]
    refusals = of_type(events, "ClaimRejected", "ghost")
    assert [e["data"]["reason"] for e in refusals] == ["unknown_claim", "unknown_claim"]
    assert [e["data"]["user_id"] for e in refusals] == ["rita", "u1"]


async def test_events_left_in_an_outbox_are_published_by_the_sweeper(ns: Namespace, producer: AIOKafkaProducer) -> None:
    """A writer that stopped after saving a claim but before publishing: its events wait in
    the claim's outbox and go out (once, with their ids) even if no input comes again."""
    service = claims_service(ns, outbox_grace_s=0.5, outbox_sweep_interval_s=0.2)
    async with service.running():
        await send(producer, ns, author_registered("a1"))
        await authors_known(service, "a1")
        await send(
            producer,
            ns,
            command(
                ClaimRequested(
                    claim_id="c1", author_id="a1", user_id="u1", evidence=Evidence(statement="please review")
                )
            ),
        )
        events = await events_until(ns, lambda ev: of_type(ev, "ClaimNeedsReview", "c1"), "c1 under review")
        # What the stopped writer left: an event in the claim's outbox, written a while ago.
        lost = Envelope.model_validate({**of_type(events, "ClaimNeedsReview", "c1")[0], "event_id": LOST_ID})
        entry = outbox.entry(Outgoing("claims.events", "a1", lost), datetime(2020, 1, 1, tzinfo=UTC))
        await service.db.claims.update_one({"_id": "c1"}, {"$push": {"outbox": entry}})
        await events_until(ns, lambda ev: any(e["event_id"] == LOST_ID for e in ev), "the unpublished event published")
        await eventually(
            lambda: service.db.claims.find_one({"_id": "c1"}),
            until=lambda d: d is not None and d["outbox"] == [],
            what="the outbox emptied once published",
        )
    assert sum(e["event_id"] == LOST_ID for e in await claim_events(ns)) == 1


LOST_ID = "0f4a8d8e-4a36-4bde-9d51-0e0f3e8e2a11"


async def outbox_emptied(service: Service, claim_id: str) -> None:
    """Published entries leave the claim's outbox a moment after publishing (the runtime
    removes them in bulk)."""
    await eventually(
        lambda: stored(service.db.claims, claim_id),
        until=lambda d: d["outbox"] == [],
        what=f"{claim_id}'s outbox empty",
    )


async def test_events_of_a_write_are_not_forgotten_when_another_writer_publishes_part_of_it(
    ns: Namespace, producer: AIOKafkaProducer
) -> None:
    """One write stored two records' claims, then stopped before publishing. A later batch
    that loads only one of those claims publishes (and empties) that claim's outbox; the
    other claim's events stay in its own outbox until they are out too (here: the sweeper's)."""
    service = claims_service(ns, outbox_grace_s=3600)  # the background sweeper leaves them alone
    async with service.running():
        await send(producer, ns, author_registered("a1"), author_registered("a2"))
        await authors_known(service, "a1", "a2")
        review = Evidence(statement="please review")
        await send(
            producer,
            ns,
            command(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1", evidence=review)),
            command(ClaimRequested(claim_id="c2", author_id="a2", user_id="u2", evidence=review)),
        )
        events = await events_until(
            ns,
            lambda ev: of_type(ev, "ClaimNeedsReview", "c1") and of_type(ev, "ClaimNeedsReview", "c2"),
            "c1 and c2 under review",
        )
        lost: dict[str, str] = {}
        for cid, author, eid in (
            ("c1", "a1", "6a1f0c7e-2b4d-4e4a-9d0b-1c2d3e4f5a61"),
            ("c2", "a2", "6a1f0c7e-2b4d-4e4a-9d0b-1c2d3e4f5a62"),
        ):
            envelope = Envelope.model_validate({**of_type(events, "ClaimNeedsReview", cid)[-1], "event_id": eid})
            entry = outbox.entry(Outgoing("claims.events", author, envelope), datetime.now(UTC))
            await service.db.claims.update_one({"_id": cid}, {"$push": {"outbox": entry}})
            lost[cid] = eid
        # A rival claim on a1 only: its batch loads a1's open claim c1, not c2.
        await send(producer, ns, command(ClaimRequested(claim_id="c3", author_id="a1", user_id="u3", evidence=review)))
        await events_until(
            ns,
            lambda ev: of_type(ev, "ClaimSubmitted", "c3") and any(e["event_id"] == lost["c1"] for e in ev),
            "c3 decided and c1's left event published",
        )
        await outbox_emptied(service, "c1")
        left = (await stored(service.db.claims, "c2"))["outbox"]
        assert [e["envelope"]["event_id"] for e in left] == [lost["c2"]], "c2's events are not out yet"
        assert await service.outbox.sweep(service.db.claims, older_than=timedelta(0)) == 1
        await outbox_emptied(service, "c2")
    published = [e["event_id"] for e in await claim_events(ns)]
    assert published.count(lost["c1"]) == 1 and published.count(lost["c2"]) == 1
