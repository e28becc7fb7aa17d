"""What the follow service learns from other services' events: which authors exist (and
their names), who owns a record, and the events that notify followers.

Identity and owner are folds of profile.events and claims.events (newest revision wins),
the same live and in a rebuild. A batch is handled as a whole: one read of the authors it
concerns, the events applied in memory in partition order (a notification's title uses
the name known at that point), one bulk write of the names and owners that changed; live,
every fan-out the batch triggers is then planned together (``FanoutPlanner.plan``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.envelope import Envelope, EventModel
from contracts.events.claims import CLAIM_STATE_EVENTS, ClaimApproved, author_claim_of
from contracts.events.notifications import NotificationKind
from contracts.events.profile import AuthorRegistered, AuthorUpdated, WorkAdded, WorkUpdated
from contracts.events.trust import TrustScoreChanged
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from service_runtime.logging import get_logger
from services.follow.fanout import FanoutPlanner, FanoutTrigger
from services.follow.rules import AuthorFacts, band_went_up, notification_title
from services.follow.store import FollowStore

log = get_logger(__name__)


@dataclass
class SourceBatch:
    """What a batch of source events does: names and owners to write, fan-outs to start."""

    facts: dict[str, AuthorFacts]  # the authors concerned, as stored, updated in order
    named: dict[str, AuthorFacts] = field(default_factory=dict)
    owned: dict[str, AuthorFacts] = field(default_factory=dict)
    triggers: list[FanoutTrigger] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Named:
    author_id: str
    display_name: str
    revision: int

    def apply(self, batch: SourceBatch, source: Envelope) -> None:
        facts = batch.facts[self.author_id]
        if facts.named(self.display_name, self.revision):
            batch.named[self.author_id] = facts


@dataclass(frozen=True, slots=True)
class Claimed:
    author_id: str
    payload: EventModel

    def apply(self, batch: SourceBatch, source: Envelope) -> None:
        claim = author_claim_of(self.payload)
        facts = batch.facts[self.author_id]
        if claim is not None and facts.claimed(claim):
            batch.owned[self.author_id] = facts


@dataclass(frozen=True, slots=True)
class Notifies:
    """The event notifies the author's followers; the title names the author as known at
    this point of the batch (``name``: as the event itself names it)."""

    author_id: str
    kind: NotificationKind
    detail: str | None = None
    name: str | None = None

    def apply(self, batch: SourceBatch, source: Envelope) -> None:
        name = self.name or batch.facts[self.author_id].name(self.author_id)
        title = notification_title(self.kind, name, self.detail)
        batch.triggers.append(FanoutTrigger(source, self.author_id, self.kind, title))


Fact = Named | Claimed | Notifies


def _profile(p: AuthorRegistered | AuthorUpdated | WorkUpdated, item: Incoming[Any]) -> list[Fact]:
    return [Named(p.author_id, p.author.display_name, p.author.revision)]


def _work_added(p: WorkAdded, item: Incoming[WorkAdded]) -> list[Fact]:
    named = Named(p.author_id, p.author.display_name, p.author.revision)
    return [named, Notifies(p.author_id, "new_work", p.work.title, name=p.author.display_name)]


def _claim_state(p: EventModel, item: Incoming[Any]) -> list[Fact]:
    claim = author_claim_of(p)
    return [Claimed(str(p.key()), p)] if claim is not None else []


def _claim_approved(p: ClaimApproved, item: Incoming[ClaimApproved]) -> list[Fact]:
    return [Claimed(p.author_id, p), Notifies(p.author_id, "claim_approved")]


def _trust(p: TrustScoreChanged, item: Incoming[TrustScoreChanged]) -> list[Fact]:
    return [Notifies(p.author_id, "trust_band_up", p.band)] if band_went_up(p.previous_band, p.band) else []


READ_SOURCE = (
    Dispatch[list[Fact]]()
    .on(AuthorRegistered, handler=_profile)
    .on(AuthorUpdated, handler=_profile)
    .on(WorkUpdated, handler=_profile)
    .on(WorkAdded, handler=_work_added)
    .on(*(t for t in CLAIM_STATE_EVENTS if t is not ClaimApproved), handler=_claim_state)
    .on(ClaimApproved, handler=_claim_approved)
    .on(TrustScoreChanged, handler=_trust)
)


async def fold_sources(store: FollowStore, batch: Sequence[Incoming[Any]]) -> SourceBatch:
    """Apply a batch of source events to the authors they concern, in order, and write
    the names and owners that changed."""
    facts = [(item.envelope, READ_SOURCE(item)) for item in batch]
    authors = {f.author_id for _, fs in facts for f in fs}
    out = SourceBatch(await store.author_facts(authors))
    for envelope, fs in facts:
        for f in fs:
            f.apply(out, envelope)
    await store.write_facts(out.named, out.owned)
    return out


class SourceEvents:
    """Live: profile.events, claims.events, trust.events -> identity, owner, fan-outs."""

    accepts = READ_SOURCE.types

    def __init__(self, store: FollowStore, planner: FanoutPlanner) -> None:
        self.store = store
        self.planner = planner

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        started = time.perf_counter()
        applied = await fold_sources(self.store, batch)
        written = time.perf_counter()
        await self.planner.plan(applied.triggers)
        log.info(
            "source_batch",
            events=len(batch),
            authors=len(applied.facts),
            named=len(applied.named),
            owned=len(applied.owned),
            triggers=len(applied.triggers),
            fold_s=round(written - started, 3),
            plan_s=round(time.perf_counter() - written, 3),
        )


class SourcesRebuild:
    """Rebuild only: identity and owner, the same fold; fan-outs were planned live and their
    notifications come back from notifications.events."""

    accepts = READ_SOURCE.types

    def __init__(self, store: FollowStore) -> None:
        self.store = store

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        await fold_sources(self.store, batch)
