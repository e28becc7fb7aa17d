"""Where a consumer group stands against the end of its topics (status, replay progress)."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


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
        return await consumer.end_offsets(tps)
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
