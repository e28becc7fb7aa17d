"""What the claims integration tests share: the service in a test namespace, inputs, outputs."""

from __future__ import annotations

import json
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from contracts import Envelope
from contracts.envelope import EventModel
from contracts.events.common import Affiliation
from contracts.events.profile import AuthorRegistered, AuthorState
from contracts.topics import Topic
from service_runtime.service import Service
from service_runtime.store import Collection
from service_runtime.topic_reader import read_topic
from services.claims.app import build_service
from services.claims.settings import ClaimsSettings
from tests.conftest import Namespace, eventually

ORCID = "0000-0002-1825-0097"


def claims_service(ns: Namespace, **overrides: Any) -> Service:
    values: dict[str, Any] = dict(pending_author_timeout_s=600, sweep_interval_s=0.2, outbox_grace_s=1.0)
    values.update(overrides)
    return build_service(ns.settings("claims", cls=ClaimsSettings, **values))


def author_registered(
    author_id: str, *, domains: tuple[str, ...] = ("stanford.edu",), orcid: str | None = ORCID, revision: int = 1
) -> Envelope:
    state = AuthorState(
        author_id=author_id,
        display_name=f"Author {author_id}",
        orcid=orcid,
        affiliation=Affiliation(name="Stanford University", domains=list(domains)),
        works_count=1,
        record_verification_level="L1",
        revision=revision,
    )
    return Envelope.wrap(AuthorRegistered(author_id=author_id, author=state), producer="profile")


def command(payload: EventModel) -> Envelope:
    return Envelope.wrap(payload, producer="webapp")


async def send(producer: AIOKafkaProducer, ns: Namespace, *envelopes: Envelope) -> None:
    """Publish in order; each record keyed by its author (the partition order is the order sent)."""
    for env in envelopes:
        topic = Topic.PROFILE_EVENTS if env.producer == "profile" else Topic.WEBAPP_CLAIMS
        await producer.send(ns.topic(topic), env.to_bytes(), key=env.data["author_id"].encode())
    await producer.flush()


async def authors_known(service: Service, *author_ids: str) -> None:
    """profile.events and webapp.claims are two topics: wait until the authors are projected
    when a test needs them known before its claims (otherwise the claims wait for them).
    A record a claim waits for is stored before its identity arrives: only one with an
    identity is known."""
    await eventually(
        lambda: service.db.authors.count_documents({"_id": {"$in": list(author_ids)}, "identity": {"$ne": None}}),
        until=lambda n: n == len(author_ids),
        what=f"authors {author_ids} projected",
    )


async def claim_events(ns: Namespace) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in await read_topic(ns.infra["kafka"], ns.topic(Topic.CLAIMS_EVENTS))]


async def events_until(ns: Namespace, predicate: Any, what: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    return await eventually(lambda: claim_events(ns), until=predicate, what=what, timeout=timeout)


def of_type(events: list[dict[str, Any]], event_type: str, claim_id: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["event_type"] == event_type and (claim_id is None or e["data"].get("claim_id") == claim_id)
    ]


def http(service: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http), base_url="http://claims")


async def stored(collection: Collection, doc_id: str) -> dict[str, Any]:
    """A document that must be in the store."""
    doc = await collection.find_one({"_id": doc_id})
    assert doc is not None, f"{collection.name}/{doc_id} is not stored"
    return doc
