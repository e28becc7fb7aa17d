"""The shared delivery plumbing against the real broker and store: commit after success,
dead letters for poison messages, retries (not dead letters) for a store outage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from contracts import Envelope, deterministic_event_id
from contracts.events.profile import AuthorRegistered, AuthorState
from contracts.events.publications import AuthorImported
from contracts.topics import Topic, dlq_topic
from service_runtime.delivery import Incoming
from service_runtime.service import Service
from service_runtime.topic_reader import read_topic
from tests.conftest import Namespace, eventually
from tests.tcp_proxy import TcpProxy


def imported(author_id: str, name: str = "A. Author") -> Envelope:
    return Envelope.wrap(AuthorImported(author_id=author_id, display_name=name, source="test"), producer="test")


class EchoService:
    """A minimal service on the shared runtime: AuthorImported -> document + AuthorRegistered."""

    def __init__(
        self, ns: Namespace, *, mongodb_uri: str | None = None, fail_on: str | None = None, block_on: str | None = None
    ) -> None:
        settings = ns.settings("echo", mongodb_uri=mongodb_uri) if mongodb_uri else ns.settings("echo")
        self.service = Service(settings, title="echo", description="test service")
        self.fail_on, self.block_on = fail_on, block_on
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.service.consume(Topic.PUBLICATIONS_INGESTED, handler=self.handle)

    async def handle(self, batch: Sequence[Incoming]) -> None:
        out = []
        for item in batch:
            data = item.payload
            assert isinstance(data, AuthorImported)
            if data.author_id == self.fail_on:
                raise ValueError("this author breaks the handler")
            if data.author_id == self.block_on:
                self.entered.set()
                await self.release.wait()
            await self.service.db.authors.update_one(
                {"_id": data.author_id}, {"$set": {"name": data.display_name}}, upsert=True
            )
            state = AuthorState(
                author_id=data.author_id,
                display_name=data.display_name,
                works_count=0,
                record_verification_level="L0",
                revision=1,
            )
            out.append(
                self.service.publisher.outgoing(
                    AuthorRegistered(author_id=data.author_id, author=state),
                    cause=item.envelope,
                    event_id=deterministic_event_id(item.envelope.event_id, "AuthorRegistered"),
                )
            )
        await self.service.publisher.publish(out)


async def send(
    producer: AIOKafkaProducer, ns: Namespace, value: bytes, key: str = "a1", topic: str = Topic.PUBLICATIONS_INGESTED
) -> None:
    await producer.send_and_wait(ns.topic(topic), value, key=key.encode())


async def test_consumes_writes_projection_and_publishes(ns: Namespace, producer: AIOKafkaProducer) -> None:
    echo = EchoService(ns)
    async with echo.service.running():
        envelopes = [imported(f"author-{i}", f"Name {i}") for i in range(20)]
        for env in envelopes:
            await send(producer, ns, env.to_bytes(), key=env.data["author_id"])
        await send(producer, ns, envelopes[0].to_bytes(), key="author-0")  # a redelivered duplicate
        await eventually(lambda: echo.service.db.authors.count_documents({}), until=lambda n: n == 20)
        out = await eventually(
            lambda: read_topic(ns.infra["kafka"], ns.topic(Topic.PROFILE_EVENTS)),
            until=lambda r: len(r) >= 21,
            what="21 AuthorRegistered",
        )
    ids = {json.loads(r.value)["event_id"] for r in out}
    assert len(ids) == 20, "the duplicate input produced the same event id, not a new event"
    first = json.loads(out[0].value)
    assert first["event_type"] == "AuthorRegistered" and first["producer"] == "echo"
    assert {r.key.decode() for r in out} == {f"author-{i}" for i in range(20)}


async def test_poison_messages_are_dead_lettered_and_the_stream_goes_on(ns: Namespace, producer) -> None:
    echo = EchoService(ns)
    async with echo.service.running():
        await send(producer, ns, b"this is not json")
        await send(producer, ns, b"\xff\xfe\x00 not utf-8")
        bad_schema = imported("a1").model_copy(update={"data": {"author_id": "a1", "source": "test"}})
        await send(producer, ns, bad_schema.to_bytes())
        unknown = imported("a1").model_copy(update={"event_type": "SomethingElse"})
        await send(producer, ns, unknown.to_bytes())
        await send(producer, ns, imported("after-poison").to_bytes(), key="after-poison")
        await eventually(lambda: echo.service.db.authors.find_one({"_id": "after-poison"}), what="good message handled")
        dead = await eventually(
            lambda: read_topic(ns.infra["kafka"], ns.topic(dlq_topic(Topic.PUBLICATIONS_INGESTED))),
            until=lambda r: len(r) >= 4,
        )
        metrics = echo.service.metrics.render().decode()
    letters = [json.loads(r.value) for r in dead]
    assert len(letters) == 4
    errors = [letter["error"] for letter in letters]
    assert "not JSON" in errors[0] and "not UTF-8" in errors[1]
    assert "display_name" in errors[2] and "unknown event type 'SomethingElse'" in errors[3]
    for letter in letters:
        assert letter["reason"] == "undecodable"
        assert letter["origin"]["topic"] == ns.topic(Topic.PUBLICATIONS_INGESTED)
        assert letter["origin"]["offset"] >= 0 and letter["consumer_group"].endswith(".echo")
    assert letters[1]["payload_base64"]  # non-UTF-8 bytes are kept, not mangled
    assert 'bzpeer_dead_letters_total{reason="undecodable",topic="publications.ingested"} 4.0' in metrics


async def test_a_handler_bug_dead_letters_only_the_failing_message(ns: Namespace, producer) -> None:
    echo = EchoService(ns, fail_on="boom")
    async with echo.service.running():
        for author in ("ok-1", "boom", "ok-2"):
            await send(producer, ns, imported(author).to_bytes(), key="same-partition")
        await eventually(lambda: echo.service.db.authors.count_documents({}), until=lambda n: n == 2)
        dead = await eventually(
            lambda: read_topic(ns.infra["kafka"], ns.topic(dlq_topic(Topic.PUBLICATIONS_INGESTED))),
            until=lambda r: len(r) >= 1,
        )
    letter = json.loads(dead[0].value)
    assert letter["reason"] == "handler_failed" and "this author breaks the handler" in letter["error"]
    assert json.loads(letter["payload"])["data"]["author_id"] == "boom"


async def committed_offset(ns: Namespace, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=ns.infra["kafka"])
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(o.offset for tp, o in offsets.items() if o.offset > 0)


async def test_store_outage_is_retried_never_dead_lettered_nor_committed(ns: Namespace, producer) -> None:
    host, port = ns.infra["mongodb"].split("//")[1].split(":")
    proxy = await TcpProxy(host, int(port.split("/")[0])).start()
    echo = EchoService(ns, mongodb_uri=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true")
    group = echo.service.settings.consumer_group
    async with echo.service.running():
        await send(producer, ns, imported("before").to_bytes())
        await eventually(lambda: echo.service.db.authors.find_one({"_id": "before"}))
        committed_before = await eventually(lambda: committed_offset(ns, group), until=lambda n: n >= 1)
        await proxy.cut()
        await send(producer, ns, imported("during-outage").to_bytes())

        async def retries() -> float:
            return echo.service.metrics.transient_retries.labels(kind="ServerSelectionTimeoutError")._value.get()

        await eventually(retries, until=lambda n: n >= 2, what="retries while the store is down")
        assert await committed_offset(ns, group) == committed_before, "committed while the store was down"
        await proxy.restore()
        await eventually(
            lambda: echo.service.db.authors.find_one({"_id": "during-outage"}), what="handled after outage"
        )
        await eventually(lambda: committed_offset(ns, group), until=lambda n: n == committed_before + 1)
    await proxy.cut()
    assert await read_topic(ns.infra["kafka"], ns.topic(dlq_topic(Topic.PUBLICATIONS_INGESTED))) == []


async def test_a_batch_interrupted_before_commit_is_delivered_again(ns: Namespace, producer) -> None:
    first = EchoService(ns, block_on="stuck")
    async with first.service.running():
        await send(producer, ns, imported("stuck").to_bytes())
        await asyncio.wait_for(first.entered.wait(), timeout=30)  # the handler holds the batch
    # The first instance stopped mid-handler: nothing was committed, so a second instance
    # of the same consumer group receives the message again.
    second = EchoService(ns)
    async with second.service.running():
        await eventually(lambda: second.service.db.authors.find_one({"_id": "stuck"}), what="redelivered")
