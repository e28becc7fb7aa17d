"""Shared fixtures. Integration tests talk to the real Kafka broker and FerretDB that
``make test`` starts (scripts/infra.sh); each test gets its own topics (a fresh topic
prefix), its own databases and its own consumer groups, and removes them afterwards."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts.topics import TOPICS
from service_runtime.kafka import delete_topics
from service_runtime.settings import RuntimeSettings

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
MONGODB_URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
T = TypeVar("T")


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(f"/{folder}/" in str(item.path) for folder in ("integration", "e2e", "faults", "browser")):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def infra() -> dict[str, str]:
    """The real broker and store. Missing infrastructure is a failure, never a skip."""
    mongo_hostport = MONGODB_URI.split("//", 1)[1].split("/", 1)[0]
    missing = [name for name, addr in (("Kafka", KAFKA), ("FerretDB", mongo_hostport)) if not _reachable(addr)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not reachable: run `make infra-up` (make test does it for you)")
    return {"kafka": KAFKA, "mongodb": MONGODB_URI}


class Namespace:
    """One test's private slice of the real infrastructure."""

    def __init__(self, infra: dict[str, str]) -> None:
        self.id = uuid.uuid4().hex[:10]
        self.topic_prefix = f"t{self.id}."
        self.infra = infra
        self.databases: list[str] = []

    def settings(self, service_name: str, cls: type[RuntimeSettings] = RuntimeSettings, **overrides: Any) -> Any:
        database = f"t{self.id}_{service_name}"
        self.databases.append(database)
        values: dict[str, Any] = dict(
            service_name=service_name,
            environment="test",
            kafka_bootstrap_servers=self.infra["kafka"],
            mongodb_uri=self.infra["mongodb"],
            mongodb_database=database,
            topic_prefix=self.topic_prefix,
            consumer_group_prefix=f"t{self.id}",
            consumer_batch_timeout_ms=20,
            retry_max_delay_s=1.0,
        )
        values.update(overrides)
        return cls(**values)

    def topic(self, logical: str) -> str:
        return self.topic_prefix + logical


@pytest.fixture(scope="session")
async def kafka_ready(infra: dict[str, str]) -> None:
    """On a freshly formatted broker the group coordinator (and its __consumer_offsets
    topic) appears only with the first group: join one once, so the first test's services
    don't spend their deadlines waiting for it."""
    from aiokafka import AIOKafkaConsumer

    from contracts.topics import TopicSpec
    from service_runtime.kafka import ensure_topics

    await ensure_topics(infra["kafka"], [TopicSpec("bzpeer-warmup", 1, "none", "test warm-up")])
    consumer = AIOKafkaConsumer(
        "bzpeer-warmup", bootstrap_servers=infra["kafka"], group_id="bzpeer-warmup", enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 120
        while not consumer.assignment():
            assert asyncio.get_running_loop().time() < deadline, "no consumer group coordinator after 120 s"
            await consumer.getmany(timeout_ms=500)
        await consumer.commit()
    finally:
        await consumer.stop()


async def drop_namespace(namespace: Namespace) -> None:
    """Remove a namespace's topics and databases (its services must be stopped first)."""
    await delete_topics(namespace.infra["kafka"], [namespace.topic(t) for t in TOPICS])
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(namespace.infra["mongodb"])
    try:
        for db in set(namespace.databases):
            await client.drop_database(db)
    finally:
        await client.close()


@pytest.fixture
async def ns(infra: dict[str, str], kafka_ready: None) -> AsyncIterator[Namespace]:
    namespace = Namespace(infra)
    yield namespace
    await drop_namespace(namespace)


@pytest.fixture
async def producer(ns: Namespace) -> AsyncIterator[AIOKafkaProducer]:
    """A plain idempotent producer, as the web app or an importer would publish."""
    p = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"], enable_idempotence=True, linger_ms=5)
    await p.start()
    yield p
    await p.stop()


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool] = bool,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``until(result)`` holds; fail with the last result at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await probe()
        if until(result):
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last value: {result!r}"[:1500])
        await asyncio.sleep(interval)


async def throughout(
    probe: Callable[[], Awaitable[T]],
    *,
    holds: Callable[[T], bool] = bool,
    seconds: float,
    interval: float = 0.5,
    what: str = "condition",
) -> None:
    """Poll ``probe`` for ``seconds`` and fail as soon as ``holds(result)`` does not: the
    counterpart of ``eventually`` for a state that must last (an outage, nothing committed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        result = await probe()
        assert holds(result), f"{what} stopped holding: {result!r}"[:1500]
        await asyncio.sleep(interval)


# A test that hangs must fail on its own instead of stalling the whole run: after
# STALL_SECONDS the watchdog prints where every task of the test loop is waiting, then
# cancels the test's own task, which fails it with that trace. If the loop itself is
# blocked (a synchronous call that never returns), a minute later faulthandler prints
# every thread's stack and ends the run.
STALL_SECONDS = float(os.environ.get("BZPEER_TEST_STALL_S", "300"))
_test_loop: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(scope="session", autouse=True)
async def _remember_test_loop() -> None:
    _test_loop.append(asyncio.get_running_loop())


def _cancel_stalled(loop: asyncio.AbstractEventLoop, test_name: str) -> None:
    for out in (sys.stderr, _stall_log()):
        print(f"\n!!! {test_name} (setup, call or teardown) still running after {STALL_SECONDS:.0f}s:", file=out)
        for task in asyncio.all_tasks(loop):
            task.print_stack(limit=12, file=out)
        out.flush()
    for task in asyncio.all_tasks(loop):
        if getattr(task.get_coro(), "__name__", "") == test_name:
            task.cancel(f"stalled for {STALL_SECONDS:.0f}s")


_stall_file: list[Any] = []


def _stall_log() -> Any:
    """Where faulthandler writes (pytest captures the standard streams; ``make test``
    prints this file when the run fails)."""
    if not _stall_file:
        path = Path(__file__).resolve().parents[1] / ".local" / "logs" / "test-stall.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        _stall_file.append(path.open("w"))
    return _stall_file[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Any:
    """Setup, call and teardown of one test, watched."""
    if item.get_closest_marker("faults"):  # whole-system runs of many minutes, by design
        yield
        return
    name = getattr(item, "originalname", item.name)

    def stalled() -> None:
        if _test_loop:
            _test_loop[0].call_soon_threadsafe(_cancel_stalled, _test_loop[0], name)

    timer = threading.Timer(STALL_SECONDS, stalled)
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(STALL_SECONDS + 60, exit=True, file=_stall_log())
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        timer.cancel()
