"""Benchmark: the OpenAlex importer against a bare fetch-and-publish loop, same run.

Serves N works (the real recorded works, cloned under new ids) from the local OpenAlex
stand-in on 127.0.0.1 and imports them through the real broker:
* importer: ``import_author`` (rate limiter at 100 req/s, contract validation, envelopes,
  keyed publish with acks awaited per page, checkpoint file written per page);
* baseline: the same pages fetched with httpx and each work's id/title/author ids sent as
  plain JSON by a bare aiokafka producer (no validation, no envelope, no checkpoint).
Prints works/s for both and their ratio. Needs Kafka (make infra-up). Figures are noisy on
a shared 2-core machine: compare the ratio, not the absolute numbers.

    .local/venv/bin/python bench/bench_importer.py [--works 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.topics import TOPICS, Topic
from importers.checkpoint import JsonFileCheckpoint
from importers.openalex import import_author
from importers.openalex_mapping import map_work
from importers.settings import ImporterSettings
from service_runtime.kafka import delete_topics, ensure_topics
from tests.integration.importers.openalex_server import DATA, MEARMAN, OpenAlexStub

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PER_PAGE = 100


def synthetic_works(n: int) -> list[dict]:
    recorded = json.loads((DATA / f"works-author-{MEARMAN}-page-1.json").read_text())["results"]
    works = []
    for i in range(n):
        w = copy.deepcopy(recorded[i % len(recorded)])
        w["id"] = f"https://openalex.org/W{9_000_000_000 + i}"
        w["title"] = f"{w['title']} ({i})"
        works.append(w)
    return works


def page_body(works: list[dict], page: int) -> bytes:
    meta = {"count": len(works), "db_response_time_ms": 1, "page": page, "per_page": PER_PAGE, "groups_count": None}
    return json.dumps(
        {"meta": meta, "results": works[(page - 1) * PER_PAGE : page * PER_PAGE], "group_by": []}
    ).encode()


async def baseline(base_url: str, topic: str, n: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            start, sent, page = time.perf_counter(), 0, 1
            while True:
                body = (
                    await http.get(
                        "/works", params={"filter": f"author.id:{MEARMAN}", "page": page, "per_page": PER_PAGE}
                    )
                ).json()
                futures = []
                for w in body["results"]:
                    authors = [a["author"]["id"] for a in w["authorships"]]
                    value = json.dumps({"id": w["id"], "title": w["title"], "authors": authors}).encode()
                    futures.append(await producer.send(topic, value, key=authors[0].encode()))
                await asyncio.gather(*futures)
                sent += len(body["results"])
                if page * PER_PAGE >= body["meta"]["count"]:
                    break
                page += 1
            elapsed = time.perf_counter() - start
    finally:
        await producer.stop()
    assert sent == n, sent
    return elapsed


async def importer(base_url: str, prefix: str, n: int, state_dir: str) -> float:
    settings = ImporterSettings(
        kafka_bootstrap_servers=KAFKA,
        topic_prefix=prefix,
        openalex_per_page=PER_PAGE,
        openalex_requests_per_second=100,
        log_level="WARNING",
    )
    start = time.perf_counter()
    summary = await import_author(
        MEARMAN,
        settings=settings,
        base_url=base_url,
        checkpoint=JsonFileCheckpoint(Path(state_dir) / "state.json"),
        progress=None,
    )
    elapsed = time.perf_counter() - start
    assert summary.published == n, summary.line()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--works", type=int, default=3000)
    args = parser.parse_args()
    n = args.works
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    spec = TOPICS[Topic.PUBLICATIONS_INGESTED]
    await ensure_topics(KAFKA, [spec], prefix=prefix)
    await ensure_topics(KAFKA, [spec], prefix=f"{prefix}bare.")
    works = synthetic_works(n)

    t = time.perf_counter()
    for w in works:
        map_work(w)
    mapping_rate = n / (time.perf_counter() - t)

    try:
        with OpenAlexStub() as stub, tempfile.TemporaryDirectory() as state_dir:
            # Pages encoded up front: the stand-in shares this process (and its GIL) with both
            # clients, so encoding per request would tax whichever path is measured.
            stub.works[MEARMAN] = works
            stub.verbatim = {(MEARMAN, p, PER_PAGE): page_body(works, p) for p in range(1, n // PER_PAGE + 2)}
            # Warm both paths once (connections, metadata), then measure each twice, interleaved.
            await baseline(stub.base_url, f"{prefix}bare.{spec.name}", n)
            bare, ours = [], []
            for _ in range(2):
                bare.append(await baseline(stub.base_url, f"{prefix}bare.{spec.name}", n))
                ours.append(await importer(stub.base_url, prefix, n, state_dir))
    finally:
        await delete_topics(KAFKA, [f"{prefix}{spec.name}", f"{prefix}bare.{spec.name}"])

    bare_rate, our_rate = n / min(bare), n / min(ours)
    print(
        f"works: {n} in {n // PER_PAGE + (n % PER_PAGE > 0)} pages of {PER_PAGE} "
        f"(~{len(json.dumps(works)) // n // 1024} KiB of JSON per work)"
    )
    print(f"mapping alone (map_work):            {mapping_rate:10.0f} works/s")
    print(f"baseline (httpx + bare aiokafka):    {bare_rate:10.0f} works/s  (best of {len(bare)}: {min(bare):.2f}s)")
    print(f"importer (import_author):            {our_rate:10.0f} works/s  (best of {len(ours)}: {min(ours):.2f}s)")
    print(f"ratio importer / baseline:           {our_rate / bare_rate:10.2f}")
    polite = ImporterSettings().openalex_requests_per_second * PER_PAGE
    print(
        f"(against OpenAlex, the default {polite / PER_PAGE:g} req/s x {PER_PAGE} works/page "
        f"caps an import at {polite:.0f} works/s)"
    )


if __name__ == "__main__":
    asyncio.run(main())
