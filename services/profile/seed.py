"""Load the seed profile (fixtures/seed/publications.ingested.jsonl) into ``publications.ingested``.

    python -m services.profile.seed                       # the seed record, idempotent
    python -m services.profile.seed --demo-copy demo:run-7   # a fresh demo copy of it

Loading twice changes nothing: every event has a fixed id and identical content, and the
profile service ignores a work it already holds unchanged. A *demo copy* is the same
researcher under another author id, marked as a copy in its name and description, closed
to collaboration until its owner opens it, with the ORCID documentation's fictional example
iD (so an ORCID-matching claim can be shown),
its own work ids and its own copies of the co-authors (``<copy id>.<co-author id>``), so
that neither the seed record nor its real co-authors' records change when a demo runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from contracts.envelope import Envelope, deterministic_event_id
from contracts.registry import decode
from contracts.topics import Topic
from service_runtime.publishing import EventPublisher, Outgoing
from service_runtime.settings import RuntimeSettings

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "seed" / "publications.ingested.jsonl"
SEED_AUTHOR_ID = "seed:quoc-v-le"
DEMO_ORCID = "0000-0002-1825-0097"  # ORCID's documented fictional example iD (Josiah Carberry)


def seed_envelopes(*, author_id: str = SEED_AUTHOR_ID, demo_copy: bool = False) -> list[Envelope]:
    """The fixture's events, rewritten for ``author_id`` when it is not the seed record's."""
    lines = FIXTURE.read_text().splitlines()
    envelopes = [Envelope.model_validate_json(line) for line in lines if line.strip()]
    if author_id == SEED_AUTHOR_ID and not demo_copy:
        return envelopes
    return [_copy_for(env, author_id, demo_copy) for env in envelopes]


def _copy_for(env: Envelope, author_id: str, demo_copy: bool) -> Envelope:
    data: dict[str, Any] = json.loads(json.dumps(env.data))
    if env.event_type == "AuthorImported":
        data["author_id"] = author_id
        if demo_copy:
            data["display_name"] += " (demo copy)"
            data["description"] = f"Demo copy of the seed record {SEED_AUTHOR_ID}. {data['description']}"
            data["orcid"] = DEMO_ORCID
            # Closed until its owner opens it (PATCH /authors/{id}): the demo shows that step.
            data["open_to_collaborate"] = False
    else:
        work = data["work"]
        work["work_id"] = f"{author_id}:{work['work_id']}"[:128]
        for author in work["authors"]:
            if author["author_id"] == SEED_AUTHOR_ID:
                author["author_id"] = author_id
            else:
                author["author_id"] = f"{author_id}.{author['author_id']}"[:128]
        data["author_id"] = work["authors"][0]["author_id"]
    copy = env.model_copy(
        update={
            "data": data,
            "event_id": deterministic_event_id(env.event_id, author_id),
            "correlation_id": f"seed:{author_id}",
        }
    )
    decode(Topic.PUBLICATIONS_INGESTED, copy.to_bytes())  # the rewritten event must still be valid
    return copy


async def load_seed(
    target: EventPublisher | str,
    *,
    author_id: str = SEED_AUTHOR_ID,
    demo_copy: bool = False,
    topic_prefix: str = "",
) -> int:
    """Publish the seed (or a demo copy) through a service's publisher or, given a bootstrap
    address, a plain idempotent producer. Returns the number of events published."""
    envelopes = seed_envelopes(author_id=author_id, demo_copy=demo_copy)
    keyed = [(env.data["author_id"], env) for env in envelopes]
    if isinstance(target, EventPublisher):
        await target.publish([Outgoing(Topic.PUBLICATIONS_INGESTED, key, env) for key, env in keyed])
        return len(keyed)
    producer = AIOKafkaProducer(bootstrap_servers=target, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        topic = topic_prefix + Topic.PUBLICATIONS_INGESTED
        sent = [await producer.send(topic, env.to_bytes(), key=key.encode()) for key, env in keyed]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return len(keyed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-copy", metavar="AUTHOR_ID", help="publish a demo copy under this author id")
    args = parser.parse_args(argv)
    settings = RuntimeSettings()
    author_id = args.demo_copy or SEED_AUTHOR_ID
    n = asyncio.run(
        load_seed(
            settings.kafka_bootstrap_servers,
            author_id=author_id,
            demo_copy=bool(args.demo_copy),
            topic_prefix=settings.topic_prefix,
        )
    )
    print(f"published {n} seed events for {author_id}")


if __name__ == "__main__":
    main()
