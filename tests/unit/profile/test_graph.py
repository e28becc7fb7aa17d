"""The research graph's pure side: the neighbourhood kept with each author, the slice,
pages of neighbours and their cursors."""

from __future__ import annotations

import re
from typing import Any

import pytest

from contracts.events.publications import Work
from services.profile import graph
from services.profile.derive import Tally, newest_first, work_entry
from services.profile.ingest import plan_batch
from services.profile.seed import SEED_AUTHOR_ID, seed_envelopes
from services.profile.store import author_fields
from tests.unit.profile.test_profile_domain import decoded, ingested

BANGOR = {"institution_id": "openalex:I1", "display_name": "Bangor University"}
CERN = {"institution_id": "openalex:I2", "display_name": "CERN"}


def work(work_id: str, year: int, authors: list[tuple[str, list[dict[str, str]]]], topics: list[str]) -> Work:
    return Work(
        work_id=work_id,
        type="article",
        year=year,
        title=f"Title of {work_id}",
        topics=topics,
        authors=[{"author_id": a, "display_name": a.title(), "institutions": i} for a, i in authors],
    )


WORKS = [
    work("w1", 2020, [("ada", [BANGOR]), ("bob", [CERN])], ["Speech"]),
    work("w2", 2021, [("ada", [BANGOR, CERN]), ("bob", []), ("cyd", [])], ["Speech", "Vision"]),
    work("w3", 2022, [("cyd", []), ("ada", [])], ["Vision"]),
]


def ada_graph(works: list[Work], min_shared: int = 2) -> dict[str, Any]:
    return Tally([work_entry(w, "ada", "f") for w in works], min_shared).graph()


def test_an_author_keeps_its_co_authors_with_shared_works_and_its_own_institutions() -> None:
    kept = ada_graph(WORKS)
    assert kept["coauthors"] == [
        {"author_id": "bob", "display_name": "Bob", "shared_works": 2, "close": True},
        {"author_id": "cyd", "display_name": "Cyd", "shared_works": 2, "close": True},
    ]
    # Institutions of ada's own authorships only (bob's CERN on w1 is not ada's).
    assert kept["institutions"] == [
        {"institution_id": "openalex:I1", "display_name": "Bangor University", "works": 2},
        {"institution_id": "openalex:I2", "display_name": "CERN", "works": 1},
    ]
    assert ada_graph(list(reversed(WORKS))) == kept, "the same whatever order the works came in"


def test_a_work_dropped_leaves_the_graph_as_a_recount() -> None:
    entries = [work_entry(w, "ada", "f") for w in WORKS]
    tally = Tally(list(entries), 2)
    tally.remove(entries[1], [entries[0], entries[2]])
    assert tally.graph() == ada_graph([WORKS[0], WORKS[2]])
    assert tally.graph()["institutions"] == [
        {"institution_id": "openalex:I1", "display_name": "Bangor University", "works": 1}
    ]


def test_a_work_without_institutions_keeps_the_entry_it_had() -> None:
    entry = work_entry(WORKS[2], "ada", "f")
    assert "institutions" not in entry, "entries stored before institutions existed stay equal"


def test_the_seed_slice_has_the_four_close_collaborators_by_name_and_the_nine_topics() -> None:
    plan = plan_batch([decoded(e) for e in seed_envelopes()], {}, {}, min_shared_works=5)
    record = plan.authors[SEED_AUTHOR_ID]
    doc = author_fields(record, published=True)
    sliced = graph.author_slice(SEED_AUTHOR_ID, doc["state"], doc["graph"], doc["works"], 40, {})
    assert sliced.nodes[0].id == f"author:{SEED_AUTHOR_ID}" and sliced.nodes[0].label == "Quoc V. Le"
    close = [n.label for n in sliced.nodes if n.kind == "author" and n.close]
    assert close == ["Mingxing Tan", "Hanxiao Liu", "Minh-Thang Luong", "Zihang Dai"]
    assert len([n for n in sliced.nodes if n.kind == "topic"]) == sliced.counts.topics == 9
    assert len([n for n in sliced.nodes if n.kind == "work"]) == sliced.counts.works == 28
    coauthors = {e.target if e.source == f"author:{SEED_AUTHOR_ID}" else e.source: e.weight for e in sliced.edges}
    assert coauthors["author:seed:mingxing-tan"] == 7
    small = graph.author_slice(SEED_AUTHOR_ID, doc["state"], doc["graph"], doc["works"], 3, {})
    assert [n.kind for n in small.nodes].count("work") == 3 and [n.kind for n in small.nodes].count("author") == 4
    newest = newest_first(doc["works"])[0]["work_id"]
    assert next(n.id for n in small.nodes if n.kind == "work") == f"work:{newest}"


def test_an_edge_has_one_spelling_whichever_end_names_it() -> None:
    assert graph.edge("author:b", "author:a", "coauthor", 2) == graph.edge("author:a", "author:b", "coauthor", 2)
    assert graph.edge("topic:Speech", "work:w1", "topic", 1).source == "work:w1"
    assert graph.edge("work:w1", "author:a", "authored", 1).source == "author:a"


def neighbours_of_ada() -> list[list[graph.Neighbour]]:
    plan = plan_batch([ingested(w) for w in WORKS], {}, {}, min_shared_works=2)
    doc = author_fields(plan.authors["ada"], published=True)
    return graph.author_neighbours("ada", doc["state"], doc["graph"], doc["works"])


def test_pages_of_neighbours_name_each_once_across_sections() -> None:
    sections = neighbours_of_ada()
    seen: list[str] = []
    cursor = None
    while True:
        shown, cursor = graph.page_of("author:ada", sections, cursor, 2)
        seen += [n.node.id for n in shown]
        if cursor is None:
            break
    assert seen == [
        "author:bob",
        "author:cyd",
        "work:w3",
        "work:w2",
        "work:w1",
        "topic:Speech",
        "topic:Vision",
        "institution:openalex:I1",
        "institution:openalex:I2",
    ]


def test_a_cursor_is_checked_before_it_is_used() -> None:
    sections = neighbours_of_ada()
    _, cursor = graph.page_of("author:ada", sections, None, 2)
    assert cursor is not None
    with pytest.raises(graph.BadCursor, match="another node"):
        graph.page_of("author:bob", sections, cursor, 2)
    for bad in ("not-a-cursor", "e30", graph.encode_cursor("author:ada", sections[2][0])[:-3]):
        with pytest.raises(graph.BadCursor):
            graph.page_of("author:ada", sections, bad, 2)
    # A key of another shape than its section's (a works key in the co-authors section).
    forged = graph.encode_cursor(
        "author:ada", graph.Neighbour(0, (-2021, "w2"), sections[1][0].node, sections[1][0].edge)
    )
    with pytest.raises(graph.BadCursor):
        graph.page_of("author:ada", sections, forged, 2)


@pytest.mark.parametrize("node", ["", "author:", "person:ada", "author:bad id", "topic:  ", "Speech"])
def test_a_node_id_names_its_kind(node: str) -> None:
    with pytest.raises(graph.BadNode):
        graph.parse_node(node)
    assert not re.fullmatch(graph.NODE_PATTERN, node)  # refused by the route's own validation


@pytest.mark.parametrize(
    "node", ["author:seed:quoc-v-le", "work:W1", "institution:I1", "topic:Speech", "topic: padded"]
)
def test_every_node_id_the_openapi_pattern_allows_is_one(node: str) -> None:
    assert re.fullmatch(graph.NODE_PATTERN, node)
    assert graph.parse_node(node)[1] == node.partition(":")[2].strip()


def test_a_work_neighbours_its_authors_topics_and_the_institutions_of_its_authorships() -> None:
    content = WORKS[1].model_dump(mode="json")
    shown, cursor = graph.page_of("work:w2", graph.work_neighbours(content), None, 50)
    assert cursor is None
    assert [n.node.id for n in shown] == [
        "author:ada",
        "author:bob",
        "author:cyd",
        "topic:Speech",
        "topic:Vision",
        "institution:openalex:I1",
        "institution:openalex:I2",
    ]
    assert graph.work_node(content).label == "Title of w2"
