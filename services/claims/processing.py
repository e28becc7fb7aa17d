"""Applying inputs to the store and publishing what they caused, crash-safe without transactions.

One attempt: load a book (authors, claims, slots), heal what an interrupted earlier attempt
left (author state from unpublished outbox events, slots from claim statuses), apply the
inputs in partition order (``rules``), then

1. take the new slots (atomic conditional writes: the cross-partition limits),
2. write claims (each with its new events in its ``outbox`` and the input ids applied),
   then authors, both version-guarded,
3. free released slots, publish every event, mark the outboxes published.

A crash anywhere leaves the input uncommitted; its redelivery finds the input applied
(nothing is decided twice) and publishes the outbox again, under the same event ids.
A concurrent writer (another replica, the sweeper) makes a guarded write fail: reload
and decide again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.envelope import Envelope, deterministic_event_id
from contracts.events.claims import (
    AuthorClaimState,
    ClaimEvidenceSubmitted,
    ClaimRejected,
    ClaimRequested,
    ClaimReviewed,
    ClaimWithdrawn,
)
from contracts.events.profile import AuthorState
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from service_runtime.offsets import ReadHorizon
from service_runtime.publishing import EventPublisher, Outgoing
from services.claims.rules import Book, Claim, Emit, Identity, Limits
from services.claims.settings import ClaimsSettings
from services.claims.store import ClaimsStore

log = get_logger(__name__)


class ConcurrentChanges(RuntimeError):
    """Other writers kept changing the same documents: the runtime retries the input."""


class ClaimsProcessor:
    def __init__(self, store: ClaimsStore, publisher: EventPublisher, settings: ClaimsSettings) -> None:
        self.store = store
        self.publisher = publisher
        self.settings = settings
        self.limits = Limits(settings.max_open_claims_per_user, settings.max_approved_claims_per_user)
        # Rebuild only: the slot refusals live published, by claim id (see ``Book._take``).
        self.live_refusals: dict[str, str] = {}
        # How far this service's consumer group has read profile.events (see ``sweep_once``).
        self.profile_read = ReadHorizon(
            settings.kafka_bootstrap_servers, settings.consumer_group, [settings.physical_topic(Topic.PROFILE_EVENTS)]
        )

    # --- consumed batches -------------------------------------------------------------

    async def handle(self, batch: Sequence[Incoming]) -> None:
        author_ids = {item.payload.author_id for item in batch}  # type: ignore[attr-defined]
        claim_ids = {p.claim_id for p in (i.payload for i in batch) if hasattr(p, "claim_id")}
        user_ids = {p.user_id for p in (i.payload for i in batch) if isinstance(p, ClaimRequested)}
        for _ in range(self.settings.conflict_attempts):
            book = await self.store.load_book(author_ids, claim_ids, user_ids, self.limits)
            if await self._commit(book, lambda b: self._apply(b, batch)):
                return
            log.info("claims_conflict_reloading", size=len(batch))
        raise ConcurrentChanges(f"documents kept changing under a batch of {len(batch)}")

    def _apply(self, book: Book, batch: Sequence[Incoming]) -> list[tuple[Emit, Envelope | str]]:
        out: list[tuple[Emit, Envelope | str]] = []
        book.live_refusals = self.live_refusals
        for item in batch:
            cause, now, p = str(item.envelope.event_id), item.envelope.occurred_at, item.payload
            if item.topic == Topic.PROFILE_EVENTS:
                author: AuthorState = p.author  # type: ignore[attr-defined]
                identity = Identity(
                    author.display_name,
                    author.orcid,
                    tuple(author.affiliation.domains) if author.affiliation else (),
                    author.revision,
                )
                emits = book.author_seen(author.author_id, identity, cause, now)
            elif isinstance(p, ClaimRequested):
                emits = book.request(p, cause, now)
            elif isinstance(p, ClaimEvidenceSubmitted):
                emits = book.submit_evidence(p, cause, now)
            elif isinstance(p, ClaimWithdrawn):
                emits = book.withdraw(p, cause, now)
            elif isinstance(p, ClaimReviewed):
                emits = book.review(p, cause, now)
            elif is_expiry(item):
                # Rebuild only: the live sweeper's decision, read back from claims.events
                # (it depended on the wall clock), applied where live took it.
                expiry = expiry_cause(p.claim_id)  # type: ignore[attr-defined]
                out += [(e, expiry) for e in book.expire(p.claim_id, expiry, self.wait)]  # type: ignore[attr-defined]
                continue
            else:
                emits = []
            out += [(e, item.envelope) for e in emits]
        return out

    @property
    def wait(self) -> timedelta:
        return timedelta(seconds=self.settings.pending_author_timeout_s)

    # --- the sweeper ------------------------------------------------------------------

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception as exc:  # a store outage must not end the sweeper
                log.warning("claims_sweep_failed", error=repr(exc))
            await asyncio.sleep(self.settings.sweep_interval_s)

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Reject claims whose author never arrived; publish outboxes a stopped writer left.
        Safe with several replicas: writes are guarded, event ids derive from the claim.

        A claim waits its time, and then until this service has read profile.events up to
        the end of its wait: under a backlog, an author registered before that moment may
        not be read yet, and is not unknown."""
        now = now or datetime.now(UTC)
        expired = await self.store.pending_since_before(now - self.wait)
        if expired:
            read = await self.profile_read.try_advance(now)
            if read is None:
                expired = []
            elif read < now:
                expired = await self.store.pending_since_before(read - self.wait)
        for claim in expired:
            cause = expiry_cause(claim.claim_id)
            for _ in range(self.settings.conflict_attempts):
                book = await self.store.load_book([claim.author_id], [claim.claim_id], [claim.user_id], self.limits)
                if await self._commit(
                    book, lambda b, c=claim, why=cause: [(e, why) for e in b.expire(c.claim_id, why, self.wait)]
                ):
                    break
        stale = await self.store.unpublished_before(now - timedelta(seconds=self.settings.outbox_grace_s))
        if stale:
            await self.publisher.publish([_outgoing(entry) for c in stale for entry in c.outbox])
            await self.store.mark_published(c.outbox_token for c in stale)
        return len(expired)

    # --- one attempt --------------------------------------------------------------------

    async def _commit(self, book: Book, apply: Any) -> bool:
        """``apply(book)`` returns each event with its cause: the input's envelope, or the
        id of a decision no input caused (a sweeper's expiry)."""
        pending = [c for c in book.claims.values() if c.outbox]
        republish = [_outgoing(entry) for c in pending for entry in c.outbox]
        _heal_authors(book, pending)
        emits = apply(book)
        book.slots.reconcile(book.claims.values())
        book.index_open_claims()
        fresh: list[Outgoing] = []
        for emit, cause in emits:
            envelope = cause if isinstance(cause, Envelope) else None
            parts = (envelope.event_id if envelope else cause, *emit.id_parts)
            outgoing = self.publisher.outgoing(
                emit.payload,
                cause=envelope,
                event_id=deterministic_event_id(*parts),
                correlation_id=None if envelope else f"claim:{getattr(emit.payload, 'claim_id', '')}",
            )
            fresh.append(outgoing)
            if emit.claim_id is not None:
                claim = book.claims[emit.claim_id]
                claim.outbox.append(_entry(outgoing))
                book.dirty_claims.add(claim.claim_id)
        if not await self.store.acquire_all(book.slots.acquired, self.limits, book.slots.released):
            return False
        token = uuid.uuid4().hex
        if not await self.store.save(book, token):
            return False
        await self.store.release_all(book.slots.released, self.limits)
        await self.publisher.publish(republish + fresh)
        # Earlier writes' tokens only when this book held every claim they tagged (and so
        # republished all their events); the others wait for their writer or the sweeper.
        covered = await self.store.covered_by((c.outbox_token for c in pending), book.claims)
        await self.store.mark_published([token, *covered])
        return True


def expiry_cause(claim_id: str) -> str:
    """The cause of a waiting claim's expiry: derived from the claim, so every replica and
    a rebuild name it alike."""
    return str(deterministic_event_id("claims.pending_author_expired", claim_id))


def is_expiry(item: Incoming) -> bool:
    """A claims.events record of the sweeper rejecting a claim whose author never came."""
    p = item.payload
    return item.topic == Topic.CLAIMS_EVENTS and isinstance(p, ClaimRejected) and p.reason == "unknown_author"


def _heal_authors(book: Book, pending: list[Claim]) -> None:
    """An earlier attempt wrote a claim but stopped before its author: the newest
    ``author_claim`` among the claim's unpublished events is the record's state."""
    for claim in pending:
        for entry in claim.outbox:
            data = entry["envelope"]["data"]
            if "author_claim" not in data:
                continue
            state = AuthorClaimState.model_validate(data["author_claim"])
            author = book.author(data["author_id"])
            if state.revision > author.claim.revision:
                author.claim = state
                book.dirty_authors.add(author.author_id)


def _entry(o: Outgoing) -> dict[str, Any]:
    return {"topic": o.topic, "key": o.key, "envelope": o.envelope.model_dump(mode="json")}


def _outgoing(entry: dict[str, Any]) -> Outgoing:
    return Outgoing(entry["topic"], entry["key"], Envelope.model_validate(entry["envelope"]))
