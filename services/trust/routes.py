"""HTTP reads: the current score with its breakdown, and the history of changes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel

from contracts.events.common import ID_PATTERN
from service_runtime.problems import problem_responses
from services.trust.store import Author, TrustStore

router = APIRouter(prefix="/trust", tags=["trust"])
AuthorId = Annotated[str, Path(pattern=ID_PATTERN, description="the author record's id")]


# async: FastAPI runs a plain ``def`` dependency in a worker thread (see profile's routes).
async def get_store(request: Request) -> TrustStore:
    store: TrustStore = request.app.state.trust_store
    return store


Store = Annotated[TrustStore, Depends(get_store)]


class Component(BaseModel):
    name: str
    signal: float
    weight: float
    cap: float
    points: float


class TrustView(BaseModel):
    author_id: str
    # "scored", or "pending": the profile registered the author and its first score is
    # being computed (it appears within about a second); score and band are null until then.
    status: str
    score: int | None = None
    band: str | None = None
    verification_level: str | None = None
    claimed: bool | None = None
    components: list[Component] = []
    formula_version: int | None = None
    revision: int | None = None
    recomputing: bool = False  # inputs changed since this score; a new one is on its way


class HistoryEntry(BaseModel):
    revision: int
    score: int
    band: str
    previous_score: int | None = None
    previous_band: str | None = None
    verification_level: str
    reason: str
    formula_version: int
    components: list[Component]
    # The inputs the score was computed from (null for a change published without them).
    signals: dict[str, Any] | None
    changed_at: datetime
    event_id: str


class HistoryPage(BaseModel):
    items: list[HistoryEntry]
    next_cursor: int | None  # pass as ?cursor= for the next (older) page; null at the end


async def _known_author(store: TrustStore, author_id: str) -> Author:
    author = await store.author(author_id)
    if author is None or not author.registered:
        raise HTTPException(404, f"unknown author {author_id!r}")
    return author


@router.get(
    "/{author_id}",
    response_model=TrustView,
    summary="Trust score, band, level and breakdown",
    responses=problem_responses(404),
)
async def get_trust(author_id: AuthorId, store: Store) -> TrustView:
    author = await _known_author(store, author_id)
    score = author.score
    if score is None:
        return TrustView(author_id=author_id, status="pending", recomputing=True)
    return TrustView(
        author_id=author_id,
        status="scored",
        score=score["score"],
        band=score["band"],
        verification_level=score["verification_level"],
        claimed=(score["inputs"] or {}).get("claimed"),
        components=[Component(**c) for c in score["components"]],
        formula_version=score["formula_version"],
        revision=score["revision"],
        recomputing=author.dirty,
    )


@router.get(
    "/{author_id}/history",
    response_model=HistoryPage,
    summary="Score changes, newest first",
    responses=problem_responses(404),
)
async def get_history(
    author_id: AuthorId,
    store: Store,
    cursor: Annotated[int | None, Query(ge=1, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> HistoryPage:
    await _known_author(store, author_id)
    entries = await store.history_page(author_id, cursor, limit + 1)
    items = [
        HistoryEntry(
            revision=e["revision"],
            score=e["score"],
            band=e["band"],
            previous_score=e["previous_score"],
            previous_band=e["previous_band"],
            verification_level=e["verification_level"],
            reason=e["reason"],
            formula_version=e["formula_version"],
            components=[Component(**c) for c in e["components"]],
            signals=e["inputs"],
            changed_at=e["changed_at"],
            event_id=e["event_id"],
        )
        for e in entries[:limit]
    ]
    return HistoryPage(items=items, next_cursor=items[-1].revision if len(entries) > limit else None)
