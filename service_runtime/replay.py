"""Rebuild a service's projection from the log: consume every input topic from offset 0
with a fresh consumer group, publishing nothing (the log already holds what the service
published), until the end offsets seen at the start are reached.

A rebuild reproduces what the service projects from its inputs, and reads the decisions
it took live (trust scores, notifications) back from its own output topics rather than
taking them again: taken again, they would depend on how this run interleaves the
partitions and on the wall clock, and could differ from what was published.

Each service declares its ``Projection``: the collections a rebuild must reproduce, and
in each the bookkeeping fields that say how this copy got there (revision counters,
outbox tokens, leases, timestamps of processing) rather than what the log says.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient

from service_runtime.offsets import end_offsets, group_progress
from service_runtime.projection import Projection
from service_runtime.service import Service
from service_runtime.settings import RuntimeSettings
from service_runtime.store import Client
from service_runtime.topic_reader import iter_topic


@dataclass
class ReplayResult:
    database: str
    records: int
    seconds: float
    projection: Projection  # what the rebuilt service declares its projection to be


def replay_settings(live: RuntimeSettings, database: str) -> RuntimeSettings:
    return live.model_copy(
        update={
            "mongodb_database": database,
            "consumer_group_prefix": f"{live.consumer_group_prefix}-replay-{uuid.uuid4().hex[:8]}",
            "rebuilding": True,
        }
    )


async def rebuild(
    build: Callable[[RuntimeSettings], Service],
    live: RuntimeSettings,
    *,
    database: str,
    progress: Callable[[int, int], None] = lambda done, total: None,
    poll_s: float = 0.2,
) -> ReplayResult:
    settings = replay_settings(live, database)
    client: Client = AsyncMongoClient(settings.mongodb_uri)
    try:
        await client.drop_database(database)
    finally:
        await client.close()
    service = build(settings)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with service.running():
        targets = []
        for group, topics in service.inputs:
            physical = [settings.physical_topic(t) for t in topics]
            ends = await end_offsets(settings.kafka_bootstrap_servers, physical)
            targets.append((group, physical, ends))
        total = sum(sum(ends.values()) for _, _, ends in targets)
        while True:
            done = 0
            for group, physical, ends in targets:
                for p in await group_progress(settings.kafka_bootstrap_servers, group, physical):
                    target = next(
                        (e for tp, e in ends.items() if (tp.topic, tp.partition) == (p.topic, p.partition)), 0
                    )
                    done += min(p.committed, target)
            progress(done, total)
            if done >= total:
                break
            await asyncio.sleep(poll_s)
        await service.drain()
    return ReplayResult(database, total, loop.time() - started, service.projection)


def _without(doc: Any, ignore: frozenset[str], prefix: str = "") -> Any:
    if isinstance(doc, dict):
        return {k: _without(v, ignore, f"{prefix}{k}.") for k, v in sorted(doc.items()) if f"{prefix}{k}" not in ignore}
    if isinstance(doc, list):
        return [_without(v, ignore, prefix) for v in doc]
    return doc


async def published_revisions(
    settings: RuntimeSettings, topic: str, revision_of: Callable[[str, dict[str, Any]], int | None]
) -> dict[str, int]:
    """Per author, the highest revision the live service published on its own output topic.

    A rebuild reproduces a service's facts but may count its changes differently (two
    commands applied in one batch live and in two here); a revision counter that restarted
    lower than what consumers hold would make them ignore the next changes as stale, so a
    rebuild takes each author's counter from what was published (a drain hook)."""
    top: dict[str, int] = {}
    async for batch in iter_topic(settings.kafka_bootstrap_servers, settings.physical_topic(topic)):
        for record in batch:
            try:
                doc = json.loads(record.value)
                revision = revision_of(doc["event_type"], doc["data"])
                author_id = doc["data"]["author_id"]
            except (ValueError, KeyError, TypeError):
                continue  # not an event of ours (poison is dead-lettered by the consumers)
            if revision is not None and revision > top.get(author_id, 0):
                top[author_id] = revision
    return top


def _short(value: Any, width: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _difference(live: Any, rebuilt: Any, path: str = "") -> str:
    """Where two documents differ, as dotted paths with both values (shortened)."""
    where = path.rstrip(".")
    if live is None or rebuilt is None:
        what = "only in the rebuilt copy" if live is None else "missing from the rebuilt copy"
        return f"{where}: {what}" if where else what
    if isinstance(live, dict) and isinstance(rebuilt, dict):
        parts = [
            _difference(live.get(k), rebuilt.get(k), f"{path}{k}.")
            for k in sorted(set(live) | set(rebuilt))
            if live.get(k) != rebuilt.get(k)
        ]
        return "; ".join(parts)
    return f"{where}: live={_short(live)} rebuilt={_short(rebuilt)}"


async def compare_databases(
    uri: str, live_db: str, rebuilt_db: str, projection: Projection, *, limit: int = 20
) -> list[str]:
    """Differences between two copies of a projection, collection by collection, document by document."""
    client: Client = AsyncMongoClient(uri)
    problems: list[str] = []
    try:
        live, rebuilt = client[live_db], client[rebuilt_db]
        for name, ignore in sorted(projection.collections.items()):
            a = {d["_id"]: _without(d, ignore) async for d in live[name].find({})}
            b = {d["_id"]: _without(d, ignore) async for d in rebuilt[name].find({})}
            for key in sorted(set(a) | set(b), key=str):
                if a.get(key) != b.get(key):
                    problems.append(f"{name}/{key}: {_difference(a.get(key), b.get(key))}")
                    if len(problems) >= limit:
                        return problems
    finally:
        await client.close()
    return problems
