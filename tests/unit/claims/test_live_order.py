"""The order a claims rebuild applies its inputs in: each partition in its own order, each
input where live saw it relative to its author's profile events (as claims.events says),
record timestamps only among inputs free to go."""

from __future__ import annotations

from contracts import Envelope
from contracts.envelope import EventModel
from contracts.events.claims import AuthorClaimState, ClaimRejected, ClaimRequested
from contracts.events.profile import AuthorRegistered, AuthorState
from service_runtime.delivery import Incoming
from services.claims.handlers import live_order


def record(payload: EventModel, at_ms: int, offset: int, partition: int = 0) -> Incoming:
    env = Envelope.wrap(payload, producer="test")
    return Incoming(env, payload, str(payload.topic), partition, offset, at_ms)


def requested(claim_id: str, author_id: str, at_ms: int, offset: int, partition: int = 0) -> Incoming:
    return record(
        ClaimRequested(claim_id=claim_id, author_id=author_id, user_id="u-" + claim_id), at_ms, offset, partition
    )


def profile(author_id: str, revision: int, at_ms: int, offset: int) -> Incoming:
    state = AuthorState(
        author_id=author_id, display_name="A", works_count=1, record_verification_level="L1", revision=revision
    )
    return record(AuthorRegistered(author_id=author_id, author=state), at_ms, offset)


def names(items: list[Incoming]) -> list[str]:
    return [
        f"{i.topic.split('.')[0]}:{getattr(i.payload, 'claim_id', None) or i.payload.author.revision}"  # type: ignore[attr-defined]
        for i in items
    ]


def test_a_claim_live_decided_at_once_goes_after_the_revision_it_saw() -> None:
    author = profile("a1", 1, at_ms=200, offset=0)
    claim = requested("c1", "a1", at_ms=100, offset=0)  # appended first, seen by live after the author
    assert names(live_order([claim, author], {})) == ["webapp:c1", "profile:1"]  # nothing said: by timestamp
    assert names(live_order([claim, author], {str(claim.envelope.event_id): 1})) == ["profile:1", "webapp:c1"]


def test_a_claim_live_parked_goes_before_the_authors_first_profile_event() -> None:
    author = profile("a1", 1, at_ms=100, offset=0)
    claim = requested("c1", "a1", at_ms=200, offset=0)
    later = requested("c2", "a1", at_ms=300, offset=1)  # nothing said of it: by timestamp
    order = live_order([author, claim, later], {str(claim.envelope.event_id): 0})
    assert names(order) == ["webapp:c1", "profile:1", "webapp:c2"]


def test_a_claim_goes_before_the_revision_after_the_one_it_saw() -> None:
    r1, r2 = profile("a1", 1, at_ms=100, offset=0), profile("a1", 2, at_ms=110, offset=1)
    claim = requested("c1", "a1", at_ms=500, offset=0)
    assert names(live_order([r1, r2, claim], {str(claim.envelope.event_id): 1})) == [
        "profile:1",
        "webapp:c1",
        "profile:2",
    ]


def test_an_expiry_goes_after_its_claim_and_before_the_authors_first_profile_event() -> None:
    author = profile("a1", 1, at_ms=100, offset=0)
    claim = requested("c1", "a1", at_ms=50, offset=0)
    expiry = record(
        ClaimRejected(
            claim_id="c1",
            author_id="a1",
            user_id="u-c1",
            reason="unknown_author",
            author_claim=AuthorClaimState(claimed=False, revision=1),
        ),
        at_ms=700,
        offset=0,
    )
    assert names(live_order([author, claim, expiry], {})) == ["webapp:c1", "claims:c1", "profile:1"]


def test_contradicting_constraints_still_give_every_input_once() -> None:
    author = profile("a1", 1, at_ms=100, offset=0)
    c1 = requested("c1", "a1", at_ms=50, offset=0)
    c2 = requested("c2", "a1", at_ms=60, offset=1)
    # c1 after the author, c2 (behind c1 in its partition) before it: no order satisfies both.
    order = live_order([author, c1, c2], {str(c1.envelope.event_id): 1, str(c2.envelope.event_id): 0})
    assert sorted(names(order)) == ["profile:1", "webapp:c1", "webapp:c2"]
    assert names(order).index("webapp:c1") < names(order).index("webapp:c2")
