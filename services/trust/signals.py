"""The signal projection: what trust keeps per author from the three input topics.

Pure (no broker, no store). Each source (profile, claims, follows) carries its own
per-author revision and the full state, so the reducer keeps, per author and source,
the state with the highest revision and ignores older or equal ones (``is_newer``, the
contracts' rule). That makes it idempotent (a redelivered event changes nothing) and
independent of arrival order across sources (the final projection depends only on the
set of events seen).

A projection is a plain dict: source -> that source's state with its ``revision``::

    {"profile": {"revision": 3, "works_count": 28, "works_by_year": {"2020": 16, ...},
                 "topics": 9, "close_collaborators": 4, "record_level": "L1"},
     "claim": {"revision": 2, "claimed": True, "level": "L2"},
     "followers": {"revision": 7, "count": 17}}

Which events carry a signal is said once, by payload type (``OBSERVE``): the consumer
takes only those types. ``AuthorFollowed``/``AuthorUnfollowed`` are not among them: their
count has no revision, so it could not be ordered against the others, and
``FollowerCountChanged`` (which follow publishes on every count change) carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.events.claims import CLAIM_STATE_EVENTS, AuthorClaimState
from contracts.events.common import VerificationLevel, is_newer, level_rank
from contracts.events.follows import FollowerCountChanged
from contracts.events.profile import AuthorRegistered, AuthorState, AuthorUpdated, WorkAdded, WorkUpdated
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from services.trust.scoring import Formula, Signals

SOURCES = ("profile", "claim", "followers")
Projection = dict[str, dict[str, Any]]
_YEAR_MIN, _YEAR_MAX = 1600, 9999


@dataclass(frozen=True, slots=True)
class Observation:
    """One source's full state for one author at a revision, already cleaned."""

    author_id: str
    source: str  # one of SOURCES
    revision: int
    state: dict[str, Any]
    anomalies: tuple[str, ...] = ()  # impossible values dropped while cleaning


def of_profile(author: AuthorState) -> Observation:
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


def of_claim(author_id: str, claim: AuthorClaimState) -> Observation:
    level = claim.verification_level if claim.claimed else None
    return Observation(author_id, "claim", claim.revision, {"claimed": claim.claimed, "level": level})


def of_followers(payload: FollowerCountChanged) -> Observation:
    return Observation(payload.author_id, "followers", payload.revision, {"count": payload.count})


# The signal each input event carries, by payload type (``Service.consume(accepts=OBSERVE.types)``).
OBSERVE: Dispatch[Observation] = (
    Dispatch[Observation]()
    .on(AuthorRegistered, AuthorUpdated, WorkAdded, WorkUpdated, handler=lambda p, _: of_profile(p.author))
    .on(*CLAIM_STATE_EVENTS, handler=lambda p, _: of_claim(p.author_id, p.author_claim))
    .on(FollowerCountChanged, handler=lambda p, _: of_followers(p))
)


def observe(item: Incoming[Any]) -> Observation:
    """The signal an input event carries (only types in ``OBSERVE.types`` are handed over)."""
    return OBSERVE(item)


def apply(projection: Projection, obs: Observation) -> Projection:
    """The author's projection after ``obs`` (a new dict; the same one if not newer)."""
    held = projection.get(obs.source)
    if not is_newer(obs.revision, None if held is None else held["revision"]):
        return projection
    return {**projection, obs.source: {"revision": obs.revision, **obs.state}}


def effective_level(projection: Projection) -> VerificationLevel:
    """The claim's level when claimed, else the record's; never below the record's."""
    record: VerificationLevel = (projection.get("profile") or {}).get("record_level", "L0")
    claim = projection.get("claim") or {}
    level: VerificationLevel | None = claim.get("level") if claim.get("claimed") else None
    if level is not None and level_rank(level) > level_rank(record):
        return level
    return record


def score_inputs(projection: Projection, formula: Formula) -> Signals | None:
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
        verification_level=effective_level(projection),
        claimed=bool(claim.get("claimed")),
        followers=(projection.get("followers") or {}).get("count", 0),
    )
