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
from contracts.events.claims import ClaimRequested, ClaimWithdrawn, Evidence
from contracts.registry import decode
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from service_runtime.outbox import Outbox
from service_runtime.service import Service
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


async def test_a_user_whose_last_slot_is_freed_leaves_no_empty_document_whenever_the_process_dies(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's only claim is withdrawn: the user's document goes in the same write that
    frees the slot, so a process that dies right after it leaves none; and one left empty
    by an earlier writer (it died between freeing and deleting) goes when the input comes
    again. A rebuild, which folds claim statuses, has no document for such a user either."""
    service = claims_service(ns)
    processor = service.http.state.claims_processor
    freeing = claims_store.SlotWrites.freeing

    async def dies_after_the_first_write(self: claims_store.SlotWrites, users: Collection) -> list[list[Any]]:
        await freeing(self, users)
        raise Crash("died after the first write that frees slots")

    async with service.running():
        await processor.handle(batch(author_registered("a1")))
        await processor.handle(batch(command(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1"))))
        assert (await stored(service.db.users, "u1"))["open"] == ["c1"]
        withdraw = batch(command(ClaimWithdrawn(claim_id="c1", author_id="a1", user_id="u1")))
        monkeypatch.setattr(claims_store.SlotWrites, "freeing", dies_after_the_first_write)
        with pytest.raises(Crash):
            await processor.handle(withdraw)
        assert await service.db.users.find_one({"_id": "u1"}) is None
        monkeypatch.undo()

        await service.db.users.insert_one({"_id": "u1", "open": [], "approved": []})
        await processor.handle(withdraw)
        assert await service.db.users.find_one({"_id": "u1"}) is None
        assert (await stored(service.db.claims, "c1"))["status"] == "withdrawn"
        events = await eventually(lambda: claim_events(ns), until=lambda ev: len(ev) >= 3, what="three events")
    assert [e["event_type"] for e in events] == ["ClaimSubmitted", "ClaimNeedsReview", "ClaimWithdrawn"]


async def rejected_then_died_before_freeing(service: Service, monkeypatch: pytest.MonkeyPatch) -> list[Incoming[Any]]:
    """Two claims wait for their author (c1 by u1, c2 by u2); it arrives: c1 is approved,
    c2 rejected, and the process dies after writing them, before freeing c2's slot.
    Returns the author's arrival, the input that died."""
    processor = service.http.state.claims_processor

    async def dies_before_freeing(self: claims_store.SlotWrites, users: Collection) -> list[list[Any]]:
        raise Crash("died after the claims, before freeing their slots")

    await processor.handle(
        batch(
            command(ClaimRequested(claim_id="c1", author_id="a1", user_id="u1", evidence=EMAIL_OK)),
            command(ClaimRequested(claim_id="c2", author_id="a1", user_id="u2", evidence=EMAIL_OK)),
        )
    )
    assert (await stored(service.db.users, "u2"))["open"] == ["c2"]
    arrived = batch(author_registered("a1"))
    monkeypatch.setattr(claims_store.SlotWrites, "freeing", dies_before_freeing)
    with pytest.raises(Crash):
        await processor.handle(arrived)
    monkeypatch.undo()
    return arrived


async def test_slots_of_claims_rejected_by_an_attempt_that_died_before_freeing_them_are_freed_by_the_next(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redelivered profile event names no claim and the loser is no longer open, yet
    the next attempt finds the claims that event changed and frees the slot."""
    service = claims_service(ns)
    async with service.running():
        arrived = await rejected_then_died_before_freeing(service, monkeypatch)
        assert (await stored(service.db.claims, "c2"))["status"] == "rejected"
        assert (await stored(service.db.users, "u2"))["open"] == ["c2"], "the crash left the slot held"

        await service.http.state.claims_processor.handle(arrived)
        assert await service.db.users.find_one({"_id": "u2"}) is None
        assert await stored(service.db.users, "u1") == {"_id": "u1", "open": [], "approved": ["c1"]}
        assert (await stored(service.db.claims, "c1"))["status"] == "approved"


async def test_a_slot_left_held_by_a_closed_claim_does_not_count_against_the_users_next_claim(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same crash, and no redelivery (the input was the sweeper's, or is gone): the
    user's next claim finds the slot held by a claim that no longer holds it, frees it,
    and is not refused for too many open claims."""
    service = claims_service(ns, max_open_claims_per_user=1)
    processor = service.http.state.claims_processor
    async with service.running():
        await rejected_then_died_before_freeing(service, monkeypatch)
        assert (await stored(service.db.users, "u2"))["open"] == ["c2"]

        await processor.handle(batch(command(ClaimRequested(claim_id="c3", author_id="a2", user_id="u2"))))
        assert (await stored(service.db.claims, "c3"))["status"] == "pending_author"
        assert (await stored(service.db.users, "u2"))["open"] == ["c3"]
