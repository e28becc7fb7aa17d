"""Prometheus metrics every service exposes on /metrics: consumer lag per partition,
handler latency, messages handled, dead letters and transient retries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord


class Metrics:
    def __init__(self, service: str) -> None:
        # One registry per service instance: tests run several services in one process.
        self.registry = CollectorRegistry()
        labels = {"service": service}
        self.consumer_lag = Gauge(
            "bzpeer_consumer_lag",
            "Records behind the end of the partition",
            ["group", "topic", "partition"],
            registry=self.registry,
        )
        self.handler_latency = Histogram(
            "bzpeer_handler_batch_seconds",
            "Time to handle one batch (decode, handler, dead letters)",
            ["topic"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.messages = Counter(
            "bzpeer_messages_total",
            "Messages consumed",
            ["topic"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "bzpeer_dead_letters_total",
            "Messages sent to a dead-letter topic",
            ["topic", "reason"],
            registry=self.registry,
        )
        self.transient_retries = Counter(
            "bzpeer_transient_retries_total",
            "Retries after a transient store/broker failure",
            ["kind"],
            registry=self.registry,
        )
        self.info = Gauge("bzpeer_service_info", "Service identity", ["service"], registry=self.registry)
        self.info.labels(**labels).set(1)

    def observe_batch(self, records: Sequence[ConsumerRecord], seconds: float) -> None:
        topics: dict[str, int] = {}
        for r in records:
            topics[r.topic] = topics.get(r.topic, 0) + 1
        for topic, n in topics.items():
            self.messages.labels(topic=topic).inc(n)
            self.handler_latency.labels(topic=topic).observe(seconds)

    def record_lag(self, group: str, consumer: AIOKafkaConsumer) -> None:
        from service_runtime.delivery import assigned_lag

        for tp, lag in assigned_lag(consumer).items():
            self.consumer_lag.labels(group=group, topic=tp.topic, partition=str(tp.partition)).set(lag)

    def render(self) -> bytes:
        return generate_latest(self.registry)
