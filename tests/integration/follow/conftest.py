"""The follow service against the real broker and store, and ways to feed it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from contracts import Envelope
from contracts.envelope import EventModel
from contracts.events.claims import AuthorClaimState, ClaimApproved
from contracts.events.follows import FollowRequested, UnfollowRequested
from contracts.events.profile import AuthorRegistered, AuthorState, WorkAdded, WorkSummary
from contracts.events.trust import TrustScoreChanged
from service_runtime.service import Service
from service_runtime.topic_reader import read_topic
from services.follow.app import build_service
from services.follow.settings import FollowSettings
from services.follow.store import FollowStore
from tests.conftest import Namespace, eventually


def follow_settings(ns: Namespace, **overrides: Any) -> FollowSettings:
    values: dict[str, Any] = dict(unknown_author_wait_s=30.0, sweep_interval_s=0.2, fanout_chunk_size=7)
    values.update(overrides)
    settings: FollowSettings = ns.settings("follow", cls=FollowSettings, **values)
    return settings


def store_of(service: Service) -> FollowStore:
    store: FollowStore = service.http.state.follow_store
    return store


async def author_doc(service: Service, author: str) -> dict[str, Any]:
    """The author's document as stored ({} when there is none)."""
    return await store_of(service).author(author) or {}


async def known(service: Service, author: str) -> dict[str, Any]:
    """Wait until the service knows the author (its registration was read)."""
    return await eventually(
        lambda: author_doc(service, author), until=lambda d: bool(d.get("known")), what=f"{author} known"
    )


async def plan_of(store: FollowStore, fid: str) -> dict[str, Any]:
    """A fan-out plan with its progress ({} while there is none)."""
    return await store.fanout(fid) or {}


@pytest.fixture
async def follow(ns: Namespace) -> AsyncIterator[Service]:
    service = build_service(follow_settings(ns))
    async with service.running():
        yield service


async def publish(
    producer: AIOKafkaProducer, ns: Namespace, envelopes: Sequence[Envelope], topic: str, key: str | None = None
) -> None:
    futures = [
        await producer.send(ns.topic(topic), e.to_bytes(), key=(key or e.data["author_id"]).encode()) for e in envelopes
    ]
    for f in futures:
        await f


def wrap(payload: EventModel, at: datetime | None = None, **kw: Any) -> Envelope:
    return Envelope.wrap(payload, producer="test", occurred_at=at, **kw)


def follow_cmd(user: str, author: str, at: datetime | None = None) -> Envelope:
    return wrap(FollowRequested(user_id=user, author_id=author), at)


def unfollow_cmd(user: str, author: str, at: datetime | None = None) -> Envelope:
    return wrap(UnfollowRequested(user_id=user, author_id=author), at)


def author_state(author: str, name: str = "Quoc V. Le", revision: int = 1) -> AuthorState:
    return AuthorState(
        author_id=author, display_name=name, works_count=1, record_verification_level="L1", revision=revision
    )


def registered(author: str, name: str = "Quoc V. Le", revision: int = 1) -> Envelope:
    return wrap(AuthorRegistered(author_id=author, author=author_state(author, name, revision)))


def work_added(
    author: str, title: str = "Sequence to Sequence Learning", revision: int = 2, at: datetime | None = None
) -> Envelope:
    work = WorkSummary(work_id=f"w-{title[:10].replace(' ', '-')}", type="article", year=2014, title=title)
    return wrap(WorkAdded(author_id=author, author=author_state(author, revision=revision), work=work), at)


def claim_approved(author: str, owner: str, revision: int = 2, at: datetime | None = None) -> Envelope:
    state = AuthorClaimState(
        claimed=True,
        owner_user_id=owner,
        claim_id="c1",
        verification_level="L2",
        since=datetime.now(UTC),
        revision=revision,
    )
    return wrap(
        ClaimApproved(claim_id="c1", author_id=author, user_id=owner, author_claim=state, verification_level="L2"), at
    )


def trust_changed(
    author: str, band: str, previous: str | None, revision: int = 2, at: datetime | None = None
) -> Envelope:
    return wrap(
        TrustScoreChanged(
            author_id=author,
            score=50,
            band=band,
            verification_level="L1",
            components=[],
            previous_score=21,
            previous_band=previous,
            reason="test",
            formula_version=1,
            revision=revision,
        ),
        at,
    )


def later(seconds: float = 1.0) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def events(ns: Namespace, topic: str, event_type: str | None = None) -> list[dict[str, Any]]:
    records = await read_topic(ns.infra["kafka"], ns.topic(topic))
    out = [json.loads(r.value) for r in records]
    return [e for e in out if event_type is None or e["event_type"] == event_type]
