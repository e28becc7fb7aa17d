"""What other services decided about an author (claim, trust, followers): pure rules.

Each part is the state another service published, with the per-author ``revision`` it
came with; an event not newer than what is held is ignored, so redelivery and
out-of-order arrival never move the page backwards.
"""

from __future__ import annotations

from typing import Any

from contracts.envelope import EventModel
from contracts.events import claims, follows, trust

CLAIM, TRUST, FOLLOWERS = "claim", "trust", "followers"


def standing_update(data: EventModel) -> tuple[str, str, dict[str, Any]] | None:
    """(author_id, part, value) that an event asserts, or None if it asserts none."""
    if isinstance(
        data,
        (
            claims.VerificationLevelChanged,
            claims.ClaimSubmitted,
            claims.ClaimNeedsReview,
            claims.ClaimApproved,
            claims.ClaimRejected,
            claims.ClaimWithdrawnEvent,
            claims.ClaimRevoked,
        ),
    ):
        return data.author_id, CLAIM, data.author_claim.model_dump(mode="json")
    if isinstance(data, trust.TrustScoreChanged):
        return (
            data.author_id,
            TRUST,
            {
                "score": data.score,
                "band": data.band,
                "verification_level": data.verification_level,
                "revision": data.revision,
            },
        )
    if isinstance(data, follows.FollowerCountChanged):
        return data.author_id, FOLLOWERS, {"count": data.count, "revision": data.revision}
    return None  # AuthorFollowed, FollowRejected...: the count comes with FollowerCountChanged


def newest(updates: list[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per author and part, the value with the highest revision in a batch."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for author_id, part, value in updates:
        held = out.setdefault(author_id, {}).get(part)
        if held is None or value["revision"] > held["revision"]:
            out[author_id][part] = value
    return out


def merge(author_id: str, doc: dict[str, Any] | None, parts: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The standing document after applying ``parts``, or None if nothing is newer."""
    current = dict(doc) if doc else {"_id": author_id, "version": 0}
    changed = False
    for part, value in parts.items():
        held = current.get(part)
        if held is None or value["revision"] > held["revision"]:
            current[part] = value
            changed = True
    if not changed:
        return None
    current["version"] = current.get("version", 0) + 1
    return current


def effective_verification_level(record_level: str, claim: dict[str, Any] | None) -> str:
    """The claim-derived level (L2/L3) while the record is claimed, else the record's own."""
    if claim and claim.get("claimed") and claim.get("verification_level"):
        return claim["verification_level"]
    return record_level
