"""Import one author's works from OpenAlex into ``publications.ingested``.

``import_author("0000-0001-6187-6610", settings=...)`` (an ORCID iD) or
``import_author("A5017898742", ...)`` (an OpenAlex author id) looks the author up, publishes
an ``AuthorImported``, then pages through the author's works: each page is fetched, mapped
as a whole, published (every acknowledgement awaited) and only then checkpointed. A page
that cannot be read publishes nothing and stays the resume point; a re-run continues
there. Re-publishing is harmless: event ids are derived from the OpenAlex record and its
``updated_date``, so a repeat is a duplicate id the consumer ignores, and a corrected
record (new ``updated_date``) is a new event.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from contracts.envelope import deterministic_event_id
from contracts.topics import TOPICS, Topic
from importers.checkpoint import AuthorProgress, Checkpoint, JsonFileCheckpoint
from importers.openalex_client import OpenAlexClient, Pause
from importers.openalex_mapping import SOURCE, Skip, bzpeer_id, map_author, map_work, normalise_orcid, openalex_key
from importers.settings import BASIC_PAGING_LIMIT, ImporterSettings
from service_runtime.kafka import ensure_topics, make_broker
from service_runtime.logging import get_logger
from service_runtime.publishing import EventPublisher, Outgoing

log = get_logger(__name__)
_BARE_ORCID = re.compile(r"^(?:https?://orcid\.org/)?\d{4}-\d{4}-\d{4}-\d{3}[\dXx]$")


@dataclass(frozen=True, slots=True)
class ImportProgress:
    author_id: str
    done: int  # works handled (published or skipped) so far, over every run
    total: int  # meta.count
    page: int


ProgressFn = Callable[[ImportProgress], None]


@dataclass
class ImportSummary:
    author_id: str  # "openalex:A..."
    total: int = 0  # works OpenAlex lists for the author (meta.count)
    published: int = 0  # works published, over every run of this import
    published_this_run: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, over every run
    pages_this_run: int = 0
    resumed_from_page: int | None = None
    truncated: bool = False  # more than basic paging can reach (10,000 works)
    requests: int = 0
    retries: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def line(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        resumed = f", resumed at page {self.resumed_from_page}" if self.resumed_from_page else ""
        cut = f", stopped at OpenAlex's {BASIC_PAGING_LIMIT}-result paging limit" if self.truncated else ""
        return (
            f"{self.author_id}: {self.published} of {self.total} works published "
            f"({self.published_this_run} in this run{resumed}), skipped: {skipped}{cut}"
        )


def stderr_progress(p: ImportProgress) -> None:
    """'openalex:A1: 300/1250 works (page 3)', rewritten in place on a terminal."""
    end = "\r" if sys.stderr.isatty() and p.done < p.total else "\n"
    print(f"{p.author_id}: {p.done}/{p.total} works (page {p.page})", end=end, file=sys.stderr, flush=True)


def parse_identifier(identifier: str) -> tuple[str, str]:
    """('orcid', '0000-...') or ('openalex', 'A...'); ValueError with a clear message otherwise."""
    raw = identifier.strip()
    if _BARE_ORCID.match(raw):
        try:
            orcid = normalise_orcid(raw)
        except ValueError:
            raise ValueError(f"{identifier!r}: the ORCID iD's check digit is wrong (ISO 7064 mod 11-2)") from None
        if orcid is not None:
            return "orcid", orcid
    key = openalex_key(raw)
    if key and key.startswith("A"):
        return "openalex", key
    raise ValueError(
        f"{identifier!r} is neither an ORCID iD (0000-0002-1825-0097) nor an OpenAlex author id (A5017898742)"
    )


async def import_author(
    identifier: str,
    *,
    settings: ImporterSettings | None = None,
    base_url: str | None = None,
    checkpoint: Checkpoint | None = None,
    progress: ProgressFn | None = stderr_progress,
    publisher: EventPublisher | None = None,
    pause: Pause = asyncio.sleep,
    transport: httpx.AsyncBaseTransport | None = None,
    restart: bool = False,
) -> ImportSummary:
    """Import every work of one author; resumable (see the module docstring).

    ``publisher``: an already started one (e.g. a service's); otherwise a broker is started
    for the import and stopped after it. ``checkpoint`` defaults to the JSON file named by
    ``settings.import_state_path``; ``restart`` ignores it and starts from page 1.
    ``pause`` and ``transport`` let tests observe waits and answer requests in memory.
    """
    settings = settings or ImporterSettings()
    kind, value = parse_identifier(identifier)  # fail before touching the network
    checkpoint = checkpoint or JsonFileCheckpoint(settings.import_state_path)
    async with OpenAlexClient(settings, base_url=base_url, pause=pause, transport=transport) as client:
        if publisher is not None:
            return await _run(client, publisher, kind, value, checkpoint, progress, settings, restart)
        broker = make_broker(settings.kafka_bootstrap_servers, client_id="bzpeer-importer")
        spec = TOPICS[Topic.PUBLICATIONS_INGESTED]
        await ensure_topics(settings.kafka_bootstrap_servers, [spec], prefix=settings.topic_prefix)
        await broker.start()
        try:
            own = EventPublisher(broker, settings.service_name, settings.topic_prefix)
            return await _run(client, own, kind, value, checkpoint, progress, settings, restart)
        finally:
            await broker.stop()


async def _run(
    client: OpenAlexClient,
    publisher: EventPublisher,
    kind: str,
    value: str,
    checkpoint: Checkpoint,
    progress: ProgressFn | None,
    settings: ImporterSettings,
    restart: bool,
) -> ImportSummary:
    author = await (client.author_by_orcid(value) if kind == "orcid" else client.author_by_id(value))
    author_event, notes = map_author(author)
    for note in notes:
        log.warning("author_field_dropped", author_id=author_event.author_id, note=note)
    key = openalex_key(author_event.author_id)
    assert key is not None
    correlation = f"{SOURCE}-import:{key}"

    saved = checkpoint.load(key)
    resumable = saved is not None and not saved.completed and not restart
    state = saved if saved is not None and resumable else AuthorProgress(per_page=settings.openalex_per_page)
    # new, finished or restarted: from page 1
    resumed_from = state.next_page if resumable and state.next_page > 1 else None
    summary = ImportSummary(author_id=bzpeer_id(key), resumed_from_page=resumed_from)

    if not state.author_published:
        await publisher.publish(
            [
                publisher.outgoing(
                    author_event,
                    correlation_id=correlation,
                    event_id=deterministic_event_id(SOURCE, author_event.author_id, author.get("updated_date")),
                )
            ]
        )
        state.author_published = True
        checkpoint.save(key, state)

    while True:
        if (state.next_page - 1) * state.per_page >= BASIC_PAGING_LIMIT:
            summary.truncated = state.completed = True
            checkpoint.save(key, state)
            log.warning(
                "paging_limit_reached", author_id=summary.author_id, total=state.total, limit=BASIC_PAGING_LIMIT
            )
            break
        page = await client.works_page(key, state.next_page, state.per_page)
        outgoing, skipped = _map_page(publisher, page.results, correlation)
        await publisher.publish(outgoing)  # the whole page, acks awaited, before the checkpoint moves
        state.total = page.count
        state.published += len(outgoing)
        state.skipped = dict(Counter(state.skipped) + skipped)
        state.next_page += 1
        summary.published_this_run += len(outgoing)
        summary.pages_this_run += 1
        last = not page.results or page.page * page.per_page >= page.count
        state.completed = last
        checkpoint.save(key, state)
        if progress:
            progress(
                ImportProgress(summary.author_id, state.published + sum(state.skipped.values()), page.count, page.page)
            )
        if last:
            break

    summary.total = state.total or 0
    summary.published = state.published
    summary.skipped = dict(state.skipped)
    summary.requests, summary.retries = client.requests_made, client.retries
    log.info("openalex_import_finished", summary=summary.line())
    return summary


def _map_page(publisher: EventPublisher, results: list, correlation: str) -> tuple[list[Outgoing], Counter[str]]:
    """Every work of a page -> its event, or a counted skip; a work listed twice once."""
    events: dict[str, Outgoing] = {}
    skipped: Counter[str] = Counter()
    for raw in results:
        try:
            mapped = map_work(raw)
        except Skip as skip:
            skipped[skip.reason] += 1
            log.warning("work_skipped", reason=skip.reason, detail=skip.detail)
            continue
        work_id = mapped.event.work.work_id
        for note in mapped.notes:
            log.warning("work_field_dropped", work_id=work_id, note=note)
        events[work_id] = publisher.outgoing(
            mapped.event,
            correlation_id=correlation,
            event_id=deterministic_event_id(SOURCE, work_id, mapped.updated_date),
        )
    return list(events.values()), skipped


def run_import_command(identifier: str, *, settings: ImporterSettings | None = None, fresh: bool = False) -> int:
    """What ``bzpeer import openalex <id>`` runs: import, print the summary, return an exit code
    (0 done, 1 OpenAlex failed - run it again to resume -, 2 bad identifier). ``fresh``
    forgets the checkpoint of this author and starts from page 1."""
    from importers.openalex_client import OpenAlexError
    from service_runtime.logging import configure_logging

    settings = settings or ImporterSettings()
    configure_logging(settings.service_name, settings.log_level)
    try:
        summary = asyncio.run(import_author(identifier, settings=settings, restart=fresh))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OpenAlexError as exc:
        print(f"error: {exc}\nrun the same command again to resume from the last completed page", file=sys.stderr)
        return 1
    print(summary.line())
    return 0
