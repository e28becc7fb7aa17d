"""What the follow service learns from other services' events: which authors exist (and
their names), who owns a record, and the events that notify followers.

A batch is handled as a whole: one read of the authors it concerns, the identity and
owner changes applied in memory in partition order (a notification's title uses the name
known at that point), one bulk write of the changed authors, then every fan-out the batch
triggers planned together (``FanoutPlanner.plan``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.envelope import Envelope, EventModel
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
from service_runtime.logging import get_logger
from services.follow.fanout import FanoutPlanner, FanoutTrigger
from services.follow.rules import band_went_up, notification_title
from services.follow.store import FollowStore

log = get_logger(__name__)

_PROFILE = (AuthorRegistered, AuthorUpdated, WorkAdded, WorkUpdated)
_CLAIM_STATE = (
    ClaimSubmitted,
    ClaimNeedsReview,
    ClaimApproved,
    ClaimRejected,
    ClaimWithdrawnEvent,
    ClaimRevoked,
    VerificationLevelChanged,
)


@dataclass
class SourceBatch:
    """What a batch of source events does: author fields to set, fan-outs to start."""

    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # author_id -> fields to $set
    triggers: list[FanoutTrigger] = field(default_factory=list)


def apply_source_events(
    events: Sequence[tuple[Envelope, EventModel]], authors: dict[str, dict[str, Any]]
) -> SourceBatch:
    """Apply a batch in order to ``authors`` (the stored documents, updated in place; an
    author seen for the first time is added) and say what to write and whom to notify."""
    out = SourceBatch()
    for envelope, p in events:
        author_id: str = p.author_id  # type: ignore[attr-defined]
        doc = authors.setdefault(author_id, {"_id": author_id})
        if isinstance(p, _PROFILE):
            _set(out, doc, _identity(doc, p.author.display_name, p.author.revision))
            if isinstance(p, WorkAdded):
                title = notification_title("new_work", p.author.display_name, p.work.title)
                out.triggers.append(FanoutTrigger(envelope, author_id, "new_work", title))
        elif isinstance(p, _CLAIM_STATE):
            _set(out, doc, _owner(doc, p.author_claim))
            if isinstance(p, ClaimApproved):
                title = notification_title("claim_approved", _name(doc))
                out.triggers.append(FanoutTrigger(envelope, author_id, "claim_approved", title))
        elif isinstance(p, TrustScoreChanged) and band_went_up(p.previous_band, p.band):
            title = notification_title("trust_band_up", _name(doc), p.band)
            out.triggers.append(FanoutTrigger(envelope, author_id, "trust_band_up", title))
    return out


class SourceEvents:
    def __init__(self, store: FollowStore, planner: FanoutPlanner | None) -> None:
        self.store = store
        self.planner = planner  # None in a rebuild: fan-outs were planned and sent live

    async def handle(self, batch: Sequence[Incoming]) -> None:
        started = time.perf_counter()
        authors = await self.store.authors_by_id(i.payload.author_id for i in batch)  # type: ignore[attr-defined]
        read = time.perf_counter()
        applied = apply_source_events([(i.envelope, i.payload) for i in batch], authors)
        await self.store.set_authors_fields(applied.changes)
        written = time.perf_counter()
        if self.planner is not None:
            await self.planner.plan(applied.triggers, authors)
        log.info(
            "source_batch",
            events=len(batch),
            authors=len(authors),
            changed=len(applied.changes),
            triggers=len(applied.triggers),
            read_s=round(read - started, 3),
            write_s=round(written - read, 3),
            plan_s=round(time.perf_counter() - written, 3),
        )


def _set(out: SourceBatch, doc: dict[str, Any], fields: dict[str, Any]) -> None:
    if fields:
        doc.update(fields)
        out.changes.setdefault(doc["_id"], {}).update(fields)


def _identity(doc: dict[str, Any], display_name: str, revision: int) -> dict[str, Any]:
    """The author exists; keep the newest name (stale or replayed revisions are ignored).

    A newer revision that changes neither is not written: nearly every profile event is a
    new revision of its author (each work), and rewriting the author document for each
    was most of this consumer's store time. ``profile_revision`` is thus the revision of
    the last change; an author's profile events are read in order, so one seen again (a
    redelivery) with a revision above the stored one came after the last change and
    carries the stored name: skipped again, as the first time."""
    if revision <= int(doc.get("profile_revision") or 0):
        return {}
    if doc.get("known") and doc.get("display_name") == display_name:
        return {}
    return {"known": True, "display_name": display_name, "profile_revision": revision}


def _owner(doc: dict[str, Any], claim: AuthorClaimState) -> dict[str, Any]:
    """The newest owner; as for the name, a newer revision with the same owner is not written."""
    if claim.revision <= int(doc.get("claim_revision") or 0):
        return {}
    owner = claim.owner_user_id if claim.claimed else None
    if "owner_user_id" in doc and doc["owner_user_id"] == owner:
        return {}
    return {"owner_user_id": owner, "claim_revision": claim.revision}


def _name(doc: dict[str, Any]) -> str:
    return str(doc.get("display_name") or doc["_id"])
