"""Crash safety without transactions, against the real broker and store: an attempt that
stops anywhere after its first write is completed by the next attempt at the same input
(its redelivery), with the same event ids and nothing decided twice; what no input comes
back for is published by the runtime's outbox sweeper."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from contracts import Envelope
from contracts.envelope import EventModel
from contracts.events.claims import ClaimRequested, Evidence
from contracts.registry import decode
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from service_runtime.outbox import Outbox
from service_runtime.store import Collection
from services.claims import store as claims_store
from tests.conftest import Namespace, eventually
from tests.integration.claims.helpers import author_registered, claim_events, claims_service, command, of_type, stored

EMAIL_OK = Evidence(email="qvl@cs.stanford.edu", email_verified=True)


class Crash(Exception):
    """The process died here (what the next attempt sees is what the store holds)."""


def batch(*envelopes: Envelope) -> list[Incoming[Any]]:
    items: list[Incoming[Any]] = []
    for n, env in enumerate(envelopes):
        topic = Topic.PROFILE_EVENTS if env.producer == "profile" else Topic.WEBAPP_CLAIMS
        payload: EventModel = decode(topic, env.to_bytes())[1]
        items.append(Incoming(env, payload, topic, 0, n))
    return items


async def published(ns: Namespace) -> dict[str, list[dict[str, Any]]]:
    """The events on claims.events by event id (a list: the same id may come twice)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in await claim_events(ns):
        out.setdefault(e["event_id"], []).append(e)
    return out


@pytest.mark.parametrize("swept_meanwhile", [False, True], ids=["outbox-kept", "outbox-swept"])
async def test_a_record_not_written_after_its_claim_is_healed_by_the_next_attempt(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch, swept_meanwhile: bool
) -> None:
    """The claim (approved, its events in its outbox, each with ``author_claim``) was
    written, then the process died before the author record was. The redelivered input
    changes nothing twice, and the record takes the claim state the claim was written
    with, even when the outbox sweeper published and emptied the claim's outbox first."""
    # Published entries removed right away: these tests read the outbox after each step.
    service = claims_service(ns, outbox_grace_s=3600, outbox_clear_after_s=0)
    processor = service.http.state.claims_processor
    guarded = claims_store._guarded
    crashes = {"authors": 1}

    async def dies_before_the_record(collection: Collection, ops: list[claims_store.Op]) -> None:
        if crashes.get(collection.name, 0):
            crashes[collection.name] -= 1
            raise Crash(f"died before writing {collection.name}")
        await guarded(collection, ops)

    async with service.running():
        await processor.handle(batch(author_registered("a1")))
        request = batch(command(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1", evidence=EMAIL_OK)))
        monkeypatch.setattr(claims_store, "_guarded", dies_before_the_record)
        with pytest.raises(Crash):
            await processor.handle(request)
        claim_doc = await stored(service.db.claims, "c1")
        assert claim_doc["status"] == "approved"
        left = [e["envelope"] for e in claim_doc["outbox"]]
        assert [e["event_type"] for e in left] == ["ClaimSubmitted", "ClaimApproved", "VerificationLevelChanged"]
        assert {e["data"]["author_claim"]["revision"] for e in left} == {2}
        record = await stored(service.db.authors, "a1")
        assert record is not None and record["claim"]["claimed"] is False, "the record was not written"
        assert await published(ns) == {}
        if swept_meanwhile:
            swept = await service.outbox.sweep(service.db.claims, older_than=timedelta(0))
            assert swept == 3
            assert (await stored(service.db.claims, "c1"))["outbox"] == []
        await processor.handle(request)  # the redelivery
        record = await stored(service.db.authors, "a1")
        assert record is not None and record["claim"] == {
            **left[1]["data"]["author_claim"],
            "since": record["claim"]["since"],
        }
        assert record["claim"]["owner_user_id"] == "u1" and record["claim"]["revision"] == 2
        healed = await stored(service.db.claims, "c1")
        assert healed is not None and healed["outbox"] == [] and healed["revision"] == 1
        assert [h["event"] for h in healed["history"]] == ["requested"]
        events = await eventually(lambda: published(ns), until=lambda ev: len(ev) == 3, what="the three events")
    assert sorted(events) == sorted(e["event_id"] for e in left), "the same event ids"


async def test_a_write_whose_publish_did_not_happen_is_published_by_the_next_attempt(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims and records written, then the process died before publishing: the next
    attempt at the input decides nothing again and publishes what the outboxes hold,
    under the same ids, before anything new."""
    # Published entries removed right away: these tests read the outbox after each step.
    service = claims_service(ns, outbox_grace_s=3600, outbox_clear_after_s=0)
    processor = service.http.state.claims_processor
    deliver = Outbox.deliver
    crashes = [1]

    async def dies_before_publishing(self: Outbox, collection: Collection, events: Any) -> int:
        if crashes[0]:
            crashes[0] -= 1
            raise Crash("died before publishing")
        return await deliver(self, collection, events)

    async with service.running():
        await processor.handle(batch(author_registered("a1")))
        first = batch(
            command(ClaimRequested(claim_id="c0", author_id="a1", user_id="u0", evidence=Evidence(statement="me"))),
            command(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1", evidence=EMAIL_OK)),
        )
        monkeypatch.setattr(Outbox, "deliver", dies_before_publishing)
        with pytest.raises(Crash):
            await processor.handle(first)
        left = {d["_id"]: [e["envelope"]["event_id"] for e in d["outbox"]] async for d in service.db.claims.find({})}
        assert {cid: len(ids) for cid, ids in left.items()} == {"c0": 3, "c1": 3}
        assert (await stored(service.db.authors, "a1"))["claim"]["claim_id"] == "c1"
        await processor.handle(first)  # the redelivery
        events = await eventually(lambda: published(ns), until=lambda ev: len(ev) == 6, what="six events")
        after = {d["_id"]: d async for d in service.db.claims.find({})}
    assert sorted(events) == sorted(i for ids in left.values() for i in ids), "the same event ids"
    assert all(len(copies) == 1 for copies in events.values()), "each published once"
    assert {cid: d["outbox"] for cid, d in after.items()} == {"c0": [], "c1": []}
    assert [h["event"] for h in after["c0"]["history"]] == ["requested", "requested"]  # reviewed, then lost
    assert [h["status"] for h in after["c0"]["history"]] == ["needs_review", "rejected"]
    # Per claim, in the order decided.
    per_claim = [
        (e["data"]["claim_id"], e["event_type"])
        for copies in events.values()
        for e in copies
        if e["event_type"] != "VerificationLevelChanged"
    ]
    c0 = [t for c, t in per_claim if c == "c0"]
    assert c0 == ["ClaimSubmitted", "ClaimNeedsReview", "ClaimRejected"]


async def test_slots_taken_by_an_attempt_that_died_before_its_claims_are_kept_by_the_next(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's slot was taken, then the process died before the claim was written:
    the redelivery finds the slot already its own and decides the claim with it, and the
    user is still within the limit."""
    service = claims_service(ns, max_open_claims_per_user=1)
    processor = service.http.state.claims_processor
    guarded = claims_store._guarded
    crashes = {"claims": 1}

    async def dies_before_the_claims(collection: Collection, ops: Sequence[Any]) -> None:
        if crashes.get(collection.name, 0):
            crashes[collection.name] -= 1
            raise Crash(f"died before writing {collection.name}")
        await guarded(collection, list(ops))

    async with service.running():
        await processor.handle(batch(author_registered("a1")))
        request = batch(command(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1")))
        monkeypatch.setattr(claims_store, "_guarded", dies_before_the_claims)
        with pytest.raises(Crash):
            await processor.handle(request)
        assert (await stored(service.db.users, "u1"))["open"] == ["c1"]
        assert await service.db.claims.find_one({"_id": "c1"}) is None
        await processor.handle(request)
        claim_doc = await stored(service.db.claims, "c1")
        assert claim_doc["status"] == "needs_review"
        assert (await stored(service.db.users, "u1"))["open"] == ["c1"]
        events = await eventually(lambda: claim_events(ns), until=lambda ev: len(ev) == 2, what="two events")
    assert [e["event_type"] for e in events] == ["ClaimSubmitted", "ClaimNeedsReview"]
    assert of_type(events, "ClaimNeedsReview", "c1")[0]["data"]["claim"]["revision"] == 1
