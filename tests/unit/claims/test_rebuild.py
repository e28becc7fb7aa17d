"""The rebuild's fold, on in-memory books: what a live book decided, told by its events
only, gives the same claims, records and slots, whatever order the inputs came in."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts import Envelope
from contracts.envelope import EventModel
from contracts.events.claims import (
    ClaimEvidenceSubmitted,
    ClaimRequested,
    ClaimReviewed,
    ClaimWithdrawn,
    Evidence,
)
from contracts.events.common import Affiliation
from contracts.events.profile import AuthorRegistered, AuthorState, AuthorUpdated
from service_runtime.delivery import Incoming
from services.claims.processing import INPUTS, expiry_cause
from services.claims.rebuild import FACTS, fold
from services.claims.rules import UNCLAIMED, Book, Claim, Limits, Slots, slot_of

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WAIT = timedelta(minutes=10)
ORCID = "0000-0002-1825-0097"
EMAIL_OK = Evidence(email="me@cs.stanford.edu", email_verified=True)
REVIEW = Evidence(statement="please review")
DEFAULT_LIMITS = Limits()


def incoming(payload: EventModel, at: datetime, cause: Envelope | None = None, offset: int = 0) -> Incoming[Any]:
    env = Envelope.wrap(payload, producer="test", cause=cause, occurred_at=at)
    return Incoming(env, payload, str(payload.topic), 0, offset)


def registered(author_id: str, revision: int = 1, domains: tuple[str, ...] = ("stanford.edu",)) -> EventModel:
    state = AuthorState(
        author_id=author_id,
        display_name=f"Author {author_id}",
        orcid=ORCID if author_id.endswith("0") else None,
        affiliation=Affiliation(name="Stanford", domains=list(domains)),
        works_count=1,
        record_verification_level="L1",
        revision=revision,
    )
    model = AuthorRegistered if revision == 1 else AuthorUpdated
    return model(author_id=author_id, author=state)


class Live:
    """A live book fed inputs one by one, keeping every event it emitted as the log would."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.book = Book({}, {}, Slots({}, limits), clock=T0 + timedelta(seconds=1))
        self.log: list[Incoming[Any]] = []
        self.n = 0

    def feed(self, payload: EventModel) -> None:
        self.n += 1
        item = incoming(payload, T0 + timedelta(seconds=self.n), offset=self.n)
        if payload.topic == "profile.events":
            self.log.append(item)  # the rebuild reads the identities from profile.events too
        for emit in INPUTS(item).apply(self.book):
            self.log.append(incoming(emit.payload, item.envelope.occurred_at, cause=item.envelope))

    def expire(self, claim_id: str) -> None:
        for emit in self.book.expire(claim_id, WAIT):
            self.log.append(incoming(emit.payload, T0, cause=None))
        assert expiry_cause(claim_id)  # (live derives the event ids from it)


def rebuilt(log: list[Incoming[Any]]) -> Book:
    book = Book({}, {}, Slots({}, Limits()), clock=T0)
    fold(book, [FACTS(item) for item in log])
    return book


def held(slots: Slots) -> dict[str, dict[str, list[str]]]:
    """Each user holding a slot: the claims, sorted, per kind."""
    users = {user for (_, user), ids in slots.holders.items() if ids}
    return {u: {kind: sorted(slots.holders.get((kind, u), [])) for kind in ("open", "approved")} for u in users}


def slots_of(claims: Iterable[Claim]) -> dict[str, dict[str, list[str]]]:
    """Each user's slots as the claims' statuses say."""
    out: dict[str, dict[str, list[str]]] = {}
    for claim in claims:
        kind = slot_of(claim.status)
        if kind is not None:
            out.setdefault(claim.user_id, {"open": [], "approved": []})[kind].append(claim.claim_id)
    return {user: {kind: sorted(ids) for kind, ids in by_kind.items()} for user, by_kind in out.items()}


def assert_same(live: Book, copy: Book) -> None:
    assert copy.claims == live.claims
    stored = {a: r for a, r in live.authors.items() if r.identity is not None or r.claim != UNCLAIMED}
    assert copy.authors == stored
    assert held(copy.slots) == held(live.slots) == slots_of(live.claims.values())


def mixed(live: Live) -> None:
    """Racing claims, waits decided by their author or expired, evidence, reviews,
    withdrawals, revocations, refusals and the per-user limits."""
    live.feed(registered("a0"))
    live.feed(registered("a1"))
    for i in range(4):  # racing on a0: the first automatic one wins
        live.feed(ClaimRequested(claim_id=f"race{i}", author_id="a0", user_id=f"r{i}", evidence=EMAIL_OK))
    live.feed(ClaimRequested(claim_id="wait", author_id="late", user_id="w", evidence=REVIEW))
    live.feed(ClaimEvidenceSubmitted(claim_id="wait", author_id="late", user_id="w", evidence=EMAIL_OK))
    live.feed(ClaimRequested(claim_id="ghost", author_id="never", user_id="g"))
    live.expire("ghost")
    live.feed(registered("late"))
    for i in range(5):  # over the open limit: two refused
        live.feed(ClaimRequested(claim_id=f"busy{i}", author_id="a1" if i == 0 else f"b{i}", user_id="busy"))
        if i:
            live.feed(registered(f"b{i}"))
    live.feed(ClaimWithdrawn(claim_id="busy0", author_id="a1", user_id="busy"))
    live.feed(ClaimRequested(claim_id="busy5", author_id="a1", user_id="busy", evidence=REVIEW))
    live.feed(ClaimReviewed(claim_id="busy5", author_id="a1", reviewer_id="rev", decision="approve", reason="ok"))
    live.feed(ClaimReviewed(claim_id="race0", author_id="a0", reviewer_id="rev", decision="approve", reason="ok"))
    live.feed(ClaimReviewed(claim_id="race0", author_id="a0", reviewer_id="rev", decision="revoke", reason="no"))
    live.feed(ClaimReviewed(claim_id="race0", author_id="a0", reviewer_id="rev", decision="reject", reason="x"))
    live.feed(ClaimWithdrawn(claim_id="nope", author_id="a0", user_id="x"))
    live.feed(registered("a0", revision=2, domains=("mit.edu",)))
    live.feed(
        ClaimRequested(
            claim_id="again", author_id="a0", user_id="r1", evidence=Evidence(orcid=ORCID, orcid_authenticated=True)
        )
    )
    live.feed(ClaimWithdrawn(claim_id="again", author_id="a0", user_id="r1"))


def test_the_fold_of_the_events_equals_the_live_book() -> None:
    live = Live()
    mixed(live)
    assert live.book.claims["race0"].status == "revoked" and live.book.claims["again"].status == "withdrawn"
    assert live.book.claims["ghost"].reason == "unknown_author" and live.book.claims["wait"].status == "approved"
    assert [live.book.claims[f"busy{i}"].status for i in range(6)] == [
        "withdrawn",
        "needs_review",
        "needs_review",
        "rejected",
        "rejected",
        "approved",
    ]
    assert_same(live.book, rebuilt(live.log))


def test_events_read_twice_change_nothing() -> None:
    live = Live()
    mixed(live)
    twice = [item for item in live.log for _ in range(2)]
    assert_same(live.book, rebuilt(twice))


def test_any_interleaving_of_the_authors_gives_a_fold_equal_to_its_live_book() -> None:
    """The same inputs, each author's in its own order (a partition), interleaved at random:
    live decides differently (which claims get the user's last open slots), and each
    fold equals its own live book."""

    def steps(author: str) -> list[Callable[[Live], None]]:
        return [
            lambda lv: lv.feed(ClaimRequested(claim_id=f"{author}-x", author_id=author, user_id="shared")),
            lambda lv: lv.feed(registered(author)),
            lambda lv: lv.feed(
                ClaimRequested(claim_id=f"{author}-y", author_id=author, user_id=f"own-{author}", evidence=EMAIL_OK)
            ),
            lambda lv: lv.feed(ClaimWithdrawn(claim_id=f"{author}-x", author_id=author, user_id="shared")),
        ]

    outcomes = set()
    for seed in range(8):
        per_author = {f"p{i}": steps(f"p{i}") for i in range(6)}
        live = Live(Limits(max_open_claims_per_user=2))
        turns = [a for a, todo in per_author.items() for _ in todo]
        random.Random(seed).shuffle(turns)
        for a in turns:
            per_author[a].pop(0)(live)
        assert_same(live.book, rebuilt(live.log))
        outcomes.add(tuple(sorted((cid, c.status, c.reason) for cid, c in live.book.claims.items())))
    assert len(outcomes) > 1, "the interleavings should have led live to different decisions"
