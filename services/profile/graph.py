"""The research graph around authors: response models, node ids, cursors and the assembly
of a slice or a page of neighbours from what is stored. Pure: no driver.

Nothing here scans: an author's neighbourhood is kept at ingestion (its state's topics,
its entries newest first, and ``graph``: co-authors with shared works and institutions,
derived by ``derive.Tally``), a work's is its stored content, and a topic's or an
institution's authors come from an index, page by page.

Node ids are typed: ``author:<author id>``, ``work:<work id>``, ``topic:<name>``,
``institution:<institution id>``. Edges are undirected; each has one spelling (a
co-author edge goes from the lower author id), so expanding both ends of an edge names
the same edge.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from contracts.events.common import ID_PATTERN
from services.profile.derive import WorkEntry

NodeKind = Literal["author", "work", "topic", "institution"]
EdgeKind = Literal["coauthor", "authored", "topic", "affiliation"]
NODE_KINDS: tuple[NodeKind, ...] = ("author", "work", "topic", "institution")
TOPIC_MAX = 200
_ID = re.compile(ID_PATTERN)


class GraphNode(BaseModel):
    id: str = Field(description="typed id: author:<id>, work:<id>, topic:<name>, institution:<id>")
    kind: NodeKind
    label: str
    weight: int = Field(
        description="author: works (co-author: works shared with the author expanded); work: its authors; "
        "topic: works on it; institution: works from it"
    )
    close: bool = Field(default=False, description="a close collaborator of the author expanded")


class GraphEdge(BaseModel):
    source: str
    target: str
    kind: EdgeKind
    weight: int = Field(description="shared works (coauthor), works (topic, affiliation), 1 (authored)")


class GraphCounts(BaseModel):
    """How many of each the author has in all: the slice may show fewer (``limit``)."""

    coauthors: int
    works: int
    topics: int
    institutions: int


class GraphSlice(BaseModel):
    """``GET /authors/{id}/graph``: the author first, then its co-authors (most shared works
    first, close collaborators marked), most recent works, topics and institutions."""

    author_id: str
    limit: int = Field(description="at most this many co-authors, works and institutions; every topic")
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    counts: GraphCounts


class NeighbourPage(BaseModel):
    """``GET /graph/nodes/{node_id}/neighbours``: one page of a node's neighbours and the
    edges to them."""

    node: GraphNode
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


class BadNode(ValueError):
    pass


class BadCursor(ValueError):
    pass


def node_id(kind: NodeKind, key: str) -> str:
    return f"{kind}:{key}"


# What ``parse_node`` takes, for the OpenAPI document: every id it matches is a node id.
NODE_PATTERN = (
    r"^(?:(?:author|work|institution):[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}|topic:.*[^\s\x1c-\x1f\x85\ufeff].*)$"
)
NODE_MAX = len("topic:") + TOPIC_MAX


def parse_node(node: str) -> tuple[NodeKind, str]:
    kind, sep, key = node.partition(":")
    for known in NODE_KINDS:
        if kind == known and sep:
            if known == "topic":
                if len(key.strip()) > 0 and len(key) <= TOPIC_MAX:
                    return known, key.strip()
            elif _ID.match(key):
                return known, key
            break
    raise BadNode(
        f"node id {node[:80]!r} is not author:<id>, work:<id>, topic:<name> or institution:<id> (as the graph names it)"
    )


def edge(a: str, b: str, kind: EdgeKind, weight: int) -> GraphEdge:
    """The one spelling of an undirected edge: authors before what they touch, works before
    topics and institutions, and a co-author edge from the lower id."""
    if (kind == "coauthor" and b < a) or (kind != "coauthor" and _rank(b) < _rank(a)):
        a, b = b, a
    return GraphEdge(source=a, target=b, kind=kind, weight=weight)


def _rank(node: str) -> int:
    return NODE_KINDS.index(parse_node(node)[0])


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One neighbour in a node's ordered list: its section (co-authors, works...) and its
    key there (the keyset a cursor resumes after)."""

    section: int
    key: tuple[Any, ...]
    node: GraphNode
    edge: GraphEdge


# --- an author ---------------------------------------------------------------------------

COAUTHORS, WORKS, TOPICS, INSTITUTIONS = range(4)


def author_node(author_id: str, state: Mapping[str, Any]) -> GraphNode:
    return GraphNode(
        id=node_id("author", author_id), kind="author", label=state["display_name"], weight=state["works_count"]
    )


def author_neighbours(
    author_id: str, state: Mapping[str, Any], graph: Mapping[str, Any] | None, entries: Sequence[WorkEntry]
) -> list[list[Neighbour]]:
    """The author's neighbours by section, each in its order: co-authors (most shared works
    first), works (newest first; labelled by id until ``with_titles``), topics (most works
    first), institutions (most works first)."""
    me = node_id("author", author_id)
    graph = graph or {}
    coauthors = []
    for c in graph.get("coauthors", ()):
        n = GraphNode(
            id=node_id("author", c["author_id"]),
            kind="author",
            label=c["display_name"],
            weight=c["shared_works"],
            close=c["close"],
        )
        key = (-c["shared_works"], c["display_name"], c["author_id"])
        coauthors.append(Neighbour(COAUTHORS, key, n, edge(me, n.id, "coauthor", c["shared_works"])))
    works = []
    for e in entries:
        n = GraphNode(
            id=node_id("work", e["work_id"]), kind="work", label=e["work_id"], weight=1 + len(e["co_authors"])
        )
        works.append(Neighbour(WORKS, (-e["year"], e["work_id"]), n, edge(me, n.id, "authored", 1)))
    topics = []
    for t in state.get("topics", ()):
        n = GraphNode(id=node_id("topic", t["name"]), kind="topic", label=t["name"], weight=t["count"])
        topics.append(Neighbour(TOPICS, (-t["count"], t["name"]), n, edge(me, n.id, "topic", t["count"])))
    institutions = []
    for i in graph.get("institutions", ()):
        n = GraphNode(
            id=node_id("institution", i["institution_id"]),
            kind="institution",
            label=i["display_name"],
            weight=i["works"],
        )
        key = (-i["works"], i["display_name"], i["institution_id"])
        institutions.append(Neighbour(INSTITUTIONS, key, n, edge(me, n.id, "affiliation", i["works"])))
    return [coauthors, works, topics, institutions]


def author_slice(
    author_id: str,
    state: Mapping[str, Any],
    graph: Mapping[str, Any] | None,
    entries: Sequence[WorkEntry],
    limit: int,
    titles: Mapping[str, str],
) -> GraphSlice:
    """The slice: the author, then at most ``limit`` co-authors, most recent works and
    institutions, and every topic."""
    sections = author_neighbours(author_id, state, graph, entries)
    shown = [
        *sections[COAUTHORS][:limit],
        *sections[WORKS][:limit],
        *sections[TOPICS],
        *sections[INSTITUTIONS][:limit],
    ]
    shown = with_titles(shown, titles)
    counts = GraphCounts(
        coauthors=len(sections[COAUTHORS]),
        works=len(sections[WORKS]),
        topics=len(sections[TOPICS]),
        institutions=len(sections[INSTITUTIONS]),
    )
    return GraphSlice(
        author_id=author_id,
        limit=limit,
        nodes=[author_node(author_id, state), *(n.node for n in shown)],
        edges=[n.edge for n in shown],
        counts=counts,
    )


def work_ids(neighbours: Iterable[Neighbour]) -> list[str]:
    return [parse_node(n.node.id)[1] for n in neighbours if n.node.kind == "work"]


def with_titles(neighbours: Sequence[Neighbour], titles: Mapping[str, str]) -> list[Neighbour]:
    """Work nodes labelled by their titles (read for the works shown only)."""
    out = []
    for n in neighbours:
        if n.node.kind == "work" and (title := titles.get(parse_node(n.node.id)[1])):
            n = Neighbour(n.section, n.key, n.node.model_copy(update={"label": title}), n.edge)
        out.append(n)
    return out


# --- a work ------------------------------------------------------------------------------


def work_node(work: Mapping[str, Any]) -> GraphNode:
    return GraphNode(id=node_id("work", work["work_id"]), kind="work", label=work["title"], weight=len(work["authors"]))


def work_neighbours(work: Mapping[str, Any]) -> list[list[Neighbour]]:
    """A work's authors (in the author list's order), topics and institutions (in the
    order the authorships name them), each once."""
    me = node_id("work", work["work_id"])
    authors = [
        Neighbour(
            0,
            (i,),
            n := GraphNode(id=node_id("author", a["author_id"]), kind="author", label=a["display_name"], weight=1),
            edge(n.id, me, "authored", 1),
        )
        for i, a in enumerate(work["authors"])
    ]
    topics = []
    for i, name in enumerate(dict.fromkeys(" ".join(t.split()) for t in work.get("topics", ()))):
        n = GraphNode(id=node_id("topic", name), kind="topic", label=name, weight=1)
        topics.append(Neighbour(1, (i,), n, edge(me, n.id, "topic", 1)))
    named: dict[str, str] = {}
    for a in work["authors"]:
        for inst in a.get("institutions", ()):
            named.setdefault(inst["institution_id"], inst["display_name"])
    institutions = []
    for i, (inst_id, name) in enumerate(named.items()):
        n = GraphNode(id=node_id("institution", inst_id), kind="institution", label=name, weight=1)
        institutions.append(Neighbour(2, (i,), n, edge(me, n.id, "affiliation", 1)))
    return [authors, topics, institutions]


# --- a topic or an institution: its authors, by author id --------------------------------


def topic_author(topic: str, doc: Mapping[str, Any]) -> Neighbour:
    """An author found by the topics index, weighted by its works on the topic."""
    state = doc.get("state") or {}
    count = next((t["count"] for t in state.get("topics", ()) if t["name"] == topic), 1)
    n = GraphNode(
        id=node_id("author", doc["_id"]), kind="author", label=state.get("display_name", doc["_id"]), weight=count
    )
    return Neighbour(0, (doc["_id"],), n, edge(n.id, node_id("topic", topic), "topic", count))


def institution_author(institution_id: str, doc: Mapping[str, Any]) -> tuple[Neighbour, str]:
    """An author found by the institutions index, weighted by its works from there; and the
    institution's name as that author's works give it."""
    held = next(i for i in (doc.get("graph") or {}).get("institutions", ()) if i["institution_id"] == institution_id)
    state = doc.get("state") or {}
    n = GraphNode(
        id=node_id("author", doc["_id"]),
        kind="author",
        label=state.get("display_name", doc["_id"]),
        weight=held["works"],
    )
    return Neighbour(
        0, (doc["_id"],), n, edge(n.id, node_id("institution", institution_id), "affiliation", held["works"])
    ), held["display_name"]


# --- pages -------------------------------------------------------------------------------


def encode_cursor(node: str, last: Neighbour) -> str:
    """Opaque to clients: the node it pages, and the section and key of the last neighbour
    shown (the next page starts strictly after it, so neighbours added meanwhile never
    shift a later page)."""
    raw = json.dumps({"node": node, "section": last.section, "after": list(last.key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(node: str, cursor: str) -> tuple[int, tuple[Any, ...]]:
    """The section and key a cursor resumes after; ``BadCursor`` if it is malformed or was
    given for another node."""
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        section, after = doc["section"], doc["after"]
        valid = (
            isinstance(doc, dict)
            and set(doc) == {"node", "section", "after"}
            and isinstance(section, int)
            and 0 <= section < 4
            and isinstance(after, list)
            and 0 < len(after) <= 3
            and all(isinstance(k, str | int) and not isinstance(k, bool) for k in after)
        )
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        valid = False
    if not valid:
        raise BadCursor("cursor is malformed: pass back the next_cursor of a previous page")
    if doc["node"] != node:
        raise BadCursor("cursor belongs to another node: pass back the next_cursor of this node's previous page")
    return section, tuple(after)


def page_of(
    node: str, sections: Sequence[Sequence[Neighbour]], cursor: str | None, limit: int
) -> tuple[list[Neighbour], str | None]:
    """The ``limit`` neighbours after the cursor (sections in order, each in its own order)
    and the cursor to the next page."""
    rest: list[Neighbour] = []
    if cursor is None:
        rest = [n for s in sections for n in s]
    else:
        section, after = decode_cursor(node, cursor)
        if section >= len(sections) or any(_shape(n.key) != _shape(after) for n in sections[section][:1]):
            raise BadCursor("cursor is malformed: pass back the next_cursor of a previous page")
        rest = [n for n in sections[section] if n.key > after]
        rest += [n for s in sections[section + 1 :] for n in s]
    shown = rest[:limit]
    return shown, encode_cursor(node, shown[-1]) if len(rest) > limit else None


def _shape(key: tuple[Any, ...]) -> tuple[type, ...]:
    return tuple(type(k) for k in key)


def neighbour_page(node: GraphNode, shown: Sequence[Neighbour], next_cursor: str | None) -> NeighbourPage:
    return NeighbourPage(
        node=node, nodes=[n.node for n in shown], edges=[n.edge for n in shown], next_cursor=next_cursor
    )
