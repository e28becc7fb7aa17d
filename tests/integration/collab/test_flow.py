"""The invitation flow over HTTP and Kafka against the real broker and store: invite,
accept, exchange messages, read the thread; the notifications of both parties; and the
HTTP answers to what it can check at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from contracts.topics import Topic
from service_runtime.service import Service
from tests.conftest import Namespace, eventually
from tests.integration.collab.helpers import (
    auth,
    claimed,
    collab_service,
    events_until,
    http,
    known,
    of,
    profile,
    published,
    send,
    status_of,
)

OWNER, SENDER, STRANGER = "u-owner", "u-sender", "u-stranger"


def last_message_is(text: str) -> Callable[[httpx.Response], bool]:
    return lambda resp: [m["text"] for m in resp.json()["thread"]][-1:] == [text]


@pytest.fixture
async def collab(ns: Namespace) -> AsyncIterator[Service]:
    service = collab_service(ns)
    async with service.running():
        yield service


async def test_invite_accept_and_converse(ns: Namespace, producer: AIOKafkaProducer, collab: Service) -> None:
    await send(producer, ns, profile("a1", name="Quoc V. Le"), claimed("a1", OWNER))
    await known(collab, "a1", owner=OWNER)
    async with http(collab) as client:
        r = await client.post(
            "/invitations", json={"author_id": "a1", "message": "Shall we work on it?"}, headers=auth(collab, SENDER)
        )
        assert r.status_code == 202, r.text
        invitation_id = r.json()["invitation_id"]
        await status_of(collab, invitation_id, "pending")

        mine = (await client.get(f"/users/{OWNER}/invitations", headers=auth(collab, OWNER))).json()
        assert [i["invitation_id"] for i in mine["received"]] == [invitation_id] and mine["sent"] == []
        theirs = (await client.get(f"/users/{SENDER}/invitations", headers=auth(collab, SENDER))).json()
        assert [i["invitation_id"] for i in theirs["sent"]] == [invitation_id] and theirs["received"] == []
        assert theirs["sent"][0]["message"] == "Shall we work on it?"
        assert theirs["invitations"] == theirs["sent"] and mine["invitations"] == mine["received"]

        r = await client.post(f"/invitations/{invitation_id}/accept", headers=auth(collab, OWNER))
        assert r.status_code == 202, r.text
        await status_of(collab, invitation_id, "accepted")
        for user, text in ((SENDER, "Great! Here is my draft."), (OWNER, "Thanks, reading it now.")):
            r = await client.post(
                f"/invitations/{invitation_id}/messages", json={"text": text}, headers=auth(collab, user)
            )
            assert r.status_code == 202, r.text
            await eventually(
                lambda: client.get(f"/invitations/{invitation_id}", headers=auth(collab, SENDER)),
                until=last_message_is(text),
                what=f"message {text!r} in the thread",
            )
        for user in (SENDER, OWNER):
            view = (await client.get(f"/invitations/{invitation_id}", headers=auth(collab, user))).json()
            assert view["status"] == "accepted" and view["message_count"] == 2
            assert [(m["user_id"], m["text"]) for m in view["thread"]] == [
                (SENDER, "Great! Here is my draft."),
                (OWNER, "Thanks, reading it now."),
            ]
        assert (await client.get(f"/invitations/{invitation_id}", headers=auth(collab, STRANGER))).status_code == 403

    events = await published(ns)
    assert [e["event_type"] for e in events if e["data"].get("invitation_id") == invitation_id] == [
        "InvitationSent",
        "InvitationAccepted",
        "MessagePosted",
        "MessagePosted",
    ]
    assert [e["data"]["invitation"]["revision"] for e in events] == [1, 2, 3, 4]
    notes = await events_until(
        ns, lambda ev: len(of(ev, "NotificationCreated")) >= 2, "two notifications", topic=Topic.NOTIFICATIONS_EVENTS
    )
    assert sorted((n["data"]["user_id"], n["data"]["kind"]) for n in notes) == [
        (OWNER, "invitation_received"),
        (SENDER, "invitation_answered"),
    ]
    answered = next(n["data"] for n in notes if n["data"]["kind"] == "invitation_answered")
    assert answered["title"] == "Quoc V. Le accepted your invitation to collaborate"
    assert answered["source_event_id"] == of(events, "InvitationAccepted")[0]["event_id"]
    doc = await status_of(collab, invitation_id, "accepted")  # and its outbox emptied
    assert len(doc["applied"]) == 4
    assert await collab.db.senders.count_documents({}) == 0, "an accepted invitation holds no slot"


async def test_http_answers_what_it_can_check_at_once(
    ns: Namespace, producer: AIOKafkaProducer, collab: Service
) -> None:
    await send(
        producer,
        ns,
        profile("open"),
        claimed("open", OWNER),
        profile("closed", open_=False),
        claimed("closed", "u-busy"),
        profile("unclaimed"),
    )
    await known(collab, "open", owner=OWNER)
    await known(collab, "closed", owner="u-busy", open_=False)
    await known(collab, "unclaimed", owner=None)

    async with http(collab) as client:

        async def invite(author: str, user: str, message: str = "hello") -> tuple[int, dict]:
            r = await client.post(
                "/invitations", json={"author_id": author, "message": message}, headers=auth(collab, user)
            )
            return r.status_code, r.json()

        for author, claimed_, open_ in (("open", True, True), ("closed", True, False), ("unclaimed", False, True)):
            view = (await client.get(f"/authors/{author}/collaboration")).json()
            assert (view["claimed"], view["open_to_collaborate"], view["accepts_invitations"]) == (
                claimed_,
                open_,
                claimed_ and open_,
            )
        assert (await client.post("/invitations", json={"author_id": "open", "message": "hi"})).status_code == 401
        code, body = await invite("open", SENDER, "x" * 2001)
        assert code == 422 and body["reason"] == "message_too_long"
        assert (await invite("open", SENDER, ""))[0] == 422
        for author, user, reason in (
            ("unclaimed", SENDER, "not_claimed"),
            ("nobody-knows", SENDER, "not_claimed"),
            ("closed", SENDER, "not_open_to_collaborate"),
            ("open", OWNER, "self_invitation"),
        ):
            code, body = await invite(author, user)
            assert (code, body["reason"]) == (409, reason), (author, body)
        code, body = await invite("open", SENDER)
        assert code == 202
        invitation_id = body["invitation_id"]
        await status_of(collab, invitation_id, "pending")
        code, body = await invite("open", SENDER)
        assert (code, body["reason"]) == (409, "already_invited")

        assert (await client.get("/invitations/inv-nope", headers=auth(collab, SENDER))).status_code == 404
        assert (await client.post("/invitations/inv-nope/accept", headers=auth(collab, OWNER))).status_code == 404
        path = f"/invitations/{invitation_id}"
        for verb, user, reason in (
            ("accept", SENDER, "not_owner"),
            ("decline", STRANGER, "not_owner"),
            ("withdraw", OWNER, "not_sender"),
        ):
            r = await client.post(f"{path}/{verb}", headers=auth(collab, user))
            assert (r.status_code, r.json()["reason"]) == (403, reason)
        r = await client.post(f"{path}/messages", json={"text": "hi"}, headers=auth(collab, STRANGER))
        assert (r.status_code, r.json()["reason"]) == (403, "not_party")
        r = await client.post(f"{path}/messages", json={"text": "hi"}, headers=auth(collab, SENDER))
        assert (r.status_code, r.json()["reason"]) == (409, "not_accepted")
        r = await client.post(f"{path}/messages", json={"text": "x" * 2001}, headers=auth(collab, SENDER))
        assert (r.status_code, r.json()["reason"]) == (422, "message_too_long")
        assert (await client.get(path, headers=auth(collab, STRANGER))).status_code == 403
        assert (await client.get(f"/users/{SENDER}/invitations", headers=auth(collab, STRANGER))).status_code == 403
        assert (await client.get(f"/users/{SENDER}/invitations")).status_code == 401

        assert (await client.post(f"{path}/decline", headers=auth(collab, OWNER))).status_code == 202
        await status_of(collab, invitation_id, "declined")
        r = await client.post(f"{path}/accept", headers=auth(collab, OWNER))
        assert (r.status_code, r.json()["reason"]) == (409, "not_pending")
        r = await client.post(f"{path}/withdraw", headers=auth(collab, SENDER))
        assert (r.status_code, r.json()["reason"]) == (409, "not_pending")
        code, body = await invite("open", SENDER)
        assert (code, body["reason"]) == (409, "declined_recently")
        assert "you can invite them again from" in body["detail"]
        # Someone else may still invite them.
        assert (await invite("open", STRANGER))[0] == 202


async def test_http_refuses_a_sixth_pending_invitation(
    ns: Namespace, producer: AIOKafkaProducer, collab: Service
) -> None:
    records = [f"r{n}" for n in range(6)]
    await send(producer, ns, *(e for r in records for e in (profile(r), claimed(r, f"owner-{r}"))))
    for r in records:
        await known(collab, r, owner=f"owner-{r}")
    async with http(collab) as client:
        ids = []
        for r in records[:5]:
            resp = await client.post(
                "/invitations", json={"author_id": r, "message": "hi"}, headers=auth(collab, SENDER)
            )
            assert resp.status_code == 202
            ids.append(resp.json()["invitation_id"])
        for invitation_id in ids:
            await status_of(collab, invitation_id, "pending")
        resp = await client.post(
            "/invitations", json={"author_id": "r5", "message": "hi"}, headers=auth(collab, SENDER)
        )
        assert (resp.status_code, resp.json()["reason"]) == (409, "too_many_open_invitations")
        # Withdrawn, one frees its slot.
        assert (await client.post(f"/invitations/{ids[0]}/withdraw", headers=auth(collab, SENDER))).status_code == 202
        await status_of(collab, ids[0], "withdrawn")
        await eventually(
            lambda: collab.db.senders.find_one({"_id": SENDER}),
            until=lambda d: d is not None and len(d["pending"]) == 4,
            what="the slot freed",
        )
        resp = await client.post(
            "/invitations", json={"author_id": "r5", "message": "hi"}, headers=auth(collab, SENDER)
        )
        assert resp.status_code == 202
