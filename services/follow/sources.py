"""What the follow service learns from other services' events: which authors exist (and
their names), who owns a record, and the events that notify followers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.events.claims import (
    AuthorClaimState,
    ClaimApproved,
    ClaimNeedsReview,
    ClaimRejected,
    ClaimRevoked,
    ClaimSubmitted,
    ClaimWithdrawnEvent,
    VerificationLevelChanged,
)
from contracts.events.profile import AuthorRegistered, AuthorUpdated, WorkAdded, WorkUpdated
from contracts.events.trust import TrustScoreChanged
from service_runtime.delivery import Incoming
from services.follow.fanout import FanoutPlanner
from services.follow.rules import band_went_up, notification_title
from services.follow.store import FollowStore

_PROFILE = (AuthorRegistered, AuthorUpdated, WorkAdded, WorkUpdated)
_CLAIM_STATE = (ClaimSubmitted, ClaimNeedsReview, ClaimApproved, ClaimRejected, ClaimWithdrawnEvent, ClaimRevoked,
                VerificationLevelChanged)


class SourceEvents:
    def __init__(self, store: FollowStore, planner: FanoutPlanner | None) -> None:
        self.store = store
        self.planner = planner  # None in a rebuild: fan-outs were planned and sent live

    async def handle(self, batch: Sequence[Incoming]) -> None:
        authors = await self.store.authors_by_id(i.payload.author_id for i in batch)  # type: ignore[attr-defined]
        for item in batch:  # in order: a WorkAdded's title uses the name known at that point
            p = item.payload
            author_id: str = p.author_id  # type: ignore[attr-defined]
            doc = authors.setdefault(author_id, {"_id": author_id})
            if isinstance(p, _PROFILE):
                await self._identity(doc, p.author.display_name, p.author.revision)
                if isinstance(p, WorkAdded):
                    title = notification_title("new_work", p.author.display_name, p.work.title)
                    await self._plan(item.envelope, author_id, "new_work", title)
            elif isinstance(p, _CLAIM_STATE):
                await self._owner(doc, p.author_claim)
                if isinstance(p, ClaimApproved):
                    title = notification_title("claim_approved", _name(doc))
                    await self._plan(item.envelope, author_id, "claim_approved", title)
            elif isinstance(p, TrustScoreChanged) and band_went_up(p.previous_band, p.band):
                title = notification_title("trust_band_up", _name(doc), p.band)
                await self._plan(item.envelope, author_id, "trust_band_up", title)

    async def _plan(self, cause: Any, author_id: str, kind: str, title: str) -> None:
        if self.planner is not None:
            await self.planner.plan(cause, author_id, kind, title)

    async def _identity(self, doc: dict[str, Any], display_name: str, revision: int) -> None:
        """The author exists; keep the newest name (stale or replayed revisions are ignored)."""
        if revision <= int(doc.get("profile_revision") or 0):
            return
        fields = {"known": True, "display_name": display_name, "profile_revision": revision}
        doc.update(fields)
        await self.store.set_author_fields(doc["_id"], fields)

    async def _owner(self, doc: dict[str, Any], claim: AuthorClaimState) -> None:
        if claim.revision <= int(doc.get("claim_revision") or 0):
            return
        fields = {"owner_user_id": claim.owner_user_id if claim.claimed else None, "claim_revision": claim.revision}
        doc.update(fields)
        await self.store.set_author_fields(doc["_id"], fields)


def _name(doc: dict[str, Any]) -> str:
    return str(doc.get("display_name") or doc["_id"])
