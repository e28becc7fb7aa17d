"""What the collab integration tests share: the service in a test namespace, the facts it
folds (owners, openness), commands, and what it published."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

import httpx
from aiokafka import AIOKafkaProducer

from contracts import Envelope
from contracts.envelope import EventModel
from contracts.events.claims import AuthorClaimState, ClaimApproved, ClaimRevoked
from contracts.events.collab import (
    InvitationAnswerRequested,
    InvitationRequested,
    InvitationWithdrawRequested,
    MessagePostRequested,
)
from contracts.events.profile import AuthorRegistered, AuthorState, AuthorUpdated
from contracts.topics import Topic
from service_runtime.auth import mint_token
from service_runtime.service import Service
from service_runtime.topic_reader import read_topic
from services.collab.app import build_service
from services.collab.settings import CollabSettings
from tests.conftest import Namespace, eventually


def collab_settings(ns: Namespace, **overrides: Any) -> CollabSettings:
    values: dict[str, Any] = dict(outbox_grace_s=1.0, outbox_sweep_interval_s=0.5)
    values.update(overrides)
    settings: CollabSettings = ns.settings("collab", cls=CollabSettings, **values)
    return settings


def collab_service(ns: Namespace, **overrides: Any) -> Service:
    return build_service(collab_settings(ns, **overrides))


def http(service: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(service.http), base_url="http://collab")


def auth(service: Service, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(service.settings, user)}"}


# --- inputs ---------------------------------------------------------------------------------


def wrap(payload: EventModel, producer: str) -> Envelope:
    return Envelope.wrap(payload, producer=producer)


def profile(author_id: str, *, open_: bool = True, revision: int = 1, name: str | None = None) -> Envelope:
    state = AuthorState(
        author_id=author_id,
        display_name=name or f"Author {author_id}",
        open_to_collaborate=open_,
        works_count=3,
        record_verification_level="L1",
        revision=revision,
    )
    kind = AuthorRegistered if revision == 1 else AuthorUpdated
    return wrap(kind(author_id=author_id, author=state), "profile")


def claimed(author_id: str, owner: str, *, revision: int = 2) -> Envelope:
    state = AuthorClaimState(
        claimed=True, owner_user_id=owner, claim_id=f"c-{owner}", verification_level="L2", revision=revision
    )
    return wrap(
        ClaimApproved(
            claim_id=f"c-{owner}", author_id=author_id, user_id=owner, author_claim=state, verification_level="L2"
        ),
        "claims",
    )


def revoked(author_id: str, owner: str, *, revision: int = 3) -> Envelope:
    state = AuthorClaimState(claimed=False, revision=revision)
    return wrap(
        ClaimRevoked(claim_id=f"c-{owner}", author_id=author_id, user_id=owner, author_claim=state, reason="test"),
        "claims",
    )


def invite(author_id: str, sender: str, invitation_id: str | None = None, message: str = "Shall we?") -> Envelope:
    return wrap(
        InvitationRequested(
            invitation_id=invitation_id or f"inv-{uuid.uuid4().hex[:12]}",
            author_id=author_id,
            user_id=sender,
            message=message,
        ),
        "webapp",
    )


def answer(author_id: str, invitation_id: str, user: str, choice: Literal["accept", "decline"] = "accept") -> Envelope:
    return wrap(
        InvitationAnswerRequested(invitation_id=invitation_id, author_id=author_id, user_id=user, answer=choice),
        "webapp",
    )


def withdraw(author_id: str, invitation_id: str, user: str) -> Envelope:
    return wrap(InvitationWithdrawRequested(invitation_id=invitation_id, author_id=author_id, user_id=user), "webapp")


def post(author_id: str, invitation_id: str, user: str, text: str, message_id: str | None = None) -> Envelope:
    return wrap(
        MessagePostRequested(
            invitation_id=invitation_id,
            author_id=author_id,
            user_id=user,
            message_id=message_id or f"m-{uuid.uuid4().hex[:12]}",
            text=text,
        ),
        "webapp",
    )


TOPIC_OF = {"profile": Topic.PROFILE_EVENTS, "claims": Topic.CLAIMS_EVENTS, "webapp": Topic.WEBAPP_COLLAB}


async def send(producer: AIOKafkaProducer, ns: Namespace, *envelopes: Envelope) -> None:
    """Publish in order, each to its topic (by producer), keyed by its author."""
    for env in envelopes:
        await producer.send(ns.topic(TOPIC_OF[env.producer]), env.to_bytes(), key=env.data["author_id"].encode())
    await producer.flush()


async def known(service: Service, author_id: str, *, owner: str | None, open_: bool = True) -> None:
    """Wait until the service folded the record's owner and openness (they come on other
    topics than the commands: a test that needs them first waits for them)."""

    async def probe() -> dict[str, Any] | None:
        return await service.db.authors.find_one({"_id": author_id})

    def ok(doc: dict[str, Any] | None) -> bool:
        return (
            doc is not None
            and (doc.get("owner") or {}).get("owner_user_id") == owner
            and (doc.get("profile") or {}).get("open_to_collaborate") == open_
        )

    await eventually(probe, until=ok, what=f"{author_id} folded")


# --- outputs --------------------------------------------------------------------------------


async def published(ns: Namespace, topic: str = Topic.COLLAB_EVENTS) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in await read_topic(ns.infra["kafka"], ns.topic(topic))]


def of(events: list[dict[str, Any]], event_type: str, invitation_id: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["event_type"] == event_type and (invitation_id is None or e["data"].get("invitation_id") == invitation_id)
    ]


async def events_until(ns: Namespace, predicate: Any, what: str, topic: str = Topic.COLLAB_EVENTS) -> list[dict]:
    return await eventually(lambda: published(ns, topic), until=predicate, what=what, timeout=30)


async def stored(service: Service, invitation_id: str) -> dict[str, Any] | None:
    return await service.db.invitations.find_one({"_id": invitation_id})


async def status_of(service: Service, invitation_id: str, status: str) -> dict[str, Any]:
    doc = await eventually(
        lambda: stored(service, invitation_id),
        until=lambda d: d is not None and d["status"] == status and not d.get("outbox"),
        what=f"{invitation_id} {status}",
    )
    assert doc is not None
    return doc
