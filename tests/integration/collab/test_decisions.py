"""The consumer decides authoritatively, in partition order: commands published straight to
webapp.collab (as a race the HTTP checks could not see would leave them) end in a refusal
event with its reason, the invitation's status and reason readable over HTTP; a claim
revoked or passed on closes the record's live invitations, one event each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from service_runtime.service import Service
from tests.conftest import Namespace
from tests.integration.collab.helpers import (
    answer,
    auth,
    claimed,
    collab_service,
    events_until,
    http,
    invite,
    known,
    of,
    post,
    profile,
    revoked,
    send,
    status_of,
    withdraw,
)

OWNER, SENDER, STRANGER = "u-owner", "u-sender", "u-stranger"


@pytest.fixture
async def collab(ns: Namespace) -> AsyncIterator[Service]:
    service = collab_service(ns)
    async with service.running():
        yield service


def refused_with(events: list[dict[str, Any]], invitation_id: str) -> str | None:
    found = of(events, "InvitationRejected", invitation_id) + of(events, "InvitationCommandRejected", invitation_id)
    return found[-1]["data"]["reason"] if found else None


async def test_each_refusal_of_an_invitation_is_an_event_and_a_status_the_sender_reads(
    ns: Namespace, producer: AIOKafkaProducer, collab: Service
) -> None:
    await send(
        producer,
        ns,
        profile("open"),
        claimed("open", OWNER),
        profile("shut", open_=False),
        claimed("shut", "u-shut"),
        profile("unclaimed"),
    )
    await known(collab, "open", owner=OWNER)
    await known(collab, "shut", owner="u-shut", open_=False)
    await known(collab, "unclaimed", owner=None)
    cases = {
        "not_claimed": invite("unclaimed", SENDER, "inv-unclaimed"),
        "not_claimed ": invite("never-heard-of", SENDER, "inv-unknown-record"),
        "not_open_to_collaborate": invite("shut", SENDER, "inv-shut"),
        "self_invitation": invite("open", OWNER, "inv-self"),
        "message_too_long": invite("open", SENDER, "inv-long", message="x" * 2001),
    }
    first, second = invite("open", SENDER, "inv-first"), invite("open", SENDER, "inv-second")
    await send(producer, ns, *cases.values(), first, second)
    events = await events_until(
        ns, lambda ev: len(of(ev, "InvitationRejected")) == len(cases) + 1, "every refusal published"
    )
    for reason, env in cases.items():
        assert refused_with(events, env.data["invitation_id"]) == reason.strip()
    assert of(events, "InvitationSent", "inv-first") and refused_with(events, "inv-second") == "already_invited"
    async with http(collab) as client:
        view = (await client.get("/invitations/inv-shut", headers=auth(collab, SENDER))).json()
        assert (view["status"], view["reason"], view["owner_user_id"]) == (
            "rejected",
            "not_open_to_collaborate",
            None,
        )
        assert view["detail"] == "the researcher does not take invitations at the moment"
        assert (await client.get("/invitations/inv-shut", headers=auth(collab, "u-shut"))).status_code == 403
        received = (await client.get(f"/users/{OWNER}/invitations", headers=auth(collab, OWNER))).json()["received"]
        assert [i["invitation_id"] for i in received] == ["inv-first"], "refused invitations never reach the owner"

    # Declined: the same sender is refused for 30 days, someone else is not.
    await send(producer, ns, answer("open", "inv-first", OWNER, "decline"))
    await status_of(collab, "inv-first", "declined")
    await send(producer, ns, invite("open", SENDER, "inv-again"), invite("open", STRANGER, "inv-other"))
    events = await events_until(ns, lambda ev: of(ev, "InvitationSent", "inv-other"), "the other sender's invitation")
    assert refused_with(events, "inv-again") == "declined_recently"
    again = of(events, "InvitationRejected", "inv-again")[0]["data"]["invitation"]
    assert "you can invite them again from" in again["detail"]


async def test_commands_on_an_invitation_refused_in_partition_order(
    ns: Namespace, producer: AIOKafkaProducer, collab: Service
) -> None:
    await send(producer, ns, profile("a1"), claimed("a1", OWNER))
    await known(collab, "a1", owner=OWNER)
    await send(producer, ns, invite("a1", SENDER, "inv-1"))
    await status_of(collab, "inv-1", "pending")
    # Each of these passed the HTTP checks on an older view, or never went through HTTP.
    await send(
        producer,
        ns,
        post("a1", "inv-1", SENDER, "too early"),  # not accepted yet
        answer("a1", "inv-1", SENDER),  # the sender cannot accept
        withdraw("a1", "inv-1", OWNER),  # the owner cannot withdraw
        answer("a1", "inv-1", OWNER),  # accepted
        withdraw("a1", "inv-1", SENDER),  # too late: answered
        answer("a1", "inv-1", OWNER, "decline"),  # answered already
        post("a1", "inv-1", STRANGER, "me too"),  # not a party
        post("a1", "inv-1", OWNER, "x" * 2001),  # too long
        post("a1", "inv-1", OWNER, "welcome"),
        answer("a1", "inv-nope", OWNER),  # unknown
    )
    events = await events_until(ns, lambda ev: len(of(ev, "InvitationCommandRejected")) == 8, "eight refusals")
    refusals = [(e["data"]["command"], e["data"]["reason"]) for e in of(events, "InvitationCommandRejected")]
    assert refusals == [
        ("message", "not_accepted"),
        ("answer", "not_owner"),
        ("withdraw", "not_sender"),
        ("withdraw", "not_pending"),
        ("answer", "not_pending"),
        ("message", "not_party"),
        ("message", "message_too_long"),
        ("answer", "unknown_invitation"),
    ]
    assert of(events, "InvitationCommandRejected")[-1]["data"]["invitation"] is None
    doc = await status_of(collab, "inv-1", "accepted")
    assert [m["text"] for m in doc["thread"]] == ["welcome"] and doc["message_count"] == 1
    assert doc["revision"] == 1 + 9, "every decision on the invitation is a step, refusals too"


async def test_a_revoked_or_passed_on_claim_closes_its_live_invitations(
    ns: Namespace, producer: AIOKafkaProducer, collab: Service
) -> None:
    await send(producer, ns, profile("a1"), claimed("a1", OWNER), profile("a2"), claimed("a2", "u-owner-2"))
    await known(collab, "a1", owner=OWNER)
    await known(collab, "a2", owner="u-owner-2")
    await send(
        producer,
        ns,
        invite("a1", SENDER, "inv-pending"),
        invite("a1", STRANGER, "inv-accepted"),
        answer("a1", "inv-accepted", OWNER),
        invite("a1", "u-third", "inv-declined"),
        answer("a1", "inv-declined", OWNER, "decline"),
        invite("a2", SENDER, "inv-a2"),
    )
    await status_of(collab, "inv-accepted", "accepted")
    await status_of(collab, "inv-declined", "declined")
    await status_of(collab, "inv-a2", "pending")
    assert (await collab.db.senders.find_one({"_id": SENDER}) or {}).get("pending") == ["inv-a2", "inv-pending"]

    await send(producer, ns, revoked("a1", OWNER), claimed("a2", "u-new-owner", revision=3))
    events = await events_until(ns, lambda ev: len(of(ev, "InvitationClosed")) == 3, "three invitations closed")
    closed = {e["data"]["invitation_id"]: e["data"]["reason"] for e in of(events, "InvitationClosed")}
    assert closed == {"inv-pending": "claim_revoked", "inv-accepted": "claim_revoked", "inv-a2": "owner_changed"}
    for invitation_id, reason in closed.items():
        doc = await status_of(collab, invitation_id, "closed")
        assert doc["reason"] == reason
    assert (await collab.db.invitations.find_one({"_id": "inv-declined"}) or {})["status"] == "declined"
    assert await collab.db.senders.count_documents({}) == 0, "closed invitations free their slots"
    # The thread of a closed invitation takes no more messages.
    await send(producer, ns, post("a1", "inv-accepted", OWNER, "still there?"))
    events = await events_until(ns, lambda ev: of(ev, "InvitationCommandRejected", "inv-accepted"), "refused")
    assert of(events, "InvitationCommandRejected", "inv-accepted")[0]["data"]["reason"] == "not_accepted"
