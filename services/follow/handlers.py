"""Thin batch handlers: what each consumed topic feeds into (see app.py for the wiring)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from service_runtime.delivery import Incoming
from services.follow.commands import FollowCommands
from services.follow.fanout import ChunkWorker
from services.follow.sources import SourceEvents


def _bind(batch: Sequence[Incoming]) -> None:
    # A batch mixes causes; log lines name the first one, each event carries its own.
    if batch:
        structlog.contextvars.bind_contextvars(correlation_id=batch[0].envelope.correlation_id)


@dataclass(frozen=True)
class Handlers:
    commands: FollowCommands
    sources: SourceEvents
    chunks: ChunkWorker

    async def on_commands(self, batch: Sequence[Incoming]) -> None:
        """webapp.follows: FollowRequested / UnfollowRequested (and the sweeper's nudges)."""
        _bind(batch)
        await self.commands.handle(batch)

    async def on_source_events(self, batch: Sequence[Incoming]) -> None:
        """profile.events, claims.events, trust.events: identity, owner, fan-out triggers."""
        _bind(batch)
        await self.sources.handle(batch)

    async def on_fanout_chunks(self, batch: Sequence[Incoming]) -> None:
        """follow.fanout: one chunk of followers to notify, taken by any replica."""
        _bind(batch)
        await self.chunks.handle(batch)
