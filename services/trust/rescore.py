"""Rescoring every author with the current formula (after a formula version change).

Works in chunks of authors ordered by id: lease, score with the current formula, store
the score with its formula version (and the TrustScoreChanged in the outbox when score
or band moved), publish, clear. The formula version stored per author is the resume
point: interrupted at any moment, a new run picks up the authors still behind and
first publishes any outbox left pending, so every author is rescored once and every
change is published once (ids derived from author, formula version and revision).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass

from service_runtime.kafka import ensure_topics, make_broker
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
    await recomputer.flush_outboxes()
    progress = Progress(total=await store.count_behind(version))
    while max_authors is None or progress.rescored < max_authors:
        size = chunk if max_authors is None else min(chunk, max_authors - progress.rescored)
        ids = await store.behind_ids(version, size)
        if not ids:
            break
        progress.rescored += await recomputer.recompute(ids)
        progress.published = recomputer.published - published_before
        on_progress(progress)
    return progress


async def _run(settings: TrustSettings, chunk: int) -> int:
    broker = make_broker(settings.kafka_bootstrap_servers, client_id="bzpeer-trust-rescore")
    mongo = connect_store(settings.mongodb_uri)
    await ensure_topics(settings.kafka_bootstrap_servers, prefix=settings.topic_prefix)
    await broker.start()
    try:
        store = TrustStore(mongo.get_database(settings.database_name))
        publisher = EventPublisher(broker, settings.service_name, settings.topic_prefix)
        recomputer = Recomputer(store, publisher, lease_s=settings.recompute_lease_s)
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
