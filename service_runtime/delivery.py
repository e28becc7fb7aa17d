"""Batch consumption with at-least-once delivery and exactly-once effects.

For every batch of records: decode each (a message that is not UTF-8 JSON, or fails its
envelope or payload schema, goes to ``<topic>.dlq`` with the error and its origin), hand the
decoded ones to the service's handler, and only then let FastStream commit the offsets.

* A transient failure (store or broker unreachable) is retried with backoff, forever:
  never dead-lettered, never committed. If the process dies meanwhile, the batch is
  delivered again and the idempotent handler makes the second run harmless.
* Any other handler error re-runs the batch one message at a time, to find the message
  that fails; that one is retried ``handler_attempts`` times and then dead-lettered with
  its error, and the stream goes on.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from contracts.envelope import Envelope, EventModel
from contracts.registry import DecodeError, decode
from contracts.topics import dlq_topic
from service_runtime.logging import get_logger
from service_runtime.metrics import Metrics
from service_runtime.publishing import EVENT_TYPE_HEADER, PRODUCER_HEADER, EventPublisher
from service_runtime.retry import is_transient, retry_transient
from service_runtime.settings import RuntimeSettings

log = get_logger(__name__)
P = TypeVar("P", bound=EventModel, covariant=True)


@dataclass(frozen=True, slots=True)
class Incoming(Generic[P]):
    """A decoded message and where it came from."""

    envelope: Envelope
    payload: P
    topic: str
    partition: int
    offset: int
    # When the record was appended (the Kafka record timestamp, ms): with the partitions
    # read independently, the best estimate of the order a live consumer saw them in.
    timestamp_ms: int | None = None
    # The consumer's partitions (logical topic, number) that still had records in the log
    # behind this batch when it was handed over (as of the consumer's last fetch; one not
    # fetched yet counts too): the handler reads a backlog there, not live input. The same
    # set for every message of a batch.
    backlog: frozenset[tuple[str, int]] = frozenset()

    @property
    def event_type(self) -> str:
        return self.envelope.event_type


BatchHandler = Callable[[Sequence[Incoming[Any]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: ConsumerRecord
    reason: str  # "undecodable" or "handler_failed"
    error: str


class BatchDelivery:
    """Runs one service handler over batches of records (see the module doc)."""

    def __init__(
        self,
        *,
        handler: BatchHandler,
        publisher: EventPublisher,
        metrics: Metrics,
        settings: RuntimeSettings,
        group_id: str,
        skip_own: frozenset[str] = frozenset(),
        accepts: frozenset[str] | None = None,
    ) -> None:
        self.handler = handler
        self.publisher = publisher
        self.metrics = metrics
        self.settings = settings
        self.group_id = group_id
        # Event types this service publishes itself and this consumer passes over when it
        # was the producer (e.g. the notifications follow wrote into the inbox already).
        self.skip_own = frozenset(t.encode() for t in skip_own)
        self.me = settings.service_name.encode()
        # None: every type of the topics; else only these (others committed undecoded).
        self.accepts = None if accepts is None else frozenset(t.encode() for t in accepts)

    async def process(self, records: Sequence[ConsumerRecord], consumer: AIOKafkaConsumer | None = None) -> None:
        started = time.perf_counter()
        incoming: list[Incoming[Any]] = []
        dead: list[DeadLetter] = []
        backlog = (
            frozenset((self.settings.logical_topic(tp.topic), tp.partition) for tp in behind(consumer))
            if consumer is not None
            else frozenset()
        )
        for record in records:
            if self._passed_over(record):
                continue  # a type this consumer never handles: not even decoded
            topic = self.settings.logical_topic(record.topic)
            try:
                envelope, payload = decode(topic, record.value)
            except DecodeError as exc:
                dead.append(DeadLetter(record, "undecodable", str(exc)))
                continue
            if (self.accepts is not None and envelope.event_type.encode() not in self.accepts) or (
                envelope.event_type.encode() in self.skip_own and envelope.producer == self.settings.service_name
            ):
                continue  # no (or a wrong) header: decoded, and not taken
            incoming.append(
                Incoming(envelope, payload, topic, record.partition, record.offset, record.timestamp, backlog)
            )
        if dead:
            await self._dead_letter(dead)
        if incoming:
            await self._handle(incoming, records)
        self.metrics.observe_batch(records, time.perf_counter() - started)
        if consumer is not None:
            self.metrics.record_lag(self.group_id, consumer)

    def _passed_over(self, record: ConsumerRecord) -> bool:
        event_type = _header(record, EVENT_TYPE_HEADER)
        if event_type is None:
            return False  # decoded: a record without the header may still be poison
        if self.accepts is not None and event_type not in self.accepts:
            return True
        return event_type in self.skip_own and _header(record, PRODUCER_HEADER) == self.me

    async def _handle(self, incoming: list[Incoming[Any]], records: Sequence[ConsumerRecord]) -> None:
        try:
            await self._with_transient_retry(lambda: self.handler(incoming))
            return
        except Exception as exc:  # not transient: find the message that fails
            log.warning("batch_failed_isolating", error=repr(exc), size=len(incoming))
        by_position = {(self.settings.logical_topic(r.topic), r.partition, r.offset): r for r in records}
        for item in incoming:
            error = await self._handle_one(item)
            if error is not None:
                record = by_position[(item.topic, item.partition, item.offset)]
                await self._dead_letter([DeadLetter(record, "handler_failed", error)])

    async def _handle_one(self, item: Incoming[Any]) -> str | None:
        """None on success, else the error after the configured attempts."""
        error = ""
        for attempt in range(1, self.settings.handler_attempts + 1):
            with structlog.contextvars.bound_contextvars(
                correlation_id=item.envelope.correlation_id, event_id=str(item.envelope.event_id)
            ):
                try:
                    await self._with_transient_retry(lambda: self.handler([item]))
                    return None
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    log.error("handler_failed", event_type=item.event_type, attempt=attempt, error=error)
        return error

    async def _with_transient_retry(self, operation: Callable[[], Awaitable[None]]) -> None:
        await retry_transient(
            operation,
            what=f"{self.settings.service_name} handler",
            initial_delay_s=self.settings.retry_initial_delay_s,
            max_delay_s=self.settings.retry_max_delay_s,
            on_retry=lambda exc: self.metrics.transient_retries.labels(kind=type(exc).__name__).inc(),
        )

    async def _dead_letter(self, dead: list[DeadLetter]) -> None:
        for d in dead:
            r = d.record
            log.error(
                "dead_lettered",
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                reason=d.reason,
                error=d.error,
                correlation_id=_correlation_id(r.value),
            )
            topic = self.settings.logical_topic(r.topic)
            await self.publisher.publish_raw(dlq_topic(topic), r.key, dead_letter_body(d, self.group_id))
            self.metrics.dead_letters.labels(topic=topic, reason=d.reason).inc()


def dead_letter_body(d: DeadLetter, group_id: str) -> bytes:
    r = d.record
    body: dict[str, Any] = {
        "reason": d.reason,
        "error": d.error,
        "origin": {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "key": r.key.decode("utf-8", "replace") if r.key else None,
            "timestamp_ms": r.timestamp,
        },
        "consumer_group": group_id,
        "failed_at": datetime.now(UTC).isoformat(),
    }
    value = r.value or b""
    try:
        body["payload"] = value.decode("utf-8")
    except UnicodeDecodeError:
        body["payload_base64"] = base64.b64encode(value).decode()
    return json.dumps(body).encode()


def _header(record: ConsumerRecord, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value)
    return None


def _correlation_id(value: bytes | None) -> str | None:
    try:
        found = json.loads(value or b"").get("correlation_id")
        return found if isinstance(found, str) else None
    except (ValueError, AttributeError):
        return None


def assigned_lag(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    """Records behind the log end, per assigned partition, from what the consumer already
    knows (its fetch position and the high watermark of its last fetch): no broker call."""
    lag = {}
    subscription = consumer._subscription
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None or not subscription.is_assigned(tp):
            continue
        state = subscription.subscription.assignment.state_value(tp)
        if state is not None and state.has_valid_position:
            lag[tp] = max(0, high - state.position)
    return lag


def behind(consumer: AIOKafkaConsumer) -> set[TopicPartition]:
    """Assigned partitions with records in the log not handed to the application yet, or
    whose end the consumer does not know yet (never fetched)."""
    lag = assigned_lag(consumer)
    return {tp for tp in consumer.assignment() if lag.get(tp, 1) > 0}


__all__ = ["BatchDelivery", "BatchHandler", "Incoming", "is_transient"]
