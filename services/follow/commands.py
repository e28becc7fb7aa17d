"""Follow and unfollow commands: edges, exact counts, follows parked for unknown authors.

Per batch, for all its authors together (one read of the authors, one of the edges
concerned, one bulk write of the decisions, one of the edges, one publish):

1. an author whose document still holds events in its outbox (the process died after a
   decision, before publishing it) gets their edges written and is published first;
2. commands at or before the author's applied position are passed over (a redelivery);
3. the author's commands are decided (``rules.decide``: parked follows first once the
   author is known) against its state and the current edges of the users concerned;
4. each decision is written in ONE update of the author document, guarded by the version
   it was taken against: count, revisions, parked follows, the command position, and the
   events it causes pushed onto the document's outbox (the commit point). An author that
   another writer changed meanwhile (a second replica) is read and decided again;
5. the edges the events say are written (guarded by revision), then the events published
   and pulled from the outbox (``service.outbox.deliver``).

A crash after 4 leaves the events in the outbox: the next batch of that author does 1; if
none comes, the runtime's sweeper publishes them and ``ledger.EdgeHealer`` writes their
edges from follows.events. A decision waits until its author's edges are written up to
its revision (``edges_revision``), so it never decides on edges a crash left behind.

The sweeper (``sweep_forever``) decides the parked follows of authors that became known,
or whose wait is over, the same way, without a command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.envelope import Envelope, deterministic_event_id
from contracts.events.follows import FollowRequested, UnfollowRequested
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from service_runtime.dispatch import Dispatch
from service_runtime.logging import get_logger
from service_runtime.offsets import ReadHorizon
from service_runtime.outbox import Outbox, WriteConflict
from service_runtime.publishing import EventPublisher, Outgoing
from services.follow.ledger import EdgeEvents, as_incoming
from services.follow.rules import Cause, Command, Emit, decide, unknown_author_expired
from services.follow.settings import FollowSettings
from services.follow.store import AuthorCommit, AuthorRecord, FollowStore

log = get_logger(__name__)
# How often a decision whose edges are behind looks again (see ``_await_edges``).
_EDGES_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class Queued:
    """A command from the topic, and where it came from."""

    author_id: str
    command: Command
    partition: int
    offset: int


def _cause(item: Incoming[Any]) -> Cause:
    return Cause(item.envelope.event_id, item.envelope.correlation_id)


def _follow(p: FollowRequested, item: Incoming[FollowRequested]) -> Queued:
    command = Command("follow", p.user_id, item.envelope.occurred_at, _cause(item))
    return Queued(p.author_id, command, item.partition, item.offset)


def _unfollow(p: UnfollowRequested, item: Incoming[UnfollowRequested]) -> Queued:
    command = Command("unfollow", p.user_id, item.envelope.occurred_at, _cause(item))
    return Queued(p.author_id, command, item.partition, item.offset)


READ_COMMAND = Dispatch[Queued]().on(FollowRequested, handler=_follow).on(UnfollowRequested, handler=_unfollow)


def _applied_before(record: AuthorRecord, q: Queued) -> bool:
    return record.applied is not None and record.applied[0] == q.partition and q.offset <= record.applied[1]


def _log_unusual(
    records: Mapping[str, AuthorRecord],
    commands: Mapping[str, Sequence[Queued]],
    queues: Mapping[str, Sequence[Queued]],
) -> None:
    """Commands passed over as applied already (a redelivery), unfollows of an unknown
    author with no follow of theirs parked, and parked follows applied: all rare, and what
    to look at first when a follower count is off by one."""
    for author_id, record in records.items():
        passed = [q.offset for q in commands[author_id] if _applied_before(record, q)]
        if passed:
            log.info(
                "follow_commands_passed_over",
                author_id=author_id,
                offsets=passed,
                applied=record.applied,
                version=record.version,
            )
        if record.state.known:
            if record.state.parked:
                log.info(
                    "parked_follows_applied",
                    author_id=author_id,
                    follows=[(p.user_id, p.unfollow is not None) for p in record.state.parked],
                    version=record.version,
                )
            continue
        parked = {p.user_id for p in record.state.parked}
        for q in queues[author_id]:
            if q.command.kind == "follow":
                parked.add(q.command.user_id)
            elif q.command.user_id not in parked:
                log.info(
                    "unfollow_with_nothing_parked",
                    author_id=author_id,
                    user_id=q.command.user_id,
                    offset=q.offset,
                    exists=record.exists,
                    version=record.version,
                    applied=record.applied,
                )


class FollowCommands:
    accepts = READ_COMMAND.types

    def __init__(self, store: FollowStore, publisher: EventPublisher, outbox: Outbox, settings: FollowSettings) -> None:
        self.store = store
        self.publisher = publisher
        self.outbox = outbox
        self.settings = settings
        # How far the sources group has read profile.events (see ``_sources_read_until``).
        self._sources_read = ReadHorizon(
            settings.kafka_bootstrap_servers, settings.sources_group, [settings.physical_topic(Topic.PROFILE_EVENTS)]
        )

    async def handle(self, batch: Sequence[Incoming[Any]]) -> None:
        """webapp.follows: FollowRequested / UnfollowRequested, grouped by author in order."""
        by_author: dict[str, list[Queued]] = {}
        for item in batch:
            q = READ_COMMAND(item)
            by_author.setdefault(q.author_id, []).append(q)
        await self.decide_for(by_author)

    async def decide_for(self, commands: Mapping[str, Sequence[Queued]]) -> None:
        """Decide these authors' commands (none: their parked follows only), deciding again
        for an author another writer changed meanwhile."""
        todo = dict(commands)
        attempts = self.settings.write_conflict_attempts
        for attempt in range(1, attempts + 1):
            conflicted = await self._attempt(todo)
            if not conflicted:
                return
            log.info("write_conflict_retrying", what="follow decisions", authors=len(conflicted), attempt=attempt)
            todo = {a: commands[a] for a in conflicted}
            await asyncio.sleep(0.005 * attempt)
        raise WriteConflict(f"authors changed by another writer {attempts} times: {sorted(todo)[:5]}")

    async def _attempt(self, commands: Mapping[str, Sequence[Queued]]) -> set[str]:
        # How far profile.events has been read, BEFORE the authors: every registration
        # appended before that moment is then in the documents read next. Read the other
        # way round, a registration handled in between would leave its author unknown here
        # while the moment says it was read, and its follows would be rejected.
        sources_read_until = await self.store.sources_read_until()
        records = await self._current(list(commands))
        queues = {a: [q for q in commands[a] if not _applied_before(r, q)] for a, r in records.items()}
        _log_unusual(records, commands, queues)
        users = {
            a: {q.command.user_id for q in queues[a]} | {p.user_id for p in r.state.parked}
            for a, r in records.items()
            if r.state.known and (queues[a] or r.state.parked)
        }
        edges = await self.store.edges_of(users)
        wait_until = datetime.now(UTC) + timedelta(seconds=self.settings.unknown_author_wait_s)
        commits = []
        for author_id, record in records.items():
            queue = queues[author_id]
            decision = decide(
                author_id,
                record.state,
                [q.command for q in queue],
                edges.get(author_id, {}),
                wait_until=wait_until,
                sources_read_until=sources_read_until,
            )
            applied = (queue[-1].partition, queue[-1].offset) if queue else None
            # Nothing to write: nothing changed, and no position to keep (no command, or no
            # document yet: a command that changes nothing leaves no document behind).
            if not decision.changes_anything and (applied is None or not record.exists):
                continue
            commits.append(
                AuthorCommit(
                    record=record,
                    after=decision.state,
                    edges_changed=bool(decision.edges),
                    count_revision=decision.state.revision if decision.state.count != record.state.count else None,
                    parked_changed=decision.parked_changed,
                    applied=applied,
                    events=[self._outgoing(e) for e in decision.emits],
                )
            )
        conflicted = await self.store.commit(commits)
        await self._deliver({c.record.author_id: c.events for c in commits if c.record.author_id not in conflicted})
        return conflicted

    async def _current(self, author_ids: list[str]) -> dict[str, AuthorRecord]:
        """The authors as of their last decision: what a crash left in an outbox is written
        and published first, and edges a crash left behind are waited for."""
        records = await self.store.author_records(author_ids)
        left = {a: r.pending for a, r in records.items() if r.pending}
        if left:
            log.info("follow_outbox_left_behind", authors=len(left), events=sum(len(e) for e in left.values()))
            await self._deliver(left)
            records.update(await self.store.author_records(left))
        behind = {a: r.state.revision for a, r in records.items() if r.edges_behind}
        if behind:
            await self._await_edges(behind)
            records.update(await self.store.author_records(behind))
        return records

    async def _await_edges(self, revisions: Mapping[str, int]) -> None:
        """Wait until these authors' edges are written up to these revisions: a process died
        after deciding and before writing them, and the sweeper published the events
        without them; ``EdgeHealer`` writes them from follows.events."""
        polls = 0
        while True:
            written = await self.store.edges_revisions(revisions)
            behind = {a: r for a, r in revisions.items() if written.get(a, 0) < r}
            if not behind:
                return
            if polls % 100 == 0:
                log.warning("follow_edges_behind_waiting", authors=sorted(behind)[:5], waited_s=polls * _EDGES_POLL_S)
            await asyncio.sleep(_EDGES_POLL_S)
            polls += 1

    async def _deliver(self, events: Mapping[str, list[Outgoing]]) -> None:
        """Write the edges the events say, then publish the events and pull them from the
        authors' outboxes."""
        events = {a: e for a, e in events.items() if e}
        if not events:
            return
        await EdgeEvents().add([as_incoming(o) for e in events.values() for o in e]).write(self.store)
        await self.outbox.deliver(self.store.authors, events)

    def _outgoing(self, emit: Emit) -> Outgoing:
        payload = emit.payload
        envelope = Envelope.wrap(
            payload,
            producer=self.publisher.producer_name,
            event_id=deterministic_event_id(emit.cause.id, payload.event_type, *emit.id_parts),
            correlation_id=emit.cause.correlation_id,
        ).model_copy(update={"causation_id": emit.cause.id})
        return Outgoing(str(payload.topic), payload.key(), envelope)

    # --- the sweeper ----------------------------------------------------------------

    async def sweep_once(self) -> int:
        """Decide the parked follows of authors that are known by now (applied) or whose
        wait is over and profile.events read up to its end (rejected). Returns how many
        authors it decided for."""
        now = datetime.now(UTC)
        parked = await self.store.authors_with_parked()
        sources_read_until = await self._sources_read_until(now, parked)
        due = [
            d["_id"] for d in parked if d.get("known") or unknown_author_expired(d["parked_until"], sources_read_until)
        ]
        if due:
            await self.decide_for({a: () for a in due})
        return len(due)

    async def _sources_read_until(self, now: datetime, parked: list[dict[str, Any]]) -> datetime | None:
        """The moment up to which the sources consumer group has handled profile.events
        (stored, so the decisions of any replica read the same), advanced while an unknown
        author's wait is over and its follows wait for that reading."""
        waiting = [d["parked_until"] for d in parked if not d.get("known") and d["parked_until"] <= now]
        if not waiting:
            return None
        stored = await self.store.sources_read_until()
        if stored is not None and max(waiting) <= stored:
            return stored
        # Broker unreachable: this process's last reading, so the follows wait.
        reached = await self._sources_read.try_advance(now)
        if reached is not None and (stored is None or reached > stored):
            await self.store.advance_sources_read_until(reached)
            return reached
        return stored

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception as exc:  # a failed sweep is retried at the next tick
                log.warning("sweep_failed", error=repr(exc))
            await asyncio.sleep(self.settings.sweep_interval_s)
