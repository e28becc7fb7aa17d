"""``Service``: the composition every bzpeer service shares.

A service builds one ``Service`` in its ``app.py`` (its composition root), registers its
batch handlers with ``consume`` and its HTTP routes on ``service.http``, and runs. This
module wires the broker, the store, dead-lettering, metrics, health and AsyncAPI once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, Literal

import uvicorn
from aiokafka import ConsumerRecord
from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse
from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from faststream.specification import AsyncAPI
from pydantic import BaseModel

from contracts.envelope import EventModel
from contracts.topics import TOPICS
from service_runtime.auth import JwtVerifier
from service_runtime.delivery import BatchDelivery, BatchHandler
from service_runtime.heap import settle_heap
from service_runtime.kafka import ensure_topics, make_broker
from service_runtime.logging import configure_logging, get_logger
from service_runtime.metrics import Metrics
from service_runtime.outbox import Outbox
from service_runtime.problems import install as install_problems
from service_runtime.projection import Projection
from service_runtime.publishing import EventPublisher
from service_runtime.settings import RuntimeSettings
from service_runtime.store import StoreAdapter, connect_store, store_reachable

log = get_logger(__name__)
Hook = Callable[[], Awaitable[Any]]


async def _raw_records(msg: Any) -> None:
    """Decoder that decodes nothing: the delivery layer decodes each record itself, so a
    poison message reaches it (and the dead-letter topic) instead of failing in FastStream."""
    return None


Runs = Literal["always", "live", "rebuild"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str
    # Which process answered: replicas share a name, and a supervisor that started one
    # checks it reached that process and not another one on a reused port.
    pid: int


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    broker: bool
    store: bool


def _runs_now(runs: Runs, settings: RuntimeSettings) -> bool:
    return runs == "always" or (runs == "rebuild") == settings.rebuilding


class Service:
    def __init__(self, settings: RuntimeSettings, *, title: str, description: str) -> None:
        self.settings = settings
        configure_logging(settings.service_name, settings.log_level)
        self.broker = make_broker(settings.kafka_bootstrap_servers, client_id=f"bzpeer-{settings.service_name}")
        self.mongo = connect_store(settings.mongodb_uri)
        self.db = self.mongo.get_database(settings.database_name)
        self.publisher = EventPublisher(
            self.broker, settings.service_name, settings.topic_prefix, enabled=not settings.rebuilding
        )
        self.outbox = Outbox(self.publisher, clear_after_s=settings.outbox_clear_after_s)
        self.metrics = Metrics(settings.service_name)
        self.asyncapi = AsyncAPI(self.broker, title=f"bzpeer {settings.service_name}", description=description)
        # (consumer group, logical topics) of every subscription: for status and replay.
        self.inputs: list[tuple[str, tuple[str, ...]]] = []
        self._drain: list[Hook] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._tasks: list[asyncio.Task[Any]] = []
        # The collections a rebuild from the log must reproduce (set by the composition root).
        self.projection = Projection({})
        self.http = FastAPI(title=title, description=description, lifespan=self._lifespan)
        self.http.state.jwt_verifier = JwtVerifier(settings)
        self.http.state.service = self
        install_problems(self.http)
        self._add_operational_routes()

    # --- wiring ---------------------------------------------------------------------

    def consume(
        self,
        *topics: str,
        handler: BatchHandler,
        group: str | None = None,
        max_records: int | None = None,
        payload: type[BaseModel] | None = None,
        runs: Runs = "always",
        accepts: tuple[type[EventModel], ...] | None = None,
        skip_own: tuple[type[EventModel], ...] = (),
    ) -> None:
        """Feed batches of the given topics to ``handler``; offsets are committed only
        after it returned (see ``service_runtime.delivery``).

        ``runs="live"``: a consumer that takes decisions (and publishes them) runs only in
        the live service; ``runs="rebuild"``: a consumer that reads those decisions back
        from the service's own output topics runs only while the projection is rebuilt.

        ``accepts``: the payload types the handler takes (e.g. ``dispatch.types``); records
        of the topics' other types are committed without being handed over (undecoded
        when their event-type header says so).

        ``skip_own``: payload types this service publishes and this consumer needs only from
        other producers; the service's own are committed without being handed over
        (undecoded when their headers say so)."""
        if not _runs_now(runs, self.settings):
            return
        group_id = f"{self.settings.consumer_group}{'.' + group if group else ''}"
        self.inputs.append((group_id, tuple(str(t) for t in topics)))
        delivery = BatchDelivery(
            handler=handler,
            publisher=self.publisher,
            metrics=self.metrics,
            settings=self.settings,
            group_id=group_id,
            skip_own=frozenset(m.event_type for m in skip_own),
            accepts=None if accepts is None else frozenset(m.event_type for m in accepts),
        )

        async def on_batch(body: Any, message: KafkaMessage) -> None:
            raw = message.raw_message
            records: tuple[ConsumerRecord, ...] = raw if isinstance(raw, tuple) else (raw,)
            await delivery.process(records, getattr(message, "consumer", None))

        on_batch.__name__ = f"{self.settings.service_name}_{'_'.join(t.replace('.', '_') for t in topics)}"
        self.broker.subscriber(
            *(self.settings.physical_topic(t) for t in topics),
            group_id=group_id,
            batch=True,
            max_records=max_records or self.settings.consumer_max_records,
            batch_timeout_ms=self.settings.consumer_batch_timeout_ms,
            auto_offset_reset="earliest",
            # Commit only after the handler returned; on an unexpected error, seek back
            # so the batch is delivered again (never committed past an unprocessed record).
            ack_policy=AckPolicy.NACK_ON_ERROR,
            decoder=_raw_records,
            max_poll_interval_ms=600_000,
            # One AsyncAPI operation per consumer group (two groups may read one topic).
            title=f"{self.settings.service_name}{'.' + group if group else ''}:{','.join(topics)}",
        )(on_batch)

    def use_store(self, store: StoreAdapter) -> None:
        """The service's store adapter: its indexes are created at start, its projection is
        what a rebuild is compared on, and the outboxes of its collections are swept (live)."""
        self.projection = store.projection
        self.on_startup(store.create_indexes)
        if store.outbox_collections:
            self.background(
                lambda: self.outbox.sweep_forever(
                    [store.db[name] for name in store.outbox_collections],
                    interval_s=self.settings.outbox_sweep_interval_s,
                    older_than=timedelta(seconds=self.settings.outbox_grace_s),
                ),
                runs="live",
            )

    def produces(self, topic: str, *, schema: type[BaseModel] | None = None, description: str = "") -> None:
        """Document an output topic in the AsyncAPI spec (publishing goes through ``publisher``)."""
        self.broker.publisher(
            self.settings.physical_topic(topic), schema=schema, description=description or TOPICS[topic].description
        )

    def on_startup(self, hook: Hook) -> None:
        self._startup.append(hook)

    def on_drain(self, hook: Hook) -> None:
        """Work to finish once every input is consumed (e.g. recomputations still waiting
        for their coalescing window); ``drain()`` runs it, e.g. at the end of a replay."""
        self._drain.append(hook)

    async def drain(self) -> None:
        for hook in self._drain:
            await hook()

    def on_shutdown(self, hook: Hook) -> None:
        self._shutdown.append(hook)

    def background(self, factory: Callable[[], Coroutine[Any, Any, Any]], *, runs: Runs = "always") -> None:
        """A long-running task started after the broker (e.g. a sweeper), cancelled on stop."""
        if _runs_now(runs, self.settings):
            self._startup.append(lambda: self._spawn(factory))

    async def _spawn(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self._tasks.append(asyncio.create_task(factory()))

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await ensure_topics(self.settings.kafka_bootstrap_servers, prefix=self.settings.topic_prefix)
        await self.broker.start()
        for hook in self._startup:
            await hook()
        # Everything built so far lives as long as the process: out of the collector's way.
        settle_heap()
        log.info("service_started", database=self.settings.database_name, group=self.settings.consumer_group)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for hook in self._shutdown:
            await hook()
        with contextlib.suppress(Exception):  # not done: the sweeper publishes those again
            await self.outbox.close()
        await self.broker.stop()
        await self.mongo.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Service]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        async with self.running():
            yield

    def run(self) -> None:
        """Serve HTTP and consume until stopped (SIGINT/SIGTERM)."""
        uvicorn.run(self.http, host=self.settings.http_host, port=self.settings.http_port, log_config=None)

    # --- operational HTTP -----------------------------------------------------------

    def _add_operational_routes(self) -> None:
        app = self.http

        @app.get("/health", tags=["operations"], summary="Liveness: the process is up")
        async def health() -> Health:
            return Health(service=self.settings.service_name, pid=os.getpid())

        @app.get(
            "/ready",
            tags=["operations"],
            summary="Readiness: broker and store reachable",
            responses={503: {"model": Readiness, "description": "the broker or the store is unreachable"}},
        )
        async def ready(response: Response) -> Readiness:
            broker_ok = await self._broker_reachable()
            store_ok = await store_reachable(self.mongo)
            if not (broker_ok and store_ok):
                response.status_code = 503
            return Readiness(
                status="ready" if broker_ok and store_ok else "not ready", broker=broker_ok, store=store_ok
            )

        # Prometheus' text format, documented as such (not the JSON FastAPI would assume).
        @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
        async def metrics() -> PlainTextResponse:
            return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

        @app.get("/asyncapi.json", tags=["operations"], summary="AsyncAPI document of the topics")
        async def asyncapi() -> Response:
            return Response(self.asyncapi.to_specification().to_json(), media_type="application/json")

    async def _broker_reachable(self) -> bool:
        try:
            return bool(await self.broker.ping(timeout=2.0))
        except Exception:
            return False
