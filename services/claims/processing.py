"""The live path: inputs applied to the store, their events published through the outbox.

One attempt per batch: load a book (the records, the claims named and every open or
approved claim of the records, the users' slots), heal what an interrupted earlier attempt
left (a record's claim state from its claims' ``author_claim``; slots from claim statuses),
apply the inputs in partition order (``rules``), then write, each write guarded by what
was read (``store.save``: slots taken, claims with their new events in their ``outbox``,
records, slots freed), and deliver the outboxes (``service_runtime.outbox``): what an
earlier attempt left in them first, then the new events. A write that finds a document
changed by another writer (a replica, the sweeper) fails the attempt: read and decide
again (``retry_conflicts``).

A crash anywhere leaves the batch uncommitted; its redelivery finds the inputs applied
(nothing is decided twice) and publishes what the outboxes still hold, under the same
event ids; the runtime's sweeper publishes what no input comes back for.

Refusals (a command that changes nothing) are published directly: nothing is stored for
them to travel with, and a redelivered command derives them again under the same ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.envelope import Envelope, deterministic_event_id
from contracts.events.claims import ClaimEvidenceSubmitted, ClaimRequested, ClaimReviewed, ClaimWithdrawn
from contracts.events.profile import AuthorRegistered, AuthorUpdated, WorkAdded, WorkUpdated
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from service_runtime.logging import get_logger
from service_runtime.offsets import ReadHorizon
from service_runtime.outbox import Outbox, retry_conflicts
from service_runtime.publishing import EventPublisher, Outgoing
from services.claims.rules import Book, Emit, Identity, Limits
from services.claims.settings import ClaimsSettings
from services.claims.store import ClaimsStore, Loaded

log = get_logger(__name__)

Step = Callable[[Book], list[Emit]]
ProfileEvent = AuthorRegistered | AuthorUpdated | WorkAdded | WorkUpdated


@dataclass(frozen=True, slots=True)
class Input:
    """What an input names (to load the book) and what it does to the book."""

    author_id: str
    claim_id: str | None
    user_id: str | None
    apply: Step


def _requested(p: ClaimRequested, item: Incoming[ClaimRequested]) -> Input:
    cause, at = _cause(item)
    return Input(p.author_id, p.claim_id, p.user_id, lambda book: book.request(p, cause, at))


def _evidence(p: ClaimEvidenceSubmitted, item: Incoming[ClaimEvidenceSubmitted]) -> Input:
    cause, at = _cause(item)
    return Input(p.author_id, p.claim_id, p.user_id, lambda book: book.submit_evidence(p, cause, at))


def _withdrawn(p: ClaimWithdrawn, item: Incoming[ClaimWithdrawn]) -> Input:
    cause, at = _cause(item)
    return Input(p.author_id, p.claim_id, p.user_id, lambda book: book.withdraw(p, cause, at))


def _reviewed(p: ClaimReviewed, item: Incoming[ClaimReviewed]) -> Input:
    cause, at = _cause(item)
    return Input(p.author_id, p.claim_id, None, lambda book: book.review(p, cause, at))


def identity_of(p: ProfileEvent) -> Identity:
    author = p.author
    return Identity(
        author.display_name,
        author.orcid,
        tuple(author.affiliation.domains) if author.affiliation else (),
        author.revision,
    )


def _profile(p: ProfileEvent, item: Incoming[ProfileEvent]) -> Input:
    cause, at = _cause(item)
    identity = identity_of(p)
    return Input(p.author_id, None, None, lambda book: book.author_seen(p.author_id, identity, cause, at))


def _cause(item: Incoming[Any]) -> tuple[str, datetime]:
    return str(item.envelope.event_id), item.envelope.occurred_at


# The live consumer's inputs, one handler per payload type: commands of webapp.claims and
# the profile events that carry an author's identity (each the full AuthorState).
INPUTS = (
    Dispatch[Input]()
    .on(ClaimRequested, handler=_requested)
    .on(ClaimEvidenceSubmitted, handler=_evidence)
    .on(ClaimWithdrawn, handler=_withdrawn)
    .on(ClaimReviewed, handler=_reviewed)
    .on(AuthorRegistered, handler=_profile)
    .on(AuthorUpdated, handler=_profile)
    .on(WorkAdded, handler=_profile)
    .on(WorkUpdated, handler=_profile)
)

# An emit with what caused it: the input's envelope, or (an expiry) the id it derives from.
Caused = tuple[Emit, Envelope | str]


class ClaimsProcessor:
    def __init__(self, store: ClaimsStore, outbox: Outbox, publisher: EventPublisher, settings: ClaimsSettings) -> None:
        self.store = store
        self.outbox = outbox
        self.publisher = publisher
        self.settings = settings
        self.limits = Limits(settings.max_open_claims_per_user, settings.max_approved_claims_per_user)
        # How far this service's consumer group has read profile.events (see ``sweep_once``).
        self.profile_read = ReadHorizon(
            settings.kafka_bootstrap_servers, settings.consumer_group, [settings.physical_topic(Topic.PROFILE_EVENTS)]
        )

    @property
    def wait(self) -> timedelta:
        return timedelta(seconds=self.settings.pending_author_timeout_s)

    # --- consumed batches -------------------------------------------------------------

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        # webapp.claims and profile.events are read by one consumer (both keyed by author,
        # the same partition counts): one writer at a time decides for an author.
        inputs = [(item.envelope, INPUTS(item)) for item in batch]

        async def attempt() -> None:
            loaded = await self.store.load_book(
                {i.author_id for _, i in inputs},
                {i.claim_id for _, i in inputs if i.claim_id},
                {i.user_id for _, i in inputs if i.user_id},
                self.limits,
                clock=datetime.now(UTC),
                causes=(str(envelope.event_id) for envelope, _ in inputs),
            )
            loaded.book.heal()
            await self._commit(loaded, [(e, envelope) for envelope, i in inputs for e in i.apply(loaded.book)])

        await retry_conflicts(attempt, attempts=self.settings.write_conflict_attempts, what="claims batch")

    # --- the sweeper ------------------------------------------------------------------

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception as exc:  # a store outage must not end the sweeper
                log.warning("claims_sweep_failed", error=repr(exc))
            await asyncio.sleep(self.settings.sweep_interval_s)

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Reject claims whose author never arrived; how many. Safe with several replicas:
        writes are guarded, event ids derive from the claim.

        A claim waits its time, and then until this service has read profile.events up to
        the end of its wait: under a backlog, an author registered before that moment may
        not be read yet, and is not unknown."""
        now = now or datetime.now(UTC)
        due = await self.store.waiting_before(now - self.wait)
        if due:
            read = await self.profile_read.try_advance(now)
            if read is None:
                due = []
            elif read < now:
                due = await self.store.waiting_before(read - self.wait)
        if not due:
            return 0
        expired = 0

        async def attempt() -> None:
            nonlocal expired
            loaded = await self.store.load_book(
                {c.author_id for c in due},
                {c.claim_id for c in due},
                {c.user_id for c in due},
                self.limits,
                clock=now,
            )
            loaded.book.heal()
            emits: list[Caused] = []
            for claim in due:
                emits += [(e, expiry_cause(claim.claim_id)) for e in loaded.book.expire(claim.claim_id, self.wait)]
            await self._commit(loaded, emits)
            expired = len({e.claim_id for e, _ in emits})

        await retry_conflicts(attempt, attempts=self.settings.write_conflict_attempts, what="claims expiry")
        return expired

    # --- one attempt --------------------------------------------------------------------

    async def _commit(self, loaded: Loaded, emits: list[Caused]) -> None:
        """Write what the book changed with its events in the claims' outboxes, then
        publish: per claim, what an earlier attempt left first."""
        book = loaded.book
        book.slots.reconcile(book.claims.values())
        fresh: dict[str, list[Outgoing]] = {}
        refusals: list[Outgoing] = []
        for emit, cause in emits:
            envelope = cause if isinstance(cause, Envelope) else None
            outgoing = self.publisher.outgoing(
                emit.payload,
                cause=envelope,
                event_id=deterministic_event_id(envelope.event_id if envelope else cause, *emit.id_parts),
                correlation_id=None if envelope else f"claim:{emit.claim_id}",
            )
            if emit.claim_id is None:
                refusals.append(outgoing)
            else:
                fresh.setdefault(emit.claim_id, []).append(outgoing)
        await self.store.save(loaded, fresh)
        deliver = {cid: [*loaded.pending.get(cid, []), *fresh.get(cid, [])] for cid in {*loaded.pending, *fresh}}
        await self.outbox.deliver(self.store.claims, dict(sorted(deliver.items())))
        await self.publisher.publish(refusals)


def expiry_cause(claim_id: str) -> str:
    """The cause of a waiting claim's expiry: derived from the claim, so every replica
    names it alike."""
    return str(deterministic_event_id("claims.pending_author_expired", claim_id))
