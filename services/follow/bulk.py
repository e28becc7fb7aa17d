"""Sending a large fan-out's notifications: hundreds of thousands of records, each built
once as bytes and handed to an aiokafka producer of their own.

The runtime's publisher sends each event through FastStream, validated and encoded by
Pydantic, which costs far more per record than the send itself; a fan-out of a million
followers would spend most of its time there. The records of one shared inbox entry
differ only in the follower (its id and the notification id derived from it), so they
are encoded with orjson from one template, and sent by a producer tuned for throughput
(larger batches, a longer linger); idempotent with acks=all like the runtime's, so a
retried send never duplicates a record and an acknowledged one is on every in-sync
replica. Unit tests check the records decode as ``NotificationCreated`` envelopes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from contracts.envelope import Envelope
from contracts.events.notifications import NotificationCreated, notification_id
from contracts.topics import Topic
from service_runtime.kafka import PRODUCER_STATE_LOST, ProducerRenewed
from service_runtime.publishing import EVENT_TYPE_HEADER, PRODUCER_HEADER
from service_runtime.retry import retry_transient
from services.follow.rules import SharedEntry
from services.follow.settings import FollowSettings

# Records built and handed to the producer between two yields to the event loop (a few
# ms of CPU): the commands, source events and HTTP requests of the same process wait for
# the fan-out's CPU work at most this long at each of their own steps.
SLICE = 250


def shared_records(
    entry: SharedEntry, users: Sequence[str], *, producer: str, cause: Envelope, occurred_at: datetime
) -> list[tuple[bytes, bytes]]:
    """(key, value) of each follower's ``NotificationCreated`` of a shared entry: the same
    bytes on every attempt (ids derived from the source event and the user, the moment the
    entry was written), so a redelivered chunk sends the same events again."""
    envelope: dict[str, Any] = {
        "event_type": NotificationCreated.event_type,
        "schema_version": NotificationCreated.schema_version,
        "occurred_at": occurred_at,
        "producer": producer,
        "correlation_id": cause.correlation_id,
        "causation_id": str(cause.event_id),
    }
    data: dict[str, Any] = {
        "author_id": entry.author_id,
        "kind": entry.kind,
        "source_event_id": str(entry.source_event_id),
        "title": entry.title,
        "created_at": entry.created_at,
        "shared_id": entry.shared_id,
    }
    out = []
    for user in users:
        nid = str(notification_id(entry.source_event_id, user))
        value = orjson.dumps(
            {**envelope, "event_id": nid, "data": {**data, "notification_id": nid, "user_id": user}},
            option=orjson.OPT_UTC_Z,
        )
        out.append((user.encode(), value))
    return out


class NotificationSender:
    """A producer of its own for the records of large fan-outs (see the module doc)."""

    def __init__(self, settings: FollowSettings) -> None:
        self.settings = settings
        self.topic = settings.physical_topic(Topic.NOTIFICATIONS_EVENTS)
        self.headers = [
            ("content-type", b"application/json"),
            (EVENT_TYPE_HEADER, NotificationCreated.event_type.encode()),
            (PRODUCER_HEADER, settings.service_name.encode()),
        ]
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        await self._ready()

    async def _ready(self) -> AIOKafkaProducer:
        """The producer, started on first use: the service's consumers start before its
        startup hooks, so a chunk redelivered right after a restart can come first (it
        found no producer and was dead-lettered with its entry written, unpublished)."""
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers,
                    client_id=f"bzpeer-{self.settings.service_name}-fanout",
                    enable_idempotence=True,
                    acks="all",
                    linger_ms=self.settings.fanout_send_linger_ms,
                    max_batch_size=1024 * 1024,
                    max_request_size=4 * 1024 * 1024,
                    request_timeout_ms=30_000,
                )
                await producer.start()
                self._producer = producer
            return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send_shared(
        self, entry: SharedEntry, users: Sequence[str], *, cause: Envelope, occurred_at: datetime
    ) -> int:
        """Send each follower's notification of a shared entry, then wait for every
        acknowledgement; a transient failure sends all again (the same ids: consumers
        dedupe). Built and sent a slice at a time (see ``SLICE``)."""
        if users:
            await retry_transient(
                lambda: self._send_all(entry, users, cause, occurred_at), what="send a fan-out's notifications"
            )
        return len(users)

    async def _send_all(self, entry: SharedEntry, users: Sequence[str], cause: Envelope, at: datetime) -> None:
        producer = await self._ready()
        try:
            await self._send_with(producer, entry, users, cause, at)
        except PRODUCER_STATE_LOST as exc:
            # The broker lost this producer's state (see service_runtime.kafka): a new one.
            async with self._starting:
                stale = self._producer
                if stale is not None and stale is producer:
                    self._producer = None
                    await stale.stop()
            raise ProducerRenewed(repr(exc)) from exc

    async def _send_with(
        self, producer: AIOKafkaProducer, entry: SharedEntry, users: Sequence[str], cause: Envelope, at: datetime
    ) -> None:
        futures: list[asyncio.Future[Any]] = []
        name = self.settings.service_name
        for start in range(0, len(users), SLICE):
            for key, value in shared_records(
                entry, users[start : start + SLICE], producer=name, cause=cause, occurred_at=at
            ):
                futures.append(await producer.send(self.topic, value, key=key, headers=self.headers))
            await asyncio.sleep(0)
        await asyncio.gather(*futures)


def decode_shared_record(value: bytes) -> NotificationCreated:
    """A record as consumers read it (tests)."""
    envelope = Envelope.model_validate_json(value)
    return NotificationCreated.model_validate(envelope.data)
