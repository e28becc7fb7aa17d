"""The signal projection: what trust keeps per author from the three input topics.

Pure (no broker, no store). Each source (profile, claims, follows) carries its own
per-author revision and the full state, so the reducer keeps, per author and source,
the state with the highest revision and ignores older or equal ones. That makes it
idempotent (a redelivered event changes nothing) and independent of arrival order across
sources (the final projection depends only on the set of events seen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.envelope import EventModel
from contracts.events import claims, follows, profile
from services.trust.scoring import LEVELS, Formula, Signals

SOURCES = ("profile", "claim", "followers")
_YEAR_MIN, _YEAR_MAX = 1600, 9999


@dataclass(frozen=True, slots=True)
class Observation:
    """One source's full state for one author at a revision, already cleaned."""

    author_id: str
    source: str  # one of SOURCES
    revision: int
    state: dict[str, Any]
    anomalies: tuple[str, ...] = ()  # impossible values dropped while cleaning


@dataclass(frozen=True, slots=True)
class Ignored:
    author_id: str
    reason: str


def observe(payload: EventModel) -> Observation | Ignored:
    """The signal an input event carries, or why it carries none."""
    if isinstance(payload, (profile.AuthorRegistered, profile.AuthorUpdated, profile.WorkAdded, profile.WorkUpdated)):
        return _profile_observation(payload.author)
    if isinstance(payload, (claims.VerificationLevelChanged, claims._ClaimEvent)):
        c = payload.author_claim
        return Observation(
            payload.author_id,
            "claim",
            c.revision,
            {"claimed": c.claimed, "level": c.verification_level if c.claimed else None},
        )
    if isinstance(payload, follows.FollowerCountChanged):
        return Observation(payload.author_id, "followers", payload.revision, {"count": payload.count})
    author_id = str(getattr(payload, "author_id", ""))
    if isinstance(payload, (follows.AuthorFollowed, follows.AuthorUnfollowed)):
        # Their count has no revision, so it could not be ordered against the others:
        # FollowerCountChanged (which follow publishes on every count change) carries it.
        return Ignored(author_id, "follower count without revision: taken from FollowerCountChanged")
    return Ignored(author_id, f"{payload.event_type} carries no trust signal")


def _profile_observation(author: profile.AuthorState) -> Observation:
    anomalies: list[str] = []
    by_year: dict[str, int] = {}
    for year, count in author.works_by_year.items():
        if not (year.isdigit() and _YEAR_MIN <= int(year) <= _YEAR_MAX):
            anomalies.append(f"works_by_year key {year!r} is not a year")
        elif count < 0:
            anomalies.append(f"works_by_year[{year}] is negative ({count})")
        elif count > 0:
            by_year[year] = count
    if sum(by_year.values()) > author.works_count:
        anomalies.append(f"works_by_year adds up to more than works_count ({author.works_count})")
    collaborators = {c.author_id for c in author.close_collaborators if c.author_id != author.author_id}
    state = {
        "works_count": author.works_count,
        "works_by_year": by_year,
        "topics": len({t.name.casefold() for t in author.topics}),
        "close_collaborators": len(collaborators),
        "record_level": author.record_verification_level,
    }
    return Observation(author.author_id, "profile", author.revision, state, tuple(anomalies))


def apply(projection: dict[str, Any], obs: Observation) -> dict[str, Any]:
    """The author's projection after ``obs`` (a new dict; unchanged if not newer)."""
    held = projection.get(obs.source)
    if held is not None and held["revision"] >= obs.revision:
        return projection
    return {**projection, obs.source: {"revision": obs.revision, **obs.state}}


def effective_level(projection: dict[str, Any]) -> str:
    """The claim's level when claimed, else the record's; never below the record's."""
    record = (projection.get("profile") or {}).get("record_level", "L0")
    claim = projection.get("claim") or {}
    level = claim.get("level") if claim.get("claimed") else None
    if level in LEVELS and LEVELS.index(level) > LEVELS.index(record):
        return level
    return record


def score_inputs(projection: dict[str, Any], formula: Formula) -> Signals | None:
    """The formula's inputs, or None while the profile hasn't registered the author:
    trust never scores an author it has no record of (its other signals are kept)."""
    p = projection.get("profile")
    if p is None:
        return None
    recent = sum(n for year, n in p["works_by_year"].items() if int(year) >= formula.recent_since_year)
    claim = projection.get("claim") or {}
    return Signals(
        works_count=p["works_count"],
        recent_works=min(recent, p["works_count"]),
        topics=p["topics"],
        close_collaborators=p["close_collaborators"],
        verification_level=effective_level(projection),  # type: ignore[arg-type]
        claimed=bool(claim.get("claimed")),
        followers=(projection.get("followers") or {}).get("count", 0),
    )
