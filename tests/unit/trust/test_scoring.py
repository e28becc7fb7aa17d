"""The trust formula: calibration on the seed profile, bounds, monotonicity, determinism."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from contracts.events.common import VERIFICATION_LEVELS, VerificationLevel, level_rank
from services.trust.scoring import CURRENT, Formula, Signals, band_for, compute

# The seed page: 28 works (16 in 2020, 3 in 2021, 8 in 2022, 1 in 2023), 9 topics,
# 4 close collaborators, L1, unclaimed, 0 followers.
SEED = Signals(
    works_count=28,
    recent_works=12,
    topics=9,
    close_collaborators=4,
    verification_level="L1",
    claimed=False,
    followers=0,
)

signals_st = st.builds(
    Signals,
    works_count=st.integers(0, 1000),
    recent_works=st.integers(0, 1000),
    topics=st.integers(0, 100),
    close_collaborators=st.integers(0, 100),
    verification_level=st.sampled_from(VERIFICATION_LEVELS),
    claimed=st.booleans(),
    followers=st.integers(0, 10**7),
)


def test_the_seed_profile_scores_21_emerging() -> None:
    result = compute(SEED)
    assert (result.score, result.band, result.verification_level) == (21, "Emerging", "L1")
    points = {c.name: c.points for c in result.components}
    assert points == {
        "works": 2.8,
        "recent_works": 6.0,
        "topics": 3.6,
        "close_collaborators": 1.6,
        "verification_level": 7.0,
        "claimed": 0.0,
        "followers": 0.0,
    }


def test_claiming_at_l2_raises_the_seed_score() -> None:
    assert compute(dataclasses.replace(SEED, claimed=True, verification_level="L2")).score == 38


def test_a_new_2024_work_raises_the_seed_score() -> None:
    assert compute(dataclasses.replace(SEED, works_count=29, recent_works=13)).score == 22


def test_every_component_shows_its_weight_and_the_weights_add_up_to_100() -> None:
    assert sum(c.weight for c in compute(SEED).components) == 100


def test_bands_thresholds() -> None:
    assert [band_for(s) for s in (0, 39, 40, 64, 65, 84, 85, 100)] == [
        "Emerging",
        "Emerging",
        "Established",
        "Established",
        "Trusted",
        "Trusted",
        "Distinguished",
        "Distinguished",
    ]


def test_the_best_possible_author_scores_100() -> None:
    best = Signals(
        works_count=150,
        recent_works=40,
        topics=25,
        close_collaborators=25,
        verification_level="L3",
        claimed=True,
        followers=10_000,
    )
    assert compute(best).score == 100 and compute(best).band == "Distinguished"


def test_impossible_signals_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="negative"):
        Signals(works_count=-1)
    unknown: Any = "L9"
    with pytest.raises(ValueError, match="unknown verification level"):
        Signals(verification_level=unknown)


def test_a_formula_whose_weights_do_not_add_up_to_100_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="100"):
        dataclasses.replace(CURRENT, claimed=11)


@given(signals_st)
def test_bounded_and_deterministic(s: Signals) -> None:
    first = compute(s)
    assert 0 <= first.score <= 100
    assert compute(s) == first
    assert all(0 <= c.points <= c.weight for c in first.components)


@given(signals_st, st.integers(1, 500))
def test_more_works_never_lower_the_score(s: Signals, more: int) -> None:
    assert compute(dataclasses.replace(s, works_count=s.works_count + more)).score >= compute(s).score
    assert compute(dataclasses.replace(s, recent_works=s.recent_works + more)).score >= compute(s).score


@given(signals_st, st.integers(1, 50))
def test_more_topics_or_collaborators_never_lower_the_score(s: Signals, more: int) -> None:
    assert compute(dataclasses.replace(s, topics=s.topics + more)).score >= compute(s).score
    assert compute(dataclasses.replace(s, close_collaborators=s.close_collaborators + more)).score >= compute(s).score


@given(signals_st, st.integers(1, 10**6))
def test_more_followers_never_lower_the_score(s: Signals, more: int) -> None:
    assert compute(dataclasses.replace(s, followers=s.followers + more)).score >= compute(s).score


@given(signals_st)
def test_claiming_never_lowers_the_score(s: Signals) -> None:
    assert compute(dataclasses.replace(s, claimed=True)).score >= compute(dataclasses.replace(s, claimed=False)).score


@given(signals_st, st.sampled_from(VERIFICATION_LEVELS))
def test_a_higher_level_never_lowers_the_score(s: Signals, other: VerificationLevel) -> None:
    low, high = sorted([s.verification_level, other], key=level_rank)
    assert (
        compute(dataclasses.replace(s, verification_level=high)).score
        >= compute(dataclasses.replace(s, verification_level=low)).score
    )


def test_a_new_formula_version_can_change_weights() -> None:
    v2 = Formula(
        version=2,
        recent_since_year=2022,
        works=(20, 150),
        recent_works=(15, 40),
        topics=(10, 25),
        close_collaborators=(10, 25),
        followers=(14, 10_000),
        claimed=10,
        verification=21,
    )
    assert compute(SEED, v2).formula_version == 2
