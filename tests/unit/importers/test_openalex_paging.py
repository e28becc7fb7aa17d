"""The import loop on in-memory inputs: skips counted in the summary, OpenAlex's basic
paging limit, and the checkpoint written per published page."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import httpx

from importers.checkpoint import AuthorProgress, MemoryCheckpoint
from importers.openalex import ImportProgress, import_author, stderr_progress
from importers.settings import ImporterSettings
from service_runtime.publishing import EventPublisher, Outgoing

DATA = Path(__file__).parents[2] / "integration" / "importers" / "data"
AUTHOR = json.loads((DATA / "author-A5017898742.json").read_text())
# A real recorded work, less the fields the mapping never reads (keeps 10,000 copies cheap).
WORK = {
    k: v
    for k, v in json.loads((DATA / "works-author-A5017898742-page-1.json").read_text())["results"][0].items()
    if k
    in {
        "id",
        "doi",
        "title",
        "publication_year",
        "type",
        "type_crossref",
        "authorships",
        "primary_location",
        "locations",
        "topics",
        "abstract_inverted_index",
        "updated_date",
    }
}


class RecordingPublisher(EventPublisher):
    def __init__(self) -> None:
        super().__init__(broker=None, producer_name="importer")  # type: ignore[arg-type]
        self.batches: list[list[Outgoing]] = []

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        self.batches.append(list(messages))


def openalex(count: int, bad_every: int = 0, sample: int | None = None) -> httpx.MockTransport:
    """A works list of ``count`` works; every ``bad_every``-th one has no authors; with
    ``sample``, each page holds only its first ``sample`` works (keeps huge lists cheap)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/authors/"):
            return httpx.Response(200, json=AUTHOR)
        page, per_page = int(request.url.params["page"]), int(request.url.params["per_page"])
        results = []
        first = (page - 1) * per_page
        for i in range(first, min(first + (sample or per_page), page * per_page, count)):
            w = copy.deepcopy(WORK)
            w["id"] = f"https://openalex.org/W{i + 1}"
            if bad_every and i % bad_every == 0:
                w["authorships"] = []
            results.append(w)
        return httpx.Response(200, json={"meta": {"count": count}, "results": results})

    return httpx.MockTransport(handle)


async def run(
    transport: httpx.MockTransport, checkpoint: MemoryCheckpoint, progress: list, per_page: int, restart: bool = False
):
    publisher = RecordingPublisher()

    async def no_wait(_: float) -> None:
        return None

    summary = await import_author(
        "A5017898742",
        settings=ImporterSettings(openalex_per_page=per_page, openalex_requests_per_second=100),
        base_url="http://openalex.test",
        checkpoint=checkpoint,
        progress=progress.append,
        publisher=publisher,
        pause=no_wait,
        transport=transport,
        restart=restart,
    )
    return summary, publisher


async def test_skipped_works_are_counted_and_never_published() -> None:
    progress: list[ImportProgress] = []
    summary, publisher = await run(openalex(250, bad_every=10), MemoryCheckpoint(), progress, per_page=100)

    assert (summary.total, summary.published, summary.skipped) == (250, 225, {"no authors": 25})
    assert [len(b) for b in publisher.batches] == [1, 90, 90, 45]  # the author, then one batch per page
    assert [(p.done, p.total, p.page) for p in progress] == [(100, 250, 1), (200, 250, 2), (250, 250, 3)]
    assert "225 of 250 works published" in summary.line() and "25 no authors" in summary.line()


async def test_basic_paging_stops_at_ten_thousand_works_and_says_so() -> None:
    checkpoint = MemoryCheckpoint()
    summary, _ = await run(openalex(10_250, sample=1), checkpoint, [], per_page=100)

    # Page 100 of 100 reaches work 10,000: OpenAlex serves no page 101 without cursor paging.
    assert (summary.published, summary.total, summary.pages_this_run, summary.truncated) == (100, 10_250, 100, True)
    assert "paging limit" in summary.line()
    state = checkpoint.load("A5017898742")
    assert state is not None and state.completed  # a re-run starts over instead of looping at the limit


async def test_a_checkpoint_is_resumed_unless_a_restart_is_asked_for() -> None:
    checkpoint = MemoryCheckpoint()
    checkpoint.save("A5017898742", AuthorProgress(per_page=100, next_page=3, published=200, author_published=True))
    resumed, publisher = await run(openalex(250), checkpoint, [], per_page=100)
    assert (resumed.resumed_from_page, resumed.published_this_run, resumed.published) == (3, 50, 250)
    assert [len(b) for b in publisher.batches] == [50]

    checkpoint.save("A5017898742", AuthorProgress(per_page=100, next_page=3, published=200, author_published=True))
    restarted, _ = await run(openalex(250), checkpoint, [], per_page=100, restart=True)
    assert (restarted.resumed_from_page, restarted.published_this_run, restarted.published) == (None, 250, 250)


def test_progress_line_goes_to_stderr(capsys) -> None:
    stderr_progress(ImportProgress("openalex:A5017898742", done=300, total=1250, page=3))
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "openalex:A5017898742: 300/1250 works (page 3)\n")
