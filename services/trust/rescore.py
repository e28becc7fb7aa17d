"""Rescoring every author with the current formula (after a formula version change).

Works in chunks of the authors still behind (index on the score's formula version):
lease, score with the current formula, store the score with its formula version (and
the TrustScoreChanged in the author's outbox when score or band moved), publish, pull.
The formula version stored per author is the resume point: interrupted at any moment, a
new run first publishes what the outboxes still hold (the runtime's sweep, with no grace
period), then picks up the authors still behind, so every author is rescored once and
every change is published once in effect (ids derived from author, formula version and
revision: at most a duplicate of an event the live service is publishing at that moment).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from service_runtime.kafka import ensure_topics, make_broker
from service_runtime.outbox import Outbox
from service_runtime.publishing import EventPublisher
from service_runtime.store import connect_store
from services.trust import scoring
from services.trust.recompute import Recomputer
from services.trust.settings import TrustSettings
from services.trust.store import TrustStore


@dataclass
class Progress:
    total: int
    rescored: int = 0
    published: int = 0

    def line(self) -> str:
        pct = 100.0 * self.rescored / self.total if self.total else 100.0
        return f"rescored {self.rescored}/{self.total} authors ({pct:.1f}%), {self.published} changes published"


async def rescore_all(
    store: TrustStore,
    recomputer: Recomputer,
    *,
    chunk: int = 500,
    max_authors: int | None = None,
    on_progress: Callable[[Progress], None] = lambda p: None,
) -> Progress:
    """Rescore authors behind ``recomputer.formula``; ``max_authors`` stops early (a partial run)."""
    version = recomputer.formula.version
    published_before = recomputer.published
    swept = await recomputer.outbox.sweep(store.authors, older_than=timedelta(0))
    recomputer.published += swept
    progress = Progress(total=await store.count_behind(version))
    while max_authors is None or progress.rescored < max_authors:
        size = chunk if max_authors is None else min(chunk, max_authors - progress.rescored)
        ids = await store.behind_ids(version, size)
        if not ids:
            break
        stored = await recomputer.recompute(ids)
        progress.rescored += stored
        progress.published = recomputer.published - published_before
        on_progress(progress)
        if not stored:  # every one held by a live pass, or its signals moving: look again shortly
            await asyncio.sleep(0.2)
    return progress


async def _run(settings: TrustSettings, chunk: int) -> int:
    broker = make_broker(settings.kafka_bootstrap_servers, client_id="bzpeer-trust-rescore")
    mongo = connect_store(settings.mongodb_uri)
    await ensure_topics(settings.kafka_bootstrap_servers, prefix=settings.topic_prefix)
    await broker.start()
    try:
        store = TrustStore(mongo.get_database(settings.database_name))
        publisher = EventPublisher(broker, settings.service_name, settings.topic_prefix)
        recomputer = Recomputer(store, Outbox(publisher), lease_s=settings.recompute_lease_s)
        print(f"rescoring with formula v{scoring.FORMULA_VERSION}", flush=True)
        result = await rescore_all(store, recomputer, chunk=chunk, on_progress=lambda p: print(p.line(), flush=True))
        print(f"done: {result.line()}", flush=True)
        return 0
    finally:
        await broker.stop()
        await mongo.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bzpeer trust rescore", description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=500, help="authors per step (default 500)")
    args = parser.parse_args(argv)
    return asyncio.run(_run(TrustSettings(), args.chunk))


if __name__ == "__main__":
    sys.exit(main())
