"""HTTP for the web app: the profile page, works paging, name search, the work import, the
research graph and the owner's own edit."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import Response
from pydantic import BaseModel

from contracts.events.common import ID_PATTERN
from contracts.events.publications import Work, WorkIngested
from service_runtime.auth import IMPORTER, CurrentUser, require_role
from service_runtime.problems import problem_responses
from service_runtime.publishing import EventPublisher
from services.profile import graph
from services.profile.derive import fold_name
from services.profile.owner_edit import NOT_OWNER, Editable, ProfileEdit, may_edit
from services.profile.page import (
    CURSOR_PATTERN,
    AuthorFound,
    AuthorPage,
    AuthorSearch,
    AuthorWorksPage,
    author_page_json,
    page_slice,
    stored_cursor,
)
from services.profile.store import ProfileStore

router = APIRouter(tags=["profile"])

AuthorId = Annotated[str, Path(pattern=ID_PATTERN, description="the author record's id, e.g. seed:quoc-v-le")]
NOT_FOUND = problem_responses(404)
WorksCursor = Annotated[
    str | None,
    Query(pattern=CURSOR_PATTERN, description="next_cursor of the previous page: <year>:<work id> of its last work"),
]


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in a worker
# thread, and handing each request to a thread and back was a sixth of a page's CPU.
async def get_store(request: Request) -> ProfileStore:
    store: ProfileStore = request.app.state.profile_store
    return store


async def get_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.service.publisher
    return publisher


Store = Annotated[ProfileStore, Depends(get_store)]


def _not_found(author_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no author record with id {author_id!r}")


def _json(model: AuthorPage | AuthorWorksPage | AuthorSearch) -> Response:
    # Serialized by pydantic straight to JSON: FastAPI's recursive encoder of the returned
    # value cost as much as the reads. ``response_model`` keeps the OpenAPI schema exact.
    return Response(model.model_dump_json(), media_type="application/json")


@router.get("/authors/{author_id}", summary="The author's profile page", response_model=AuthorPage, responses=NOT_FOUND)
async def get_author(author_id: AuthorId, request: Request) -> Response:
    # The store and the page size from the app's state rather than two dependencies: the
    # page is the hot path, and each dependency FastAPI resolves adds to its CPU.
    service = request.app.state.service
    store: ProfileStore = request.app.state.profile_store
    page_works: int = service.settings.page_works
    # The author and its standing at once: two round trips in the time of one.
    doc, standing = await asyncio.gather(store.page_source(author_id), store.standing_of(author_id))
    if doc is None or "state" not in doc:
        raise _not_found(author_id)
    first = doc.get("first_page")
    readable, next_cursor = stored_cursor(first["next_cursor"]) if first is not None else (False, None)
    if readable and first is not None and first["limit"] == page_works:
        # The usual page: its first works were cut at ingestion.
        works = first["works"]
    else:  # cut for another page size: from the entries and the works
        shown, next_cursor = page_slice(await store.entries_of(author_id) or [], None, page_works)
        found = await store.work_contents(e["work_id"] for e in shown)
        works = [found[e["work_id"]] for e in shown if e["work_id"] in found]
    # The JSON of the response model, without building it: see page.author_page_json.
    return Response(author_page_json(doc["state"], standing, works, next_cursor), media_type="application/json")


@router.get(
    "/authors/{author_id}/works",
    summary="The author's works, newest first, by cursor",
    response_model=AuthorWorksPage,
    responses=NOT_FOUND,
)
async def get_author_works(
    author_id: AuthorId,
    store: Store,
    cursor: WorksCursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    entries = await store.entries_of(author_id)
    if entries is None:
        raise _not_found(author_id)
    shown, next_cursor = page_slice(entries, cursor, limit)
    found = await store.work_contents(e["work_id"] for e in shown)
    items = [found[e["work_id"]] for e in shown if e["work_id"] in found]
    return _json(AuthorWorksPage.model_validate({"author_id": author_id, "items": items, "next_cursor": next_cursor}))


@router.get(
    "/authors",
    summary="Find authors by name prefix (case- and accent-insensitive)",
    response_model=AuthorSearch,
)
async def search_authors(
    store: Store,
    q: Annotated[str, Query(min_length=1, max_length=100, description="start of a name or of any of its words")],
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
) -> Response:
    # A query with no letter or digit names no one: an empty list, like any other miss.
    folded = fold_name(q)
    found = [AuthorFound.model_validate(d) for d in await store.search(folded, limit)] if folded else []
    return _json(AuthorSearch(query=q, items=found))


class ImportAccepted(BaseModel):
    event_id: str
    work_id: str
    author_id: str


@router.post(
    "/works",
    response_model=ImportAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Import a work (role: importer)",
    responses=problem_responses(403),
)
async def import_work(
    work: Work, user: CurrentUser, publisher: Annotated[EventPublisher, Depends(get_publisher)]
) -> ImportAccepted:
    """Validates the work and publishes ``WorkIngested`` to ``publications.ingested`` (keyed
    by the first author); the record changes when the profile consumer handles it."""
    require_role(user, IMPORTER)
    event = WorkIngested(author_id=work.authors[0].author_id, work=work, source="http-import")
    out = publisher.outgoing(event, correlation_id=f"http-import:{user.user_id}")
    await publisher.publish([out])
    return ImportAccepted(event_id=str(out.envelope.event_id), work_id=work.work_id, author_id=event.author_id)


# --- the research graph ------------------------------------------------------------------

GRAPH_LIMIT = Query(ge=1, le=200, description="at most this many co-authors, works and institutions")
NO_NODE = problem_responses(404)


@router.get(
    "/authors/{author_id}/graph",
    summary="The research graph around the author",
    response_model=graph.GraphSlice,
    responses=NOT_FOUND,
)
async def get_author_graph(author_id: AuthorId, store: Store, limit: Annotated[int, GRAPH_LIMIT] = 40) -> Response:
    doc = await store.graph_source(author_id)
    if doc is None or "state" not in doc:
        raise _not_found(author_id)
    entries = doc.get("works") or []
    titles = await store.work_titles((e["work_id"] for e in entries[:limit]), doc)
    slice_ = graph.author_slice(author_id, doc["state"], doc.get("graph"), entries, limit, titles)
    return Response(slice_.model_dump_json(), media_type="application/json")


@router.get(
    "/graph/nodes/{node_id:path}/neighbours",
    summary="A node's neighbours in the research graph, by cursor",
    response_model=graph.NeighbourPage,
    responses=NO_NODE,
)
async def get_neighbours(
    node_id: Annotated[
        str,
        Path(
            max_length=graph.NODE_MAX,
            pattern=graph.NODE_PATTERN,
            description="a node id as the graph names it, e.g. author:seed:quoc-v-le",
        ),
    ],
    store: Store,
    cursor: Annotated[
        str | None,
        Query(
            max_length=1200,
            description="next_cursor of the previous page; one this node did not give is past its end (no neighbours)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 40,
) -> Response:
    try:  # an empty cursor is the first page, as no cursor
        found = await _neighbours(store, node_id, cursor or None, limit)
    except graph.BadCursor:
        first = await _neighbours(store, node_id, None, 1)
        found = first.model_copy(update={"nodes": [], "edges": [], "next_cursor": None}) if first else None
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no graph node {node_id!r}")
    return Response(found.model_dump_json(), media_type="application/json")


async def _neighbours(store: ProfileStore, node: str, cursor: str | None, limit: int) -> graph.NeighbourPage | None:
    kind, key = graph.parse_node(node)
    if kind == "author":
        doc = await store.graph_source(key)
        if doc is None or "state" not in doc:
            return None
        sections = graph.author_neighbours(key, doc["state"], doc.get("graph"), doc.get("works") or [])
        shown, next_cursor = graph.page_of(node, sections, cursor, limit)
        shown = graph.with_titles(shown, await store.work_titles(graph.work_ids(shown), doc))
        return graph.neighbour_page(graph.author_node(key, doc["state"]), shown, next_cursor)
    if kind == "work":
        work = await store.work_content(key)
        if work is None:
            return None
        shown, next_cursor = graph.page_of(node, graph.work_neighbours(work), cursor, limit)
        return graph.neighbour_page(graph.work_node(work), shown, next_cursor)
    # A topic or an institution: its authors, by author id, from an index.
    after = str(graph.decode_cursor(node, cursor)[1][0]) if cursor else None
    label = key
    if kind == "topic":
        docs = await store.authors_with_topic(key, after, limit + 1)
        shown = [graph.topic_author(key, d) for d in docs[:limit]]
    else:
        docs = await store.authors_at_institution(key, after, limit + 1)
        named = [graph.institution_author(key, d) for d in docs[:limit]]
        shown = [n for n, _ in named]
        label = named[0][1] if named else key
    if not docs and cursor is None:
        return None
    next_cursor = graph.encode_cursor(node, shown[-1]) if len(docs) > limit else None
    me = graph.GraphNode(id=node, kind=kind, label=label, weight=sum(n.edge.weight for n in shown))
    return graph.neighbour_page(me, shown, next_cursor)


# --- the owner's own edit ------------------------------------------------------------------

EDIT_REFUSED = problem_responses(403, 404)


class EditAccepted(BaseModel):
    event_id: str
    author_id: str
    edited: list[str]


@router.patch(
    "/authors/{author_id}",
    response_model=EditAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="The record's owner sets its affiliation, description, openness to collaborate",
    responses=EDIT_REFUSED,
)
async def edit_author(
    author_id: AuthorId,
    edit: ProfileEdit,
    user: CurrentUser,
    store: Store,
    publisher: Annotated[EventPublisher, Depends(get_publisher)],
) -> EditAccepted:
    """Publishes ``ProfileEditRequested`` on ``webapp.profile`` (keyed by the author); the
    record changes when the profile consumer applies it, and the page shows it then."""
    doc, standing = await asyncio.gather(store.page_source(author_id), store.standing_of(author_id))
    if doc is None or "state" not in doc:
        raise _not_found(author_id)
    if not may_edit(user.user_id, (standing or {}).get("claim")):
        raise HTTPException(status.HTTP_403_FORBIDDEN, NOT_OWNER)
    command = edit.command(author_id, user.user_id)
    out = publisher.outgoing(command, correlation_id=f"profile-edit:{user.user_id}")
    await publisher.publish([out])
    return EditAccepted(event_id=str(out.envelope.event_id), author_id=author_id, edited=list(command.edited))


@router.get(
    "/authors/{author_id}/editable",
    summary="Whether the signed-in user owns the record (and may edit it)",
    response_model=Editable,
    responses=NOT_FOUND,
)
async def get_editable(author_id: AuthorId, user: CurrentUser, store: Store) -> Editable:
    doc, standing = await asyncio.gather(store.page_source(author_id), store.standing_of(author_id))
    if doc is None or "state" not in doc:
        raise _not_found(author_id)
    return Editable(author_id=author_id, editable=may_edit(user.user_id, (standing or {}).get("claim")))
