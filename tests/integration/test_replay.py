"""Rebuilding a projection from the log gives the live projection back, and publishes nothing."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from contracts.topics import Topic
from service_runtime.projection import Projection
from service_runtime.replay import compare_databases, rebuild
from service_runtime.service import Service
from service_runtime.topic_reader import read_topic
from tests.conftest import Namespace, eventually
from tests.integration.test_delivery import EchoService, imported


async def test_rebuild_from_offset_zero_equals_live_projection(ns: Namespace) -> None:
    echo = EchoService(ns)
    producer = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"])
    await producer.start()
    try:
        async with echo.service.running():
            for i in range(60):
                await producer.send(
                    ns.topic(Topic.PUBLICATIONS_INGESTED),
                    imported(f"r{i % 25}", f"Name {i}").to_bytes(),
                    key=f"r{i % 25}".encode(),
                )
            await producer.send(ns.topic(Topic.PUBLICATIONS_INGESTED), b"poison", key=b"r1")
            await producer.flush()
            await eventually(
                lambda: echo.service.db.authors.find_one({"_id": "r9", "name": "Name 59"}), what="live caught up"
            )
            await eventually(lambda: echo.service.db.authors.count_documents({}), until=lambda n: n == 25)
    finally:
        await producer.stop()
    published_before = len(await read_topic(ns.infra["kafka"], ns.topic(Topic.PROFILE_EVENTS)))

    def build(settings) -> Service:
        replica = EchoService.__new__(EchoService)
        replica.fail_on = replica.block_on = None
        replica.service = Service(settings, title="echo", description="replay")
        replica.service.projection = Projection.of(authors=())
        replica.service.consume(Topic.PUBLICATIONS_INGESTED, handler=replica.handle)
        return replica.service

    seen: list[tuple[int, int]] = []
    rebuilt_db = echo.service.settings.database_name + "_replay"
    ns.databases.append(rebuilt_db)
    result = await rebuild(build, echo.service.settings, database=rebuilt_db, progress=lambda d, t: seen.append((d, t)))
    assert result.records == 61 and seen[-1] == (61, 61)
    assert result.projection == Projection.of(authors=())
    assert (
        await compare_databases(ns.infra["mongodb"], echo.service.settings.database_name, rebuilt_db, result.projection)
        == []
    )
    assert len(await read_topic(ns.infra["kafka"], ns.topic(Topic.PROFILE_EVENTS))) == published_before
