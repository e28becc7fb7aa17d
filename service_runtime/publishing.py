"""Publishing envelopes: many at once, each keyed, retried while the broker is unreachable."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from faststream.kafka import KafkaBroker

from contracts.envelope import Envelope, EventModel
from service_runtime.kafka import PRODUCER_STATE_LOST, ProducerRenewed, current_producer, renew_producer
from service_runtime.logging import get_logger
from service_runtime.retry import retry_transient

log = get_logger(__name__)

_HEADERS = {"content-type": "application/json"}
# Every envelope also names its type and its producer in headers, so a consumer that needs
# only some of a topic's records can pass over the others without decoding them
# (``Service.consume(accepts=..., skip_own=...)``).
EVENT_TYPE_HEADER = "event-type"
PRODUCER_HEADER = "producer"


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: str
    envelope: Envelope


class EventPublisher:
    def __init__(self, broker: KafkaBroker, producer_name: str, topic_prefix: str = "", enabled: bool = True) -> None:
        self.broker = broker
        self.producer_name = producer_name
        self.topic_prefix = topic_prefix
        self.enabled = enabled

    def outgoing(
        self,
        payload: EventModel,
        *,
        cause: Envelope | None = None,
        event_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
    ) -> Outgoing:
        envelope = Envelope.wrap(
            payload, producer=self.producer_name, cause=cause, event_id=event_id, correlation_id=correlation_id
        )
        return Outgoing(str(payload.topic), payload.key(), envelope)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Send all, then wait for every acknowledgement (acks=all). Re-sends all on a
        transient failure: duplicates carry the same event ids and handlers are idempotent."""
        if messages and self.enabled:
            await retry_transient(lambda: self._renewing(lambda: self._send_all(messages)), what="publish")

    async def publish_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send bytes as they are to a logical topic (dead letters, tests of bad input)."""
        if not self.enabled:
            return

        async def send() -> None:
            await self.broker.publish(value, self.topic_prefix + topic, key=key, headers=_HEADERS)

        await retry_transient(lambda: self._renewing(send), what=f"publish to {topic}")

    async def _renewing(self, send: Callable[[], Awaitable[None]]) -> None:
        """``send``; if the broker lost the producer's state, a new producer and
        ``ProducerRenewed`` (transient: the caller sends again, the same event ids)."""
        producer = current_producer(self.broker)
        try:
            await send()
        except PRODUCER_STATE_LOST as exc:
            log.warning("producer_renewed", error=repr(exc))
            await renew_producer(self.broker, producer)
            raise ProducerRenewed(repr(exc)) from exc

    async def _send_all(self, messages: Sequence[Outgoing]) -> None:
        futures = [
            await self.broker.publish(
                m.envelope.to_bytes(),
                self.topic_prefix + m.topic,
                key=m.key.encode(),
                headers={**_HEADERS, EVENT_TYPE_HEADER: m.envelope.event_type, PRODUCER_HEADER: m.envelope.producer},
                no_confirm=True,
            )
            for m in messages
        ]
        await asyncio.gather(*(f for f in futures if asyncio.isfuture(f)))
