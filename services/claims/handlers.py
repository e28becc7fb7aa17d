"""Thin batch handler: decoded inputs of both consumed topics, in partition order, to the use case."""

from __future__ import annotations

from collections.abc import Sequence

from service_runtime.delivery import Incoming
from services.claims.processing import ClaimsProcessor

HANDLED_PROFILE_EVENTS = frozenset({"AuthorRegistered", "AuthorUpdated", "WorkAdded", "WorkUpdated"})


def make_handler(processor: ClaimsProcessor):
    async def handle(batch: Sequence[Incoming]) -> None:
        # profile.events and webapp.claims are read by one consumer so that one writer
        # at a time decides for a given author; every profile event carries the full AuthorState.
        relevant = [i for i in batch if i.topic != "profile.events" or i.event_type in HANDLED_PROFILE_EVENTS]
        if relevant:
            await processor.handle(relevant)

    return handle
