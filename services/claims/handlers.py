"""Thin batch handler: decoded inputs of both consumed topics, in partition order, to the use case."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from contracts.topics import Topic
from service_runtime.delivery import Incoming
from services.claims.processing import ClaimsProcessor, is_expiry
from services.claims.store import ClaimsStore

HANDLED_PROFILE_EVENTS = frozenset({"AuthorRegistered", "AuthorUpdated", "WorkAdded", "WorkUpdated"})


def relevant(item: Incoming) -> bool:
    return item.topic != Topic.PROFILE_EVENTS or item.event_type in HANDLED_PROFILE_EVENTS


def make_handler(processor: ClaimsProcessor):
    async def handle(batch: Sequence[Incoming]) -> None:
        # profile.events and webapp.claims are read by one consumer so that one writer
        # at a time decides for a given author; every profile event carries the full AuthorState.
        inputs = [i for i in batch if relevant(i)]
        if inputs:
            await processor.handle(inputs)

    return handle


def live_order_key(item: Incoming) -> float:
    """When the live consumer could first have seen the record: its Kafka timestamp (ms),
    else the time its envelope names."""
    if item.timestamp_ms is not None:
        return float(item.timestamp_ms)
    return item.envelope.occurred_at.timestamp() * 1000


class RebuildInLiveOrder:
    """Rebuild only: every input is kept aside, then applied in the order the live
    consumer most likely saw it, once everything is consumed (a drain hook).

    A rebuild reads each partition at its own pace (the small webapp.claims topic far
    ahead of profile.events), so applying records as they come would decide claims
    against records not rebuilt yet, and decide at once claims that live waited for their
    author (or the other way round), with another history. So the inputs (webapp.claims,
    the handled profile.events, and the expiries the live sweeper published on
    claims.events, a wall-clock decision not to be taken again) are applied each
    partition in its own order, partitions merged by record timestamp: a claim that
    arrived live before its author waits in the rebuild too and is decided by the same
    profile event; one that arrived after is decided at once."""

    def __init__(self, processor: ClaimsProcessor, store: ClaimsStore) -> None:
        self.processor = processor
        self.store = store

    async def handle(self, batch: Sequence[Incoming]) -> None:
        keep = [i for i in batch if (i.topic == Topic.CLAIMS_EVENTS and is_expiry(i))
                or (i.topic != Topic.CLAIMS_EVENTS and relevant(i))]
        await self.store.defer(keep)

    async def settle(self, batch: int = 500) -> None:
        by_partition: dict[tuple[str, int], list[Incoming]] = {}
        for item in await self.store.deferred():  # each partition in offset order
            by_partition.setdefault((item.topic, item.partition), []).append(item)
        streams = [by_partition[k] for k in sorted(by_partition)]
        ordered = list(heapq.merge(*streams, key=live_order_key))
        for start in range(0, len(ordered), batch):
            await self.processor.handle(ordered[start:start + batch])
