"""Bad commands on the topic (dead letters or rejection events) and recovery of events a
stopped writer left unpublished."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from contracts.events.claims import ClaimRequested, ClaimReviewed, ClaimWithdrawn, Evidence
from contracts.topics import Topic, dlq_topic
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
)


def tampered(data_changes: dict) -> bytes:
    """A valid ClaimRequested envelope whose data was altered after validation."""
    env = command(ClaimRequested(claim_id="c-bad", author_id="a1", user_id="u1"))
    data = env.data | data_changes
    return env.model_copy(update={"data": data}).to_bytes()


async def test_bad_commands_are_dead_lettered_or_rejected(ns: Namespace, producer) -> None:
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


async def test_events_left_in_an_outbox_are_published_by_the_sweeper(ns: Namespace, producer) -> None:
    """A writer that stopped after saving a claim but before publishing: its events wait in
    the claim's outbox and go out (once, with their ids) even if no input comes again."""
    service = claims_service(ns, outbox_grace_s=0.5)
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
        doc = await service.db.claims.find_one({"_id": "c1"})
        lost = {
            "topic": "claims.events",
            "key": "a1",
            "envelope": json.loads(json.dumps({**events[-1], "event_id": "0f4a8d8e-4a36-4bde-9d51-0e0f3e8e2a11"})),
        }
        # What the stopped writer left: its token, then the claim written with that token.
        await service.db.unpublished.insert_one(
            {"_id": "written-never-published", "at": datetime(2020, 1, 1, tzinfo=UTC), "claims": ["c1"]}
        )
        await service.db.claims.update_one(
            {"_id": "c1"},
            {
                "$set": {
                    "outbox": [lost],
                    "outbox_token": "written-never-published",
                    "updated_at": datetime(2020, 1, 1, tzinfo=UTC),
                }
            },
        )
        events = await events_until(
            ns,
            lambda ev: any(e["event_id"] == lost["envelope"]["event_id"] for e in ev),
            "the unpublished event published",
        )
        await eventually(
            lambda: service.db.unpublished.find_one({"_id": "written-never-published"}),
            until=lambda d: d is None,
            what="outbox marked published",
        )
        assert doc["version"] >= 1
    assert sum(e["event_id"] == lost["envelope"]["event_id"] for e in await claim_events(ns)) == 1


async def test_events_of_a_write_are_not_forgotten_when_another_writer_republishes_part_of_it(
    ns: Namespace, producer
) -> None:
    """One write stored two records' claims under one outbox token, then stopped. A later
    batch that loads only one of those records republishes that claim's events; the token
    must stay until the other claim's events are out too (here: the sweeper's)."""
    service = claims_service(ns, outbox_grace_s=3600)  # the background sweeper leaves the token alone
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
        lost = {}
        for cid, author, eid in (
            ("c1", "a1", "6a1f0c7e-2b4d-4e4a-9d0b-1c2d3e4f5a61"),
            ("c2", "a2", "6a1f0c7e-2b4d-4e4a-9d0b-1c2d3e4f5a62"),
        ):
            lost[cid] = {
                "topic": "claims.events",
                "key": author,
                "envelope": json.loads(json.dumps({**of_type(events, "ClaimNeedsReview", cid)[-1], "event_id": eid})),
            }
        now = datetime.now(UTC)
        await service.db.unpublished.insert_one({"_id": "shared", "at": now, "claims": ["c1", "c2"]})
        for cid in ("c1", "c2"):
            await service.db.claims.update_one(
                {"_id": cid}, {"$set": {"outbox": [lost[cid]], "outbox_token": "shared"}}
            )
        # A rival claim on a1 only: its batch loads a1's open claim c1, not c2.
        await send(producer, ns, command(ClaimRequested(claim_id="c3", author_id="a1", user_id="u3", evidence=review)))
        await events_until(
            ns,
            lambda ev: (
                of_type(ev, "ClaimSubmitted", "c3")
                and any(e["event_id"] == lost["c1"]["envelope"]["event_id"] for e in ev)
            ),
            "c3 decided and c1's left event republished",
        )
        assert await service.db.unpublished.find_one({"_id": "shared"}), "c2's events are not out yet"
        processor = service.http.state.claims_processor
        await processor.sweep_once(now=now + timedelta(hours=2))
        assert await service.db.unpublished.find_one({"_id": "shared"}) is None
    published = {e["event_id"] for e in await claim_events(ns)}
    assert {lost[c]["envelope"]["event_id"] for c in ("c1", "c2")} <= published
