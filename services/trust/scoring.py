"""The trust formula: signals in, a 0-100 score with its breakdown out.

Pure: no broker, no store, no clock. The same ``Signals`` always give the same score,
whatever the date: recency counts works published in or after ``recent_since_year``, a
year that belongs to the formula version (moving it forward is a formula change, applied
to every author by a rescore), not to today's date.

Every component is ``weight * min(signal, cap) / cap`` (followers on a log scale), so it
only grows with its signal and never exceeds its weight; the weights add up to 100.
The score is the sum rounded half up. Calibration (formula v1): the seed profile (28
works, 12 of them from 2021 on, 9 topics, 4 close collaborators, L1, unclaimed, 0
followers) gives 2.8 + 6.0 + 3.6 + 1.6 + 7.0 = 21.0 -> 21, Emerging; claiming it at L2
adds 7 + 10 (38); one more recent work adds 0.1 + 0.5 (22).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import NamedTuple

from contracts.events.common import TRUST_BANDS, VERIFICATION_LEVELS, TrustBand, VerificationLevel, level_rank


@dataclass(frozen=True, slots=True)
class Signals:
    """What the score is computed from (already cleaned: see ``signals.py``)."""

    works_count: int = 0
    recent_works: int = 0  # works in or after the formula's recent_since_year (<= works_count)
    topics: int = 0
    close_collaborators: int = 0
    verification_level: VerificationLevel = "L0"
    claimed: bool = False
    followers: int = 0

    def __post_init__(self) -> None:
        for name in ("works_count", "recent_works", "topics", "close_collaborators", "followers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative")
        if self.verification_level not in VERIFICATION_LEVELS:
            raise ValueError(f"unknown verification level {self.verification_level!r}")


class Component(NamedTuple):  # a tuple: seven of them per score, built cheaply
    name: str
    signal: float
    weight: float
    cap: float
    points: float


@dataclass(frozen=True, slots=True)
class TrustScore:
    score: int
    band: TrustBand
    verification_level: VerificationLevel
    components: tuple[Component, ...]
    formula_version: int


@dataclass(frozen=True, slots=True)
class Formula:
    version: int
    recent_since_year: int
    # component -> (weight in points, cap: the signal value at which it is full)
    works: tuple[int, int]
    recent_works: tuple[int, int]
    topics: tuple[int, int]
    close_collaborators: tuple[int, int]
    followers: tuple[int, int]  # log10(1 + followers) / log10(1 + cap)
    claimed: int
    verification: int  # L0 0, L1 1/3, L2 2/3, L3 all of it
    # lowest score of each band, in the bands' order (contracts' ``TRUST_BANDS``)
    bands: tuple[tuple[int, TrustBand], ...] = field(default=tuple(zip((0, 40, 65, 85), TRUST_BANDS, strict=True)))

    def __post_init__(self) -> None:
        total = (
            self.works[0]
            + self.recent_works[0]
            + self.topics[0]
            + self.close_collaborators[0]
            + self.followers[0]
            + self.claimed
            + self.verification
        )
        if total != 100:
            raise ValueError(f"weights must add up to 100, not {total}")


CURRENT = Formula(
    version=1,
    recent_since_year=2021,
    works=(15, 150),
    recent_works=(20, 40),
    topics=(10, 25),
    close_collaborators=(10, 25),
    followers=(14, 10_000),
    claimed=10,
    verification=21,
)
FORMULA_VERSION = CURRENT.version


@functools.cache
def _unit(formula: Formula) -> int:
    """The common denominator of every component (each cap, and hundredths for the log
    scale): scores are summed as exact integers of 1/unit points, without ``Fraction``
    (measured: the exact rationals were a seventh of the service's CPU)."""
    caps = (formula.works, formula.recent_works, formula.topics, formula.close_collaborators)
    return math.lcm(100, len(VERIFICATION_LEVELS) - 1, *(cap for _, cap in caps))


def _linear(signal: int, weight: int, cap: int, unit: int) -> int:
    return weight * min(signal, cap) * (unit // cap)


@functools.lru_cache(maxsize=65536)
def _log_hundredths(signal: int, weight: int, cap: int) -> int:
    # Rounded to hundredths through Decimal so the result is exact and platform-independent
    # at the precision it is shown; rounding is monotonic, so more followers never lower it.
    ratio = math.log10(1 + min(signal, cap)) / math.log10(1 + cap)
    return int(Decimal(repr(weight * ratio)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) * 100)


def band_for(score: int, formula: Formula = CURRENT) -> TrustBand:
    band: TrustBand = formula.bands[0][1]
    for lowest, name in formula.bands:
        if score >= lowest:
            band = name
    return band


def compute(signals: Signals, formula: Formula = CURRENT) -> TrustScore:
    level = level_rank(signals.verification_level)
    unit = _unit(formula)
    # (component, signal, weight, cap, points in 1/unit)
    parts: list[tuple[str, int, int, int, int]] = [
        ("works", signals.works_count, *formula.works, _linear(signals.works_count, *formula.works, unit)),
        (
            "recent_works",
            signals.recent_works,
            *formula.recent_works,
            _linear(min(signals.recent_works, signals.works_count), *formula.recent_works, unit),
        ),
        ("topics", signals.topics, *formula.topics, _linear(signals.topics, *formula.topics, unit)),
        (
            "close_collaborators",
            signals.close_collaborators,
            *formula.close_collaborators,
            _linear(signals.close_collaborators, *formula.close_collaborators, unit),
        ),
        (
            "verification_level",
            level,
            formula.verification,
            len(VERIFICATION_LEVELS) - 1,
            _linear(level, formula.verification, len(VERIFICATION_LEVELS) - 1, unit),
        ),
        ("claimed", int(signals.claimed), formula.claimed, 1, formula.claimed * int(signals.claimed) * unit),
        (
            "followers",
            signals.followers,
            *formula.followers,
            _log_hundredths(signals.followers, *formula.followers) * (unit // 100),
        ),
    ]
    total = sum(p[4] for p in parts)
    score = max(0, min(100, (2 * total + unit) // (2 * unit)))  # rounded half up, exactly
    components = tuple(
        Component(name=name, signal=float(signal), weight=float(weight), cap=float(cap), points=round(points / unit, 2))
        for name, signal, weight, cap, points in parts
    )
    return TrustScore(score, band_for(score, formula), signals.verification_level, components, formula.version)


FORMULAS: Mapping[int, Formula] = MappingProxyType({CURRENT.version: CURRENT})
