"""The research graph over HTTP, kept by the profile service from publications.ingested on
the real broker and store: the seed's slice, a new work moving it, and any node expanded
page by page."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from contracts import Envelope
from contracts.events.publications import Work, WorkIngested
from contracts.topics import Topic
from service_runtime.service import Service
from services.profile.seed import SEED_AUTHOR_ID, load_seed
from tests.conftest import Namespace, eventually
from tests.integration.profile.test_profile_service import handler_of, incoming, ingested
from tests.integration.profile.test_profile_service import work as pw

SEED_NODE = f"author:{SEED_AUTHOR_ID}"
CLOSE = ["Mingxing Tan", "Hanxiao Liu", "Minh-Thang Luong", "Zihang Dai"]


async def publish(ns: Namespace, work: dict[str, Any]) -> None:
    event = WorkIngested(author_id=work["authors"][0]["author_id"], work=Work(**work), source="test")
    producer = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"], enable_idempotence=True)
    await producer.start()
    try:
        env = Envelope.wrap(event, producer="test")
        await producer.send_and_wait(
            ns.topic(Topic.PUBLICATIONS_INGESTED), env.to_bytes(), key=event.author_id.encode()
        )
    finally:
        await producer.stop()


async def slice_of(http: httpx.AsyncClient, author_id: str, limit: int = 40) -> dict[str, Any] | None:
    r = await http.get(f"/authors/{author_id}/graph", params={"limit": limit})
    return r.json() if r.status_code == 200 else None


async def every_neighbour(http: httpx.AsyncClient, node: str, limit: int) -> list[dict[str, Any]]:
    """All of a node's neighbours, page by page."""
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = await http.get(f"/graph/nodes/{node}/neighbours", params={"cursor": cursor, "limit": limit})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["nodes"]) <= limit and len(body["edges"]) == len(body["nodes"])
        seen += body["nodes"]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


def weight(graph: dict[str, Any], a: str, b: str, kind: str) -> int:
    """The weight of the edge between two nodes (an edge has one spelling, either way round)."""
    (found,) = [e["weight"] for e in graph["edges"] if {e["source"], e["target"]} == {a, b} and e["kind"] == kind]
    return int(found)


def labels(graph: dict[str, Any], kind: str) -> list[str]:
    return [n["label"] for n in graph["nodes"] if n["kind"] == kind]


async def test_the_seed_slice_then_a_new_work_moves_it_and_any_node_expands_page_by_page(
    ns: Namespace, http: httpx.AsyncClient
) -> None:
    await load_seed(ns.infra["kafka"], topic_prefix=ns.topic_prefix)
    seed = await eventually(
        lambda: slice_of(http, SEED_AUTHOR_ID),
        until=lambda g: g is not None and g["counts"]["works"] == 28,
        timeout=60,
        what="the seed's graph with its 28 works",
    )
    assert seed is not None
    assert seed["nodes"][0] == {"id": SEED_NODE, "kind": "author", "label": "Quoc V. Le", "weight": 28, "close": False}
    close = [n for n in seed["nodes"] if n["kind"] == "author" and n["close"]]
    assert [n["label"] for n in close] == CLOSE
    assert len(labels(seed, "topic")) == seed["counts"]["topics"] == 9
    assert len(labels(seed, "work")) == 28 and labels(seed, "work")[0] == (
        "Symbol tuning improves in-context learning in language models"
    )
    assert weight(seed, SEED_NODE, "author:seed:mingxing-tan", "coauthor") == 7
    coauthors = len(labels(seed, "author")) - 1
    assert coauthors == min(40, seed["counts"]["coauthors"])
    small = await slice_of(http, SEED_AUTHOR_ID, limit=2)
    assert small is not None and labels(small, "author") == ["Quoc V. Le", *CLOSE[:2]]
    assert len(labels(small, "work")) == 2 and len(labels(small, "topic")) == 9

    # A new work naming institutions: the slice moves with it, nobody asks for a recount.
    bangor = {"institution_id": "openalex:I161548249", "display_name": "Bangor University"}
    await publish(
        ns,
        {
            "work_id": "graph-w1",
            "type": "article",
            "year": 2024,
            "title": "Graphs of collaboration",
            "topics": ["Research networks"],
            "authors": [
                {"author_id": SEED_AUTHOR_ID, "display_name": "Quoc V. Le", "institutions": [bangor]},
                {"author_id": "graph-ada", "display_name": "Ada Graph", "institutions": [bangor]},
                {"author_id": "seed:mingxing-tan", "display_name": "Mingxing Tan"},
            ],
        },
    )
    moved = await eventually(
        lambda: slice_of(http, SEED_AUTHOR_ID),
        until=lambda g: g is not None and g["counts"]["works"] == 29,
        what="the new work in the graph",
    )
    assert moved is not None
    assert labels(moved, "work")[0] == "Graphs of collaboration"
    assert labels(moved, "institution") == ["Bangor University"]
    assert "Research networks" in labels(moved, "topic") and "Ada Graph" in labels(moved, "author")
    assert weight(moved, SEED_NODE, "author:seed:mingxing-tan", "coauthor") == 8
    assert weight(moved, SEED_NODE, "institution:openalex:I161548249", "affiliation") == 1

    # Expanding: the institution and the topic know their authors; the work its authors.
    at_bangor = await every_neighbour(http, "institution:openalex:I161548249", limit=1)
    assert sorted(n["id"] for n in at_bangor) == sorted([SEED_NODE, "author:graph-ada"])
    on_topic = await every_neighbour(http, "topic:Research networks", limit=10)
    assert sorted(n["label"] for n in on_topic) == ["Ada Graph", "Mingxing Tan", "Quoc V. Le"]
    on_work = await every_neighbour(http, "work:graph-w1", limit=10)
    assert [n["id"] for n in on_work] == [
        SEED_NODE,
        "author:graph-ada",
        "author:seed:mingxing-tan",
        "topic:Research networks",
        "institution:openalex:I161548249",
    ]
    # A close collaborator, page by page: every neighbour once, the seed author among them.
    tan = await every_neighbour(http, "author:seed:mingxing-tan", limit=5)
    ids = [n["id"] for n in tan]
    assert len(ids) == len(set(ids)) and SEED_NODE in ids and "work:graph-w1" in ids
    first = (await http.get("/graph/nodes/author:seed:mingxing-tan/neighbours", params={"limit": 200})).json()
    assert [n["id"] for n in first["nodes"]] == ids and first["next_cursor"] is None
    assert first["node"]["label"] == "Mingxing Tan"


async def test_unknown_nodes_and_forged_cursors_are_refused_clearly(ns: Namespace, http: httpx.AsyncClient) -> None:
    await publish(
        ns,
        {
            "work_id": "w-x",
            "type": "article",
            "year": 2021,
            "title": "T",
            "authors": [{"author_id": "xa", "display_name": "Xa"}, {"author_id": "xb", "display_name": "Xb"}],
        },
    )
    await eventually(lambda: slice_of(http, "xa"), until=lambda g: g is not None, what="xa's graph")
    page = (await http.get("/graph/nodes/author:xa/neighbours", params={"limit": 1})).json()
    assert page["next_cursor"] is not None
    for path, status in (
        ("/authors/nobody/graph", 404),
        ("/graph/nodes/author:nobody/neighbours", 404),
        ("/graph/nodes/topic:No such topic/neighbours", 404),
        ("/graph/nodes/person:xa/neighbours", 422),
        ("/authors/xa/graph?limit=0", 422),
    ):
        assert (await http.get(path)).status_code == status, path
    # A cursor the node did not give (garbage, cut short, another node's) is past its end.
    cut_short, given = page["next_cursor"][:-4], page["next_cursor"]
    for node, cursor in (("author:xa", "garbage"), ("author:xa", cut_short), ("author:xb", given)):
        r = await http.get(f"/graph/nodes/{node}/neighbours", params={"cursor": cursor})
        assert r.status_code == 200, r.text
        assert (r.json()["node"]["id"], r.json()["nodes"], r.json()["next_cursor"]) == (node, [], None)
    schema = (await http.get("/openapi.json")).json()
    assert {"GraphSlice", "NeighbourPage", "GraphNode", "GraphEdge"} <= set(schema["components"]["schemas"])


async def test_a_work_read_between_its_authors_and_its_own_write_is_shown_by_its_title(
    profile: Service, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler writes the authors, then the work: a graph read in between finds the work
    in the author's entries and not yet in ``works``, and still shows its title."""
    handler = handler_of(profile)

    async def dies(*_: object, **__: object) -> None:
        raise RuntimeError("the process dies before the work is written")

    monkeypatch.setattr(handler.store, "write_works", dies)
    with pytest.raises(RuntimeError):
        await handler.write([incoming(ingested(pw("gap-w1", "gap-ada", "gap-bob", title="Between two writes")))])
    assert await handler.store.work_content("gap-w1") is None

    in_slice = await slice_of(http, "gap-ada")
    assert in_slice is not None and labels(in_slice, "work") == ["Between two writes"]
    r = await http.get("/graph/nodes/author:gap-bob/neighbours")
    assert r.status_code == 200 and [n["label"] for n in r.json()["nodes"] if n["kind"] == "work"] == [
        "Between two writes"
    ]
