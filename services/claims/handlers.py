"""Thin batch handler: decoded inputs of both consumed topics, in partition order, to the use case."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from service_runtime.delivery import Incoming
from services.claims.processing import ClaimsProcessor
from services.claims.store import ClaimsStore

HANDLED_PROFILE_EVENTS = frozenset({"AuthorRegistered", "AuthorUpdated", "WorkAdded", "WorkUpdated"})


def make_handler(processor: ClaimsProcessor):
    async def handle(batch: Sequence[Incoming]) -> None:
        # profile.events and webapp.claims are read by one consumer so that one writer
        # at a time decides for a given author; every profile event carries the full AuthorState.
        relevant = [i for i in batch if i.topic != "profile.events" or i.event_type in HANDLED_PROFILE_EVENTS]
        if relevant:
            await processor.handle(relevant)

    return handle


class DeferredCommands:
    """Rebuild only: webapp.claims commands wait until every profile event is applied.

    Live, a claim is decided against the author record as it stands when the claim
    arrives. A rebuild reads the small webapp.claims topic far ahead of profile.events and
    would decide against records not rebuilt yet (a claim with a matching ORCID sent to
    review because the ORCID was still to come). So a rebuild applies profile events at
    once, keeps the commands aside, and applies them once the inputs are consumed (a
    drain hook): each partition in its own order, partitions merged by event time."""

    def __init__(self, processor: ClaimsProcessor, store: ClaimsStore) -> None:
        self.processor = processor
        self.store = store

    async def handle(self, batch: Sequence[Incoming]) -> None:
        facts = [i for i in batch if i.topic == "profile.events" and i.event_type in HANDLED_PROFILE_EVENTS]
        if facts:
            await self.processor.handle(facts)
        await self.store.defer([i for i in batch if i.topic != "profile.events"])

    async def settle(self, batch: int = 500) -> None:
        by_partition: dict[int, list[Incoming]] = {}
        for item in await self.store.deferred():
            by_partition.setdefault(item.partition, []).append(item)
        ordered = list(heapq.merge(*by_partition.values(), key=lambda i: i.envelope.occurred_at))
        for start in range(0, len(ordered), batch):
            await self.processor.handle(ordered[start:start + batch])
