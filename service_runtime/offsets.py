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


async def end_offsets(bootstrap_servers: str, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        return await consumer.end_offsets(tps) if tps else {}
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
