"""The OpenAlex importer against real recorded responses (served on a local socket) and
the real broker: what lands on publications.ingested, faults, and resuming."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from contracts import Envelope
from contracts.topics import Topic
from importers.checkpoint import JsonFileCheckpoint
from importers.openalex import ImportProgress, ImportSummary, import_author
from importers.openalex_client import MalformedResponse
from importers.settings import ImporterSettings
from service_runtime.topic_reader import read_topic
from tests.conftest import Namespace, eventually
from tests.integration.importers.openalex_server import (
    DATA,
    MEARMAN,
    PRIEM_ORCID,
    Canned,
    OpenAlexStub,
    Request,
    any_works_page,
    works_page,
)

RECORDED = json.loads((DATA / f"works-author-{MEARMAN}-page-1.json").read_text())["results"]
PREPRINT, PUBLISHED = "openalex:W3188841554", "openalex:W3187234764"


@pytest.fixture
def stub():
    with OpenAlexStub() as server:
        yield server


def settings(ns: Namespace, **overrides) -> ImporterSettings:
    values = dict(
        openalex_per_page=50,
        openalex_requests_per_second=10,
        openalex_backoff_initial_s=0.01,
        openalex_mailto="importer@example.org",
    )
    values.update(overrides)
    return ns.settings("importer", cls=ImporterSettings, **values)


class Recorder:
    """Progress lines and the waits the importer asked for, recorded, not waited: the stub
    answers again at once, so the test asserts what the importer asked for."""

    def __init__(self) -> None:
        self.progress: list[ImportProgress] = []
        self.waits: list[float] = []

    def on_progress(self, p: ImportProgress) -> None:
        self.progress.append(p)

    async def record_wait(self, seconds: float) -> None:
        self.waits.append(seconds)


async def run_import(
    ns: Namespace,
    stub: OpenAlexStub,
    tmp_path: Path,
    identifier: str = MEARMAN,
    recorder: Recorder | None = None,
    **overrides,
) -> ImportSummary:
    recorder = recorder or Recorder()
    return await import_author(
        identifier,
        settings=settings(ns, **overrides),
        base_url=stub.base_url,
        checkpoint=JsonFileCheckpoint(tmp_path / "state.json"),
        progress=recorder.on_progress,
        pause=recorder.record_wait,
    )


async def published(ns: Namespace) -> list[tuple[str, Envelope]]:
    records = await read_topic(ns.infra["kafka"], ns.topic(Topic.PUBLICATIONS_INGESTED))
    return [(r.key.decode(), Envelope.model_validate_json(r.value)) for r in records]


def works_of(events: list[tuple[str, Envelope]]) -> dict[str, dict]:
    return {e.data["work"]["work_id"]: e.data for _, e in events if e.event_type == "WorkIngested"}


async def test_full_import_publishes_the_recorded_authors_nine_works(ns, stub, tmp_path) -> None:
    recorder = Recorder()
    summary = await run_import(ns, stub, tmp_path, recorder=recorder)

    assert (summary.total, summary.published, summary.skipped) == (9, 9, {})
    events = await published(ns)
    authors = [(k, e.data) for k, e in events if e.event_type == "AuthorImported"]
    assert authors == [
        (
            "openalex:A5017898742",
            {
                "author_id": "openalex:A5017898742",
                "display_name": "Joseph Mearman",
                "description": None,
                "affiliation": {"name": "Bangor University", "domains": []},
                "orcid": None,
                "open_to_collaborate": False,
                "source": "openalex",
            },
        )
    ]
    works = works_of(events)
    assert {w["work"]["title"] for w in works.values()} == {r["title"] for r in RECORDED}
    # Keyed by the first author, as the contract says.
    assert all(
        k == e.data["author_id"] == e.data["work"]["authors"][0]["author_id"]
        for k, e in events
        if e.event_type == "WorkIngested"
    )

    # A preprint and its published version: two works, not merged.
    preprint, version = works[PREPRINT]["work"], works[PUBLISHED]["work"]
    assert preprint["title"] == version["title"]
    assert (preprint["type"], preprint["venue"]) == ("preprint", "arXiv (Cornell University)")
    assert preprint["external_ids"] == {
        "doi": "10.48550/arxiv.2108.04680",
        "arxiv_id": "2108.04680",
        "openalex_id": "W3188841554",
    }
    assert version["external_ids"] == {"doi": "10.2312/cgvc.20211309", "arxiv_id": None, "openalex_id": "W3187234764"}
    # Abstracts rebuilt from the inverted index (4 of 9 have one).
    assert preprint["abstract"].startswith(
        "We believe that 3D visualisations should not be used alone; by coincidentally"
    )
    assert sum(1 for w in works.values() if w["work"]["abstract"]) == 4
    assert [a["display_name"] for a in preprint["authors"]][:2] == ["Jonathan C. Roberts", "Joseph Mearman"]
    assert preprint["authors"][0]["orcid"] == "0000-0001-7718-3181"

    # Progress: one line per page, works done / total.
    assert [(p.done, p.total) for p in recorder.progress] == [(9, 9)]
    # The polite pool: every request names a mailto.
    assert all(r.query.get("mailto") == "importer@example.org" for r in stub.requests)


async def test_import_by_orcid_with_the_recorded_empty_works_list(ns, stub, tmp_path) -> None:
    summary = await run_import(ns, stub, tmp_path, identifier=f"https://orcid.org/{PRIEM_ORCID}")

    assert (summary.author_id, summary.total, summary.published, summary.pages_this_run) == (
        "openalex:A5023888391",
        0,
        0,
        1,
    )
    assert stub.requests[0].path == f"/authors/https://orcid.org/{PRIEM_ORCID}"
    events = await published(ns)
    assert [(e.event_type, e.data["orcid"]) for _, e in events] == [("AuthorImported", PRIEM_ORCID)]


async def test_429_with_retry_after_is_honoured_then_the_import_succeeds(ns, stub, tmp_path) -> None:
    stub.fail_next(any_works_page, Canned(429, b'{"error": "slow down"}', {"Retry-After": "1"}))
    recorder = Recorder()
    summary = await run_import(ns, stub, tmp_path, recorder=recorder)

    assert (summary.published, summary.retries) == (9, 1)
    assert 1.0 in recorder.waits  # waited what the server asked, not its own backoff
    assert len(works_of(await published(ns))) == 9


async def test_5xx_is_retried_with_backoff_then_the_import_succeeds(ns, stub, tmp_path) -> None:
    stub.fail_next(any_works_page, Canned(503, b"upstream down"), Canned(500, b"oops"))
    summary = await run_import(ns, stub, tmp_path)

    assert (summary.published, summary.retries) == (9, 2)
    assert len(stub.works_requests()) == 3
    assert len(works_of(await published(ns))) == 9


@pytest.mark.parametrize(
    "body, error",
    [
        (b'{"meta": {"count": 9}, "results": [{"id": "https://openalex.org/W1"', "not JSON"),
        (b'{"meta": {"count": 9, "page": 2}, "group_by": []}', "no 'results'"),
    ],
)
async def test_a_malformed_page_fails_clearly_publishes_nothing_of_it_and_resumes(
    ns, stub, tmp_path, body, error
) -> None:
    stub.fail_next(works_page(2), Canned(200, body))
    with pytest.raises(MalformedResponse, match=f"page 2 of the works of {MEARMAN}.*{error}"):
        await run_import(ns, stub, tmp_path, openalex_per_page=5)

    assert len(works_of(await published(ns))) == 5  # page 1 only
    state = JsonFileCheckpoint(tmp_path / "state.json").load(MEARMAN)
    assert state is not None and state.next_page == 2

    summary = await run_import(ns, stub, tmp_path, openalex_per_page=5)
    assert (summary.resumed_from_page, summary.published, summary.published_this_run) == (2, 9, 4)
    events = await published(ns)
    assert Counter(e.data["work"]["work_id"] for _, e in events if e.event_type == "WorkIngested") == Counter(
        {f"openalex:{r['id'].rsplit('/', 1)[1]}": 1 for r in RECORDED}
    )


async def test_an_interrupted_import_resumes_and_publishes_every_work_exactly_once(ns, stub, tmp_path) -> None:
    released = stub.hang(works_page(2))
    recorder = Recorder()
    first = asyncio.create_task(run_import(ns, stub, tmp_path, recorder=recorder, openalex_per_page=5))

    async def works_requests() -> list[Request]:
        return stub.works_requests()

    await eventually(
        works_requests,
        until=lambda rs: len(rs) == 2,
        what="the importer asking for page 2",
    )
    first.cancel()  # the process stops mid-import
    with pytest.raises(asyncio.CancelledError):
        await first
    assert [(p.done, p.total) for p in recorder.progress] == [(5, 9)]
    assert len(works_of(await published(ns))) == 5
    released.set()

    summary = await run_import(ns, stub, tmp_path, openalex_per_page=5)

    assert (summary.resumed_from_page, summary.published, summary.published_this_run) == (2, 9, 4)
    events = await published(ns)
    ids = Counter(e.event_id for _, e in events)
    assert set(ids.values()) == {1}  # nothing published twice, not even the author record
    assert sorted(e.data["work"]["work_id"] for _, e in events if e.event_type == "WorkIngested") == sorted(
        f"openalex:{r['id'].rsplit('/', 1)[1]}" for r in RECORDED
    )
    assert [e.event_type for _, e in events].count("AuthorImported") == 1

    # A finished import starts over when run again, and re-publishes the same event ids.
    again = await run_import(ns, stub, tmp_path, openalex_per_page=5)
    assert (again.resumed_from_page, again.published_this_run) == (None, 9)
    assert {e.event_id for _, e in await published(ns)} == set(ids)
