"""What other services decided about an author (claim, trust, followers): pure rules.

Each part is the state another service published, with the per-author ``revision`` it
came with; a part not newer than the one held is ignored (``is_newer``), so redelivery
and out-of-order arrival never move the page backwards, and the standing of an author is
the same fold whatever order its events are read in (live or in a rebuild).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from contracts.envelope import EventModel
from contracts.events.claims import CLAIM_STATE_EVENTS, author_claim_of
from contracts.events.common import VerificationLevel, is_newer
from contracts.events.follows import FollowerCountChanged
from contracts.events.trust import TrustScoreChanged
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch

PartName = Literal["claim", "trust", "followers"]


@dataclass(frozen=True, slots=True)
class Part:
    """One part of an author's standing as an event asserts it (``value`` holds its revision)."""

    author_id: str
    name: PartName
    value: dict[str, Any]

    @property
    def revision(self) -> int:
        return int(self.value["revision"])


def claim_part(payload: EventModel, item: Incoming[EventModel]) -> Part | None:
    claim = author_claim_of(payload)
    return None if claim is None else Part(payload.key(), "claim", claim.model_dump())


def trust_part(payload: TrustScoreChanged, item: Incoming[TrustScoreChanged]) -> Part:
    value = {
        "score": payload.score,
        "band": payload.band,
        "verification_level": payload.verification_level,
        "revision": payload.revision,
    }
    return Part(payload.author_id, "trust", value)


def followers_part(payload: FollowerCountChanged, item: Incoming[FollowerCountChanged]) -> Part:
    return Part(payload.author_id, "followers", {"count": payload.count, "revision": payload.revision})


# The events that assert a part (AuthorFollowed, FollowRejected...: the count comes with
# FollowerCountChanged; TrustScoreChanged carries the score and band).
PARTS = (
    Dispatch[Part | None]()
    .on(*CLAIM_STATE_EVENTS, handler=claim_part)
    .on(TrustScoreChanged, handler=trust_part)
    .on(FollowerCountChanged, handler=followers_part)
)


def newest(parts: Iterable[Part | None]) -> list[Part]:
    """Per author and part, the one with the highest revision."""
    out: dict[tuple[str, str], Part] = {}
    for part in parts:
        if part is None:
            continue
        held = out.get((part.author_id, part.name))
        if is_newer(part.revision, held.revision if held else None):
            out[(part.author_id, part.name)] = part
    return list(out.values())


def effective_verification_level(record_level: VerificationLevel, claim: dict[str, Any] | None) -> VerificationLevel:
    """The claim-derived level (L2/L3) while the record is claimed, else the record's own."""
    if claim and claim.get("claimed") and claim.get("verification_level"):
        level: VerificationLevel = claim["verification_level"]
        return level
    return record_level
