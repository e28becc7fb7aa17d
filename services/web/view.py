"""What a profile page shows, read from the services that own each fact.

The profile service's page is the base (the record, its counts, topics, close
collaborators and first works). Three facts on it belong to other services, and are read
from them when they answer: the trust score and band (trust), the claim and the level it
gives (claims), the follower count (follow). Every service writes what it decided before
it publishes the event, so a read made after an event has been seen is never older than
that event: this is what lets a live update re-read a section as soon as the event
arrives (the profile service's copy of these facts follows their events a moment later).
When one of them does not answer, the profile page's own copy is shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.web.backends import Backends, Unavailable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Snapshot:
    score: int | None
    band: str | None
    verification_level: str
    claimed: bool
    followers: int


@dataclass(frozen=True, slots=True)
class AuthorView:
    page: dict[str, Any]
    snapshot: Snapshot
    following: bool | None  # None: nobody signed in
    unavailable: list[str] = field(default_factory=list)  # services that did not answer

    @property
    def author_id(self) -> str:
        return str(self.page["author_id"])

    @property
    def works(self) -> dict[str, Any]:
        works: dict[str, Any] = self.page.get("works") or {"items": [], "next_cursor": None}
        return works


async def _maybe(call: Awaitable[T], unavailable: list[str]) -> T | None:
    try:
        return await call
    except Unavailable as exc:
        unavailable.append(exc.service)
        return None


def snapshot_of(
    page: dict[str, Any], trust: dict[str, Any] | None, claim: dict[str, Any] | None, followers: int | None
) -> Snapshot:
    own = page["trust_snapshot"]
    score, band = own["score"], own["band"]
    if trust and trust.get("status") == "scored":
        score, band = trust["score"], trust["band"]
    if claim is None:  # the claims service did not answer: the profile page's copy
        claimed, level = bool(own["claimed"]), str(own["verification_level"])
    else:
        claimed = bool(claim["claimed"])
        # The level the claim gives while the record is claimed, else the record's own.
        level = str((claimed and claim.get("verification_level")) or page["record_verification_level"])
    return Snapshot(
        score=score,
        band=band,
        verification_level=level,
        claimed=claimed,
        followers=followers if followers is not None else int(page["counts"]["followers"]),
    )


async def author_view(backends: Backends, author_id: str, user_id: str | None) -> AuthorView | None:
    """The page of an author, or None if the profile service has no such record
    (``Unavailable`` if the profile service does not answer)."""
    unavailable: list[str] = []
    page, trust, claim, followers, following = await asyncio.gather(
        backends.author_page(author_id),
        _maybe(backends.trust(author_id), unavailable),
        _maybe(backends.claim_status(author_id), unavailable),
        _maybe(backends.follower_count(author_id), unavailable),
        _maybe(backends.following(user_id), unavailable) if user_id else asyncio.sleep(0, None),
    )
    if page is None:
        return None
    return AuthorView(
        page=page,
        snapshot=snapshot_of(page, trust, claim, followers),
        following=None if user_id is None else author_id in (following or set()),
        unavailable=sorted(set(unavailable)),
    )


def fallback_graph(page: dict[str, Any]) -> dict[str, Any]:
    """The research graph's first slice in the graph API's shape, from what the profile
    page already holds (the author, its close collaborators and topics): drawn while the
    graph API is not there. Nothing is derived: it is the page's own lists."""
    me = f"author:{page['author_id']}"
    nodes: list[dict[str, Any]] = [
        {"id": me, "kind": "author", "label": page["display_name"], "weight": page["counts"]["works"], "close": False}
    ]
    edges: list[dict[str, Any]] = []
    for c in page.get("close_collaborators", []):
        node = f"author:{c['author_id']}"
        nodes.append(
            {"id": node, "kind": "author", "label": c["display_name"], "weight": c["shared_works"], "close": True}
        )
        edges.append({"source": me, "target": node, "kind": "coauthor", "weight": c["shared_works"]})
    for t in page.get("topics", []):
        node = f"topic:{t['name']}"
        nodes.append({"id": node, "kind": "topic", "label": t["name"], "weight": t["count"], "close": False})
        edges.append({"source": me, "target": node, "kind": "topic", "weight": t["count"]})
    return {"author_id": page["author_id"], "nodes": nodes, "edges": edges}
