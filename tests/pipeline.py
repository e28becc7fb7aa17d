"""The whole system as four OS processes (``ServiceProcess``) in one namespace of the real
broker and store, and the observable "settled" state: what the fault tests and the
pipeline benchmark both need.

    pipe = Pipeline(ns)                     # settings of the four services from ns
    await pipe.start()                      # four processes, each /ready
    ... send a stream, kill/restart pipe.procs["trust"], ...
    await pipe.settle(timeout=150)          # every input consumed, nothing left to do
    await pipe.stop()
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient

from bzpeer_cli.services import SERVICE_NAMES, build, settings_class
from contracts.topics import dlq_topic
from service_runtime.offsets import end_offsets, group_progress
from service_runtime.settings import RuntimeSettings
from service_runtime.store import StoreAdapter
from services.claims.store import ClaimsStore
from services.collab.store import CollabStore
from services.follow.store import FollowStore
from services.profile.store import ProfileStore
from services.trust.store import TrustStore
from tests.service_process import ServiceProcess

STORES: dict[str, type[StoreAdapter]] = {
    "profile": ProfileStore,
    "claims": ClaimsStore,
    "trust": TrustStore,
    "follow": FollowStore,
    "collab": CollabStore,
}


async def service_inputs(name: str, settings: RuntimeSettings) -> list[tuple[str, tuple[str, ...]]]:
    """(consumer group, logical topics) of every subscription, from the service's own
    composition root (built, not started)."""
    service = build(name, settings)
    try:
        return list(service.inputs)
    finally:
        await service.mongo.close()


class Pipeline:
    def __init__(
        self,
        ns: Any,
        *,
        mongodb_uri: str | None = None,
        kafka: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        replicas: int = 1,
        **extra_env: Any,
    ) -> None:
        """``mongodb_uri``/``kafka``: what the service processes connect to (e.g. a proxy in
        front of the store); checks always read the store directly (``ns.infra``).
        ``replicas``: processes per service, sharing its consumer groups and database
        (``procs[name]`` is the first, ``replicas[name]`` all of them)."""
        self.ns = ns
        overrides = overrides or {}
        self.settings: dict[str, RuntimeSettings] = {}
        for n in SERVICE_NAMES:
            o = dict(overrides.get(n, {}))
            if mongodb_uri:
                o.setdefault("mongodb_uri", mongodb_uri)
            if kafka:
                o.setdefault("kafka_bootstrap_servers", kafka)
            self.settings[n] = ns.settings(n, cls=settings_class(n), **o)
        self.replicas = {
            n: [ServiceProcess(n, s, **extra_env) for _ in range(replicas)] for n, s in self.settings.items()
        }
        self.procs = {n: ps[0] for n, ps in self.replicas.items()}
        self.inputs: dict[str, list[tuple[str, tuple[str, ...]]]] = {}

    @property
    def kafka(self) -> str:
        return self.ns.infra["kafka"]

    async def start(self) -> Pipeline:
        self.inputs = {n: await service_inputs(n, s) for n, s in self.settings.items()}
        await asyncio.gather(*(p.start() for ps in self.replicas.values() for p in ps))
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for ps in self.replicas.values() for p in ps))

    async def lag(self) -> dict[str, int]:
        """Records not yet committed, per consumer group."""
        out = {}
        for name, inputs in self.inputs.items():
            for group, topics in inputs:
                physical = [self.settings[name].physical_topic(t) for t in topics]
                out[group] = sum(p.lag for p in await group_progress(self.kafka, group, physical))
        return out

    async def committed(self, service: str) -> int:
        """Records the service's consumer groups have committed, over all their inputs."""
        total = 0
        for group, topics in self.inputs[service]:
            physical = [self.settings[service].physical_topic(t) for t in topics]
            total += sum(p.committed for p in await group_progress(self.kafka, group, physical))
        return total

    async def committed_offsets(self) -> dict[tuple[str, str, int], int]:
        """Committed offset of every (group, topic, partition) of every service."""
        out = {}
        for name, inputs in self.inputs.items():
            for group, topics in inputs:
                physical = [self.settings[name].physical_topic(t) for t in topics]
                for p in await group_progress(self.kafka, group, physical):
                    out[(group, p.topic, p.partition)] = p.committed
        return out

    async def pending_work(self) -> dict[str, int]:
        """Work a service still holds in its store with no input left to trigger it:
        outboxes not yet published, trust authors waiting for their recomputation, follow
        commands parked for an author, claims waiting for their author."""
        client: AsyncMongoClient = AsyncMongoClient(self.ns.infra["mongodb"])
        try:
            trust = client[self.settings["trust"].database_name]
            follow = client[self.settings["follow"].database_name]
            claims = client[self.settings["claims"].database_name]
            # Events written with a change and not yet published (a batch retried after
            # its write landed, a process that died): the outbox sweeper still has them.
            unpublished = {
                f"{name}_{collection}_outbox": await client[self.settings[name].database_name][
                    collection
                ].count_documents({"outbox.0": {"$exists": True}})
                for name, store in STORES.items()
                for collection in store.outbox_collections
            }
            return {
                **unpublished,
                "trust_dirty": await trust.trust_authors.count_documents({"dirty": True}),
                "follow_parked": await follow.authors.count_documents({"parked.0": {"$exists": True}}),
                "claims_pending_author": await claims.claims.count_documents({"status": "pending_author"}),
            }
        finally:
            await client.close()

    async def settle(self, *, timeout: float = 150.0, quiet_polls: int = 3, interval: float = 1.0) -> float:
        """Wait until every consumer group has committed every record of its inputs and no
        service holds pending work, ``quiet_polls`` polls in a row with the log ends not
        moving. Returns the seconds it took; fails with the last observation at the deadline."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        quiet, last_ends, last = 0, None, {}
        while True:
            lag = await self.lag()
            pending = await self.pending_work()
            ends = sum((await end_offsets(self.kafka, [self.ns.topic(t) for t in _all_inputs(self.inputs)])).values())
            last = {"lag": lag, "pending": pending, "end_offsets": ends}
            if not any(lag.values()) and not any(pending.values()) and ends == last_ends:
                quiet += 1
                if quiet >= quiet_polls:
                    return loop.time() - started
            else:
                quiet = 0
            last_ends = ends
            if loop.time() - started > timeout:
                dead = {n: [p.alive for p in ps] for n, ps in self.replicas.items()}
                raise AssertionError(f"system not settled after {timeout}s: {last}; alive: {dead}")
            await asyncio.sleep(interval)

    async def dead_letters(self) -> dict[str, int]:
        """Records in every dead-letter topic of the services' inputs."""
        topics = [self.ns.topic(dlq_topic(t)) for t in _all_inputs(self.inputs)]
        ends = await end_offsets(self.kafka, topics)
        out: dict[str, int] = {}
        for tp, end in ends.items():
            out[tp.topic] = out.get(tp.topic, 0) + end
        return {t: n for t, n in out.items() if n}


def _all_inputs(inputs: dict[str, list[tuple[str, tuple[str, ...]]]]) -> list[str]:
    return sorted({t for groups in inputs.values() for _, ts in groups for t in ts})
