"""The Kafka broker (FastStream over aiokafka) with an idempotent producer, and topic admin."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace

import aiokafka
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    OutOfOrderSequenceNumber,
    RequestTimedOutError,
    UnknownProducerId,
)
from faststream.kafka import KafkaBroker

from contracts.topics import TOPICS, TopicSpec


class ProducerRenewed(Exception):
    """A send failed because the broker lost the idempotent producer's state; the producer
    was replaced by a new one, and the send is to be tried again."""


TRANSIENT_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    ProducerRenewed,
)

# The broker no longer knows the producer's sequence (it restarted without the producer's
# last batches): aiokafka's idempotent producer fails every send from then on, where the
# Java client would take a new producer id. A new producer goes on.
PRODUCER_STATE_LOST: tuple[type[BaseException], ...] = (OutOfOrderSequenceNumber, UnknownProducerId)
_renewing = asyncio.Lock()


async def renew_producer(broker: KafkaBroker, failed: object) -> None:
    """Replace the broker's producer by a new one with the same settings, unless another
    task did since ``failed`` (the producer a send failed on: ``current_producer``) failed."""
    async with _renewing:
        fast = broker.config.broker_config.producer
        if current_producer(broker) is not failed:
            return
        await fast.disconnect()
        producer = aiokafka.AIOKafkaProducer(**broker._connection_kwargs)
        await fast.connect(producer, serializer=fast.serializer, codec=fast.codec)  # type: ignore[attr-defined]


def current_producer(broker: KafkaBroker) -> object:
    """The aiokafka producer the broker publishes with now (compared by identity)."""
    return getattr(broker.config.broker_config.producer, "_producer", None)


_TOPIC_ALREADY_EXISTS = 36


def make_broker(bootstrap_servers: str, client_id: str) -> KafkaBroker:
    # Idempotent producer with acks=all: a retried send never duplicates a record, and a
    # record is acknowledged only once every in-sync replica has it.
    return KafkaBroker(
        bootstrap_servers,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
        logger=None,
    )


async def ensure_topics(
    bootstrap_servers: str, specs: Iterable[TopicSpec] | None = None, prefix: str = ""
) -> list[str]:
    """Create the registry's topics that don't exist yet (explicit partitions and config)."""
    specs = [replace(s, name=f"{prefix}{s.name}") for s in (specs if specs is not None else TOPICS.values())]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="bzpeer-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, 1, topic_configs=s.config()) for s in missing]
            )
            for name, code, *_ in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise KafkaError(f"creating topic {name} failed with error code {code}")
        await _wait_for_metadata(admin, [s.name for s in missing])
        return [s.name for s in missing]
    finally:
        await admin.close()


async def delete_topics(bootstrap_servers: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="bzpeer-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def _wait_for_metadata(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30) -> None:
    """Topic creation is asynchronous in KRaft: wait until every partition has a leader."""
    if not names:
        return
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        ready = all(
            t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        )
        if ready:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise KafkaTimeoutError(f"topics {names} have no leaders after {timeout_s}s")
        await asyncio.sleep(0.1)
