"""``trust.events``: trust score changes, with the breakdown that explains them."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from contracts.envelope import EventModel
from contracts.events.common import Frozen, Id, TrustBand, VerificationLevel
from contracts.topics import Topic


class ScoreComponent(Frozen):
    name: str
    signal: float  # the input value the component was computed from
    weight: float  # points at full strength
    cap: float  # the signal value at which the component is full
    points: float = Field(ge=0)


class ScoreInputs(Frozen):
    """The signals a score was computed from, as the trust service held them."""

    works_count: int = Field(ge=0)
    recent_works: int = Field(ge=0)
    topics: int = Field(ge=0)
    close_collaborators: int = Field(ge=0)
    verification_level: VerificationLevel
    claimed: bool
    followers: int = Field(ge=0)


class TrustScoreChanged(EventModel):
    event_type: ClassVar[str] = "TrustScoreChanged"
    topic: ClassVar[str] = Topic.TRUST_EVENTS

    author_id: Id
    score: int = Field(ge=0, le=100)
    band: TrustBand
    verification_level: VerificationLevel
    components: list[ScoreComponent]
    previous_score: int | None = Field(default=None, ge=0, le=100)
    previous_band: TrustBand | None = None
    reason: str = Field(max_length=500)
    formula_version: int = Field(ge=1)
    revision: int = Field(ge=1)  # per author, increases with every change
    # The inputs behind this score (kept in the history; absent from events of older producers).
    inputs: ScoreInputs | None = None
