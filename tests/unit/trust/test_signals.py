"""The signal projection's pure reducer: newest revision per source wins, in any order."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.envelope import Envelope, EventModel
from contracts.events.claims import (
    CLAIM_STATE_EVENTS,
    AuthorClaimState,
    ClaimApproved,
    ClaimRevoked,
    VerificationLevelChanged,
)
from contracts.events.follows import AuthorFollowed, AuthorUnfollowed, FollowerCountChanged, FollowRejected
from contracts.events.profile import AuthorRegistered, AuthorState, Collaborator, TopicCount, WorkAdded, WorkSummary
from contracts.registry import DecodeError, decode
from service_runtime.delivery import Incoming
from services.trust import scoring, signals

SEED_YEARS = {"2020": 16, "2021": 3, "2022": 8, "2023": 1}


def author_state(
    revision: int, works_by_year: dict[str, int] | None = None, level: str = "L1", works_count: int | None = None
) -> AuthorState:
    years = SEED_YEARS if works_by_year is None else works_by_year
    return AuthorState(
        author_id="a1",
        display_name="Quoc V. Le",
        works_count=sum(max(0, n) for n in years.values()) if works_count is None else works_count,
        works_by_year=years,
        topics=[TopicCount(name=f"topic {i}", count=1) for i in range(9)],
        close_collaborators=[Collaborator(author_id=f"c{i}", display_name=f"C {i}", shared_works=2) for i in range(4)],
        record_verification_level=level,
        revision=revision,
    )


def work_added(revision: int, extra_2024: int = 0) -> WorkAdded:
    years = {**SEED_YEARS, **({"2024": extra_2024} if extra_2024 else {})}
    return WorkAdded(
        author_id="a1",
        author=author_state(revision, years),
        work=WorkSummary(work_id=f"w{revision}", type="preprint", year=2024, title="t"),
    )


def claim(revision: int, claimed: bool, level: str | None) -> ClaimApproved | ClaimRevoked:
    state = AuthorClaimState(
        claimed=claimed, owner_user_id="u1" if claimed else None, verification_level=level, revision=revision
    )
    if claimed:
        return ClaimApproved(claim_id="k1", author_id="a1", user_id="u1", author_claim=state, verification_level=level)
    return ClaimRevoked(claim_id="k1", author_id="a1", user_id="u1", author_claim=state, reason="test")


def incoming(payload: EventModel) -> Incoming[EventModel]:
    return Incoming(Envelope.wrap(payload, producer="test"), payload, str(payload.topic), 0, 0)


def observe(payload: EventModel) -> signals.Observation:
    return signals.observe(incoming(payload))


def fold(events: Sequence[EventModel]) -> signals.Projection:
    projection: signals.Projection = {}
    for e in events:
        projection = signals.apply(projection, observe(e))
    return projection


def score(projection: signals.Projection) -> int:
    inputs = signals.score_inputs(projection, scoring.CURRENT)
    assert inputs is not None
    return scoring.compute(inputs).score


def test_the_seed_profile_event_projects_to_the_seed_signals_and_scores_21() -> None:
    p = fold([AuthorRegistered(author_id="a1", author=author_state(1))])
    assert signals.score_inputs(p, scoring.CURRENT) == scoring.Signals(28, 12, 9, 4, "L1", False, 0)
    assert score(p) == 21


def test_claim_level_counts_only_while_claimed() -> None:
    base = [AuthorRegistered(author_id="a1", author=author_state(1))]
    assert signals.effective_level(fold([*base, claim(1, True, "L2")])) == "L2"
    assert signals.effective_level(fold([*base, claim(1, True, "L2"), claim(2, False, None)])) == "L1"
    assert score(fold([*base, claim(1, True, "L2")])) == 38


def test_older_or_equal_revisions_are_ignored() -> None:
    newer = fold([work_added(5, extra_2024=2)])
    assert fold([work_added(5, extra_2024=2), work_added(4)]) == newer  # older profile state
    assert fold([work_added(5, extra_2024=2), work_added(5, extra_2024=2)]) == newer  # duplicate
    count = [
        FollowerCountChanged(author_id="a1", count=17, revision=9),
        FollowerCountChanged(author_id="a1", count=3, revision=2),
    ]
    assert fold(count)["followers"] == {"revision": 9, "count": 17}


def test_follow_edges_without_revision_carry_no_signal() -> None:
    # The consumer takes only the types that carry a signal: every claim state event,
    # the profile's author events and FollowerCountChanged, not the follow edges.
    taken: set[type[EventModel]] = set(signals.OBSERVE.types)
    edges: set[type[EventModel]] = {AuthorFollowed, AuthorUnfollowed, FollowRejected}
    assert edges.isdisjoint(taken)
    assert {*CLAIM_STATE_EVENTS, FollowerCountChanged, AuthorRegistered, WorkAdded} <= taken
    assert observe(FollowerCountChanged(author_id="a1", count=40, revision=3)).state == {"count": 40}


def test_an_author_without_a_profile_keeps_its_signals_but_is_not_scored() -> None:
    p = fold([FollowerCountChanged(author_id="a1", count=5, revision=1), claim(1, True, "L3")])
    assert p["followers"]["count"] == 5 and p["claim"]["level"] == "L3"
    assert signals.score_inputs(p, scoring.CURRENT) is None
    p = fold(
        [
            FollowerCountChanged(author_id="a1", count=5, revision=1),
            claim(1, True, "L3"),
            AuthorRegistered(author_id="a1", author=author_state(1)),
        ]
    )
    inputs = signals.score_inputs(p, scoring.CURRENT)
    assert inputs is not None and inputs.verification_level == "L3"


def test_impossible_works_by_year_entries_are_dropped_with_a_reason() -> None:
    state = author_state(1, {"2020": 16, "2023": -5, "soon": 3, "2022": 12}, works_count=28)
    obs = observe(AuthorRegistered(author_id="a1", author=state))
    assert obs.state["works_by_year"] == {"2020": 16, "2022": 12}
    assert any("negative" in a for a in obs.anomalies) and any("not a year" in a for a in obs.anomalies)


def test_recent_works_never_exceed_the_works_count() -> None:
    state = author_state(1, {"2023": 50}, works_count=10)
    obs = observe(AuthorRegistered(author_id="a1", author=state))
    assert any("more than works_count" in a for a in obs.anomalies)
    inputs = signals.score_inputs(signals.apply({}, obs), scoring.CURRENT)
    assert inputs is not None and inputs.recent_works == 10


@pytest.mark.parametrize(
    "patch, error",
    [
        ({"author": {"works_count": -3}}, "works_count"),
        ({"author": {"record_verification_level": "L9"}}, "record_verification_level"),
    ],
)
def test_the_contract_refuses_negative_counts_and_unknown_levels(patch: dict[str, dict[str, Any]], error: str) -> None:
    env = Envelope.wrap(AuthorRegistered(author_id="a1", author=author_state(1)), producer="test")
    doc = json.loads(env.to_bytes())
    doc["data"]["author"].update(patch["author"])
    with pytest.raises(DecodeError, match=error):
        decode("profile.events", json.dumps(doc).encode())


def test_a_claims_level_must_be_known() -> None:
    state = AuthorClaimState(claimed=True, verification_level="L2", revision=1)
    env = Envelope.wrap(
        VerificationLevelChanged(author_id="a1", verification_level="L2", author_claim=state), producer="test"
    )
    doc = json.loads(env.to_bytes())
    doc["data"]["verification_level"] = doc["data"]["author_claim"]["verification_level"] = "L7"
    with pytest.raises(DecodeError):
        decode("claims.events", json.dumps(doc).encode())


def history_of_events(rng: random.Random) -> list[EventModel]:
    """A plausible history: profile revisions, claim changes and follower counts, plus duplicates."""
    events: list[EventModel] = [AuthorRegistered(author_id="a1", author=author_state(1))]
    events += [work_added(r, extra_2024=r - 1) for r in range(2, rng.randint(2, 12))]
    events += [
        claim(1, True, "L2"),
        VerificationLevelChanged(
            author_id="a1",
            verification_level="L3",
            previous_level="L2",
            author_claim=AuthorClaimState(claimed=True, owner_user_id="u1", verification_level="L3", revision=2),
        ),
    ]
    if rng.random() < 0.5:
        events.append(claim(3, False, None))
    events += [FollowerCountChanged(author_id="a1", count=rng.randint(0, 5000), revision=r) for r in range(1, 8)]
    events += rng.sample(events, k=min(5, len(events)))  # redeliveries
    return events


@given(st.randoms(use_true_random=False), st.randoms(use_true_random=False))
def test_the_score_is_the_same_whatever_the_order_of_the_events(
    history_rng: random.Random, shuffle_rng: random.Random
) -> None:
    events = history_of_events(history_rng)
    in_order = fold(events)
    shuffled = list(events)
    shuffle_rng.shuffle(shuffled)
    assert fold(shuffled) == in_order
    assert score(fold(shuffled)) == score(in_order)
