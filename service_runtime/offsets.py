"""Where a consumer group stands against the end of its topics (status, replay progress,
and how far it has read them as a moment: ``ReadHorizon``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service_runtime.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    topic: str
    partition: int
    committed: int  # next offset the group will read (0 when it never committed)
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


async def partitions_of(bootstrap_servers: str, topics: list[str]) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return sorted(
        TopicPartition(t["topic"], p["partition"]) for t in described if t["error_code"] == 0 for p in t["partitions"]
    )


async def end_offsets(bootstrap_servers: str, topics: list[str]) -> dict[TopicPartition, int]:
    tps = await partitions_of(bootstrap_servers, topics)
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)  # a group-less consumer must own the partitions it asks about
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


async def group_progress(bootstrap_servers: str, group_id: str, topics: list[str]) -> list[PartitionProgress]:
    ends = await end_offsets(bootstrap_servers, topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group_id, partitions=list(ends))
    finally:
        await admin.close()
    out = []
    for tp, end in sorted(ends.items()):
        meta = committed.get(tp)
        out.append(PartitionProgress(tp.topic, tp.partition, meta.offset if meta and meta.offset >= 0 else 0, end))
    return out


# --- how far a group has read, as a moment ------------------------------------------


@dataclass(frozen=True, slots=True)
class LogMark:
    """The end offsets of some partitions ((topic, partition) -> offset), taken at ``at``
    or later: every record appended before ``at`` lies below them."""

    at: datetime
    ends: dict[tuple[str, int], int]


def read_until(
    marks: Sequence[LogMark], committed: dict[tuple[str, int], int]
) -> tuple[datetime | None, list[LogMark]]:
    """How far a consumer group has read, as a moment: the newest mark whose end offsets
    its committed offsets (next offset to read; the group commits after handling) all
    reached, so every record appended before that moment has been handled. Returns it
    (None: no mark reached yet) and the newer marks, still to wait for."""
    reached: datetime | None = None
    for mark in marks:
        if all(committed.get(tp, 0) >= end for tp, end in mark.ends.items()):
            reached = mark.at if reached is None else max(reached, mark.at)
    return reached, [m for m in marks if reached is None or m.at > reached]


class ReadHorizon:
    """The moment up to which a consumer group has handled every record of some topics.

    Each ``advance(now)`` marks the topics' end offsets (taken after ``now``) and compares
    the group's committed offsets with the marks kept so far: under a steady backlog the
    group reaches a mark taken a while ago before it is ever caught up."""

    def __init__(
        self, bootstrap_servers: str, group_id: str, topics: list[str], *, max_marks: int = 600, timeout_s: float = 15.0
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.topics = topics
        self.max_marks = max_marks
        self.timeout_s = timeout_s
        self.reached: datetime | None = None
        self._marks: list[LogMark] = []

    async def advance(self, now: datetime) -> datetime | None:
        """Mark now, and return the newest moment reached (raises when the broker does not answer)."""
        progress = await asyncio.wait_for(
            group_progress(self.bootstrap_servers, self.group_id, self.topics), self.timeout_s
        )
        if len(self._marks) < self.max_marks:  # full: the oldest marks are reached first anyway
            self._marks.append(LogMark(now, {(p.topic, p.partition): p.end for p in progress}))
        reached, self._marks = read_until(self._marks, {(p.topic, p.partition): p.committed for p in progress})
        if reached is not None and (self.reached is None or reached > self.reached):
            self.reached = reached
        return self.reached

    async def try_advance(self, now: datetime) -> datetime | None:
        """``advance``, or the moment reached so far when the broker does not answer: what
        waits on this reading keeps waiting until the next try."""
        try:
            return await self.advance(now)
        except Exception as exc:
            log.warning("read_horizon_not_advanced", group=self.group_id, error=repr(exc))
            return self.reached
