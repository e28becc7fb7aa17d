"""HTTP for the web app: the profile page, works paging, name search, and the work import."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse, Response

from contracts.events.common import ID_PATTERN
from contracts.events.publications import Work, WorkIngested
from service_runtime.auth import IMPORTER, CurrentUser, require_role
from service_runtime.publishing import EventPublisher
from services.profile.derive import fold_name
from services.profile.page import BadCursor, author_page, author_page_json, page_slice, unpack_works, works_page
from services.profile.store import ProfileStore

router = APIRouter(tags=["profile"])

AuthorId = Annotated[str, Path(pattern=ID_PATTERN, description="the author record's id, e.g. seed:quoc-v-le")]


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in a worker
# thread, and handing each request to a thread and back was a sixth of a page's CPU.
async def get_store(request: Request) -> ProfileStore:
    return request.app.state.profile_store


async def get_publisher(request: Request) -> EventPublisher:
    return request.app.state.service.publisher


async def get_page_works(request: Request) -> int:
    return request.app.state.service.settings.page_works


Store = Annotated[ProfileStore, Depends(get_store)]


async def _registered(store: ProfileStore, author_id: str) -> dict[str, Any]:
    doc = await store.author(author_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no author record with id {author_id!r}")
    return doc


@router.get("/authors/{author_id}", summary="The author's profile page", response_class=JSONResponse)
async def get_author(
    author_id: AuthorId, store: Store, page_works: Annotated[int, Depends(get_page_works)]
) -> Response:
    # The author and its standing at once: two round trips in the time of one.
    doc, standing = await asyncio.gather(store.page_source(author_id), store.standing_of(author_id))
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no author record with id {author_id!r}")
    if doc.get("page_limit") == page_works and "page_works" in doc:
        # The usual page: its first works were cut at ingestion and are sent as stored.
        page = author_page({"_id": author_id, "state": json.loads(doc["state_json"])}, standing)
        body = author_page_json(page, unpack_works(doc["page_works"]), doc.get("page_cursor"))
    else:  # written before first pages were stored, or cut for another page size
        doc = await _registered(store, author_id)
        shown, next_cursor = page_slice(doc.get("works", []), None, page_works)
        works = await store.works_by_id([e["id"] for e in shown])
        items = works_page(shown, works, next_cursor)["items"]
        body = author_page_json(author_page(doc, standing), json.dumps(items, ensure_ascii=False), next_cursor)
    # Plain JSON bytes: FastAPI's recursive encoder cost as much as the reads.
    return Response(body, media_type="application/json")


@router.get("/authors/{author_id}/works", summary="The author's works, newest first, by cursor")
async def get_author_works(
    author_id: AuthorId,
    store: Store,
    cursor: Annotated[str | None, Query(max_length=400, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    doc = await _registered(store, author_id)
    try:
        shown, next_cursor = page_slice(doc.get("works", []), cursor, limit)
    except BadCursor as exc:
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
    works = await store.works_by_id([e["id"] for e in shown])
    return {"author_id": author_id, **works_page(shown, works, next_cursor)}


@router.get("/authors", summary="Find authors by name prefix (case- and accent-insensitive)")
async def search_authors(
    store: Store,
    q: Annotated[str, Query(min_length=1, max_length=100, description="start of a name or of any of its words")],
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
) -> dict[str, Any]:
    folded = fold_name(q)
    if not folded:
        raise HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, "q must contain a letter or digit")
    found = await store.search(folded, limit)
    return {
        "query": q,
        "items": [
            {
                "author_id": d["_id"],
                "display_name": d["display_name"],
                "affiliation": d.get("affiliation"),
                "works_count": d.get("works_count", 0),
            }
            for d in found
        ],
    }


@router.post("/works", status_code=status.HTTP_202_ACCEPTED, summary="Import a work (role: importer)")
async def import_work(
    work: Work, user: CurrentUser, publisher: Annotated[EventPublisher, Depends(get_publisher)]
) -> dict[str, Any]:
    """Validates the work and publishes ``WorkIngested`` to ``publications.ingested`` (keyed
    by the first author); the record changes when the profile consumer handles it."""
    require_role(user, IMPORTER)
    event = WorkIngested(author_id=work.authors[0].author_id, work=work, source="http-import")
    out = publisher.outgoing(event, correlation_id=f"http-import:{user.user_id}")
    await publisher.publish([out])
    return {"event_id": str(out.envelope.event_id), "work_id": work.work_id, "author_id": event.author_id}
