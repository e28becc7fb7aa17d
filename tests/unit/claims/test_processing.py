"""Healing what an interrupted attempt left: the record's claim state from unpublished events."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts import Envelope
from contracts.events.claims import AuthorClaimState, ClaimApproved
from services.claims.processing import _heal_authors
from services.claims.rules import AuthorRecord, Book, Claim, Limits, Slots

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_author_state_is_healed_from_the_newest_unpublished_event() -> None:
    state = AuthorClaimState(
        claimed=True, owner_user_id="u1", claim_id="c1", verification_level="L2", since=NOW, revision=2
    )
    event = Envelope.wrap(
        ClaimApproved(claim_id="c1", author_id="a1", user_id="u1", author_claim=state, verification_level="L2"),
        producer="claims",
    )
    claim = Claim(
        "c1",
        "a1",
        "u1",
        "approved",
        NOW,
        NOW,
        outbox=[{"topic": "claims.events", "key": "a1", "envelope": event.model_dump(mode="json")}],
    )
    book = Book({"a1": AuthorRecord("a1")}, {"c1": claim}, Slots({}, Limits()))
    _heal_authors(book, [claim])  # the claim was saved, its author was not
    assert book.authors["a1"].claim == state and book.dirty_authors == {"a1"}
    book.dirty_authors.clear()
    _heal_authors(book, [claim])  # already current: nothing to write
    assert book.dirty_authors == set()
