"""Faults while a stream of mixed events flows through the four services, each running as
its own OS process. Every test ends, once the system has settled, with the final state
the stream implies, no duplicate notification, and every projection equal to a rebuild
from the topics (``tests/faults/checks.py``).

* SIGKILL of each service after it committed part of the stream; the rest of the stream
  arrives while it is dead; then it restarts.
* The broker stopped and restarted mid-stream: ``scripts/infra.sh stop-kafka`` /
  ``start-kafka`` on the test broker (the one ``make test`` starts; its data survives).
  A broker of our own per test would cost another JVM and its start on every run; the
  tests run one at a time, so nothing else uses the broker meanwhile.
* The store unreachable for 10 s mid-stream: the services reach FerretDB through a TCP
  proxy that the test cuts (every open connection dropped, new ones refused) and
  restores. Nothing is dead-lettered and no consumer group commits while it is cut.
* Two processes of every service, and a SIGKILL of one replica mid-stream: the other
  takes its partitions over (no restart).
* A poison record on every input topic of every service: dead-lettered by each consumer
  group that reads it, with its reason and origin, and the stream goes on.

Size: ``BZPEER_FAULT_EVENTS`` records per stream (default 10,000). Run with
``make test-faults``; the default ``pytest`` run leaves them out (marker ``faults``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest
from aiokafka import AIOKafkaProducer

from contracts.topics import dlq_topic
from service_runtime.topic_reader import read_topic
from tests.conftest import Namespace, eventually, throughout
from tests.faults.checks import (
    assert_expected_state,
    assert_no_duplicate_notifications,
    assert_projections_rebuild,
    dead_letter_bodies,
)
from tests.mixed_stream import MixedStream, mixed_stream
from tests.pipeline import Pipeline
from tests.service_process import REPO_ROOT
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.faults

EVENTS = int(os.environ.get("BZPEER_FAULT_EVENTS", "10000"))
SETTLE_S = float(os.environ.get("BZPEER_FAULT_SETTLE_S", "900"))


@pytest.fixture(scope="module")
def stream() -> MixedStream:
    return mixed_stream(EVENTS, seed=11)


@pytest.fixture
async def pipe(ns: Namespace) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(ns)
    await pipeline.start()
    yield pipeline
    await pipeline.stop()


async def first_half_consumed(pipe: Pipeline, service: str) -> None:
    """Wait until ``service`` committed part of what it was sent (so a fault hits it mid-work)."""
    await eventually(
        lambda: pipe.committed(service),
        until=lambda n: n > 0,
        timeout=SETTLE_S,
        interval=0.2,
        what=f"{service} committed its first records",
    )


async def finish(pipe: Pipeline, stream: MixedStream, *, dead_letters: bool = False) -> None:
    await pipe.settle(timeout=SETTLE_S)
    if not dead_letters:
        assert await pipe.dead_letters() == {}
    await assert_expected_state(pipe, stream)
    await assert_no_duplicate_notifications(pipe)
    await pipe.stop()  # a rebuild compares against a projection nobody writes any more
    await assert_projections_rebuild(pipe)


async def run_with_fault(
    pipe: Pipeline,
    producer: AIOKafkaProducer,
    stream: MixedStream,
    fault: Callable[[], Awaitable[None]],
    recover: Callable[[], Awaitable[None]] | None = None,
    *,
    dead_letters: bool = False,
) -> None:
    """First half of the stream, the fault once the system is working on it, the second
    half (while the fault lasts, if it lasts), the recovery, then the checks."""
    half = len(stream) // 2
    await stream.send(producer, pipe.ns.topic_prefix, stop=half)
    await fault()
    await stream.send(producer, pipe.ns.topic_prefix, start=half)
    if recover is not None:
        await recover()
    await finish(pipe, stream, dead_letters=dead_letters)


@pytest.mark.parametrize("service", ["profile", "claims", "trust", "follow", "collab"])
async def test_sigkill_mid_stream_and_restart(
    pipe: Pipeline, producer: AIOKafkaProducer, stream: MixedStream, service: str
) -> None:
    proc = pipe.procs[service]

    async def sigkill() -> None:
        await first_half_consumed(pipe, service)
        proc.kill()
        assert not proc.alive

    async def restart() -> None:
        await proc.start()

    await run_with_fault(pipe, producer, stream, sigkill, restart)
    assert proc.starts == 2


async def test_two_replicas_of_every_service_and_one_killed_mid_stream(
    ns: Namespace, producer: AIOKafkaProducer, stream: MixedStream
) -> None:
    """The guarantees hold across processes: every service runs twice, sharing its
    consumer groups and its database, and one follow replica (the service with the most
    state shared between its partitions: counts, edges, fan-out chunks) is SIGKILLed once
    it has committed part of the stream; its partitions go to the survivor."""
    pipe = Pipeline(ns, replicas=2)
    await pipe.start()
    try:
        victim = pipe.replicas["follow"][1]

        async def sigkill_one_replica() -> None:
            await first_half_consumed(pipe, "follow")
            victim.kill()
            assert not victim.alive

        await run_with_fault(pipe, producer, stream, sigkill_one_replica)
    finally:
        await pipe.stop()


def infra(command: str) -> None:
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "infra.sh"), command], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, f"infra.sh {command} failed: {result.stderr[-2000:]}"


async def broker_reachable(pipe: Pipeline) -> bool:
    host, _, port = pipe.kafka.rpartition(":")
    try:
        _r, w = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    w.close()
    return True


async def test_broker_stopped_and_restarted_mid_stream(
    pipe: Pipeline, producer: AIOKafkaProducer, stream: MixedStream
) -> None:
    async def bounce_broker() -> None:
        await first_half_consumed(pipe, "profile")
        infra("stop-kafka")
        assert not await broker_reachable(pipe), (
            "the broker still answers after `infra.sh stop-kafka`: these tests need the broker "
            "that scripts/infra.sh started (make test)"
        )
        # The outage itself: services and producer see no broker for 5 s.
        await throughout(lambda: broker_reachable(pipe), holds=lambda up: not up, seconds=5, what="broker down")
        infra("start-kafka")

    await run_with_fault(pipe, producer, stream, bounce_broker)


async def test_store_unreachable_for_10s_mid_stream(
    ns: Namespace, producer: AIOKafkaProducer, stream: MixedStream
) -> None:
    store = urlsplit(ns.infra["mongodb"])
    proxy = await TcpProxy(store.hostname or "127.0.0.1", store.port or 27017).start()
    pipe = Pipeline(ns, mongodb_uri=f"mongodb://127.0.0.1:{proxy.port}")
    await pipe.start()
    try:

        async def cut_store_for_10s() -> None:
            await first_half_consumed(pipe, "profile")
            await proxy.cut()
            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            # A batch whose writes were done before the cut may still commit: wait until two
            # reads of the committed offsets agree, then nothing may move until the store is back.
            seen: list[dict] = []

            def unchanged(offsets: dict) -> bool:
                steady = bool(seen) and offsets == seen[-1]
                seen.append(offsets)
                return steady

            before = await eventually(
                pipe.committed_offsets,
                until=unchanged,
                interval=0.5,
                timeout=30,
                what="commits of batches finished before the cut",
            )

            async def commits_and_dead_letters() -> tuple[dict, dict]:
                return await pipe.committed_offsets(), await pipe.dead_letters()

            # Until the store has been away 10 s: no consumer group commits, nothing is dead-lettered.
            await throughout(
                commits_and_dead_letters,
                holds=lambda now: now == (before, {}),
                seconds=10 - (loop.time() - cut_at),
                what="no commit, no dead letter while the store is cut",
            )
            await proxy.restore()

        await run_with_fault(pipe, producer, stream, cut_store_for_10s)
    finally:
        await pipe.stop()
        await proxy.cut()


POISON = b"\xff\xfe not UTF-8, not JSON"


async def test_poison_record_on_every_input_topic(
    pipe: Pipeline, producer: AIOKafkaProducer, stream: MixedStream
) -> None:
    readers: dict[str, set[str]] = {}
    for inputs in pipe.inputs.values():
        for group, topics in inputs:
            for t in topics:
                readers.setdefault(t, set()).add(group)

    async def poison_every_input() -> None:
        for topic in readers:
            await (await producer.send(pipe.ns.topic(topic), POISON, key=stream.authors[0].encode()))

    await run_with_fault(pipe, producer, stream, poison_every_input, dead_letters=True)
    for topic, groups in sorted(readers.items()):
        bodies = dead_letter_bodies(await read_topic(pipe.kafka, pipe.ns.topic(dlq_topic(topic))))
        assert sorted(b["consumer_group"] for b in bodies) == sorted(groups), (topic, bodies)
        assert all(
            b["reason"] == "undecodable" and b["origin"]["topic"] == pipe.ns.topic(topic) and b.get("payload_base64")
            for b in bodies
        ), bodies
