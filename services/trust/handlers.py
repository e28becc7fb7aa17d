"""The consumer of profile.events, claims.events and follows.events: signals in bulk.

Per batch: one read of the authors concerned, the pure reducer over their events in
partition order, one bulk write of the signals that changed (each source's state guarded
by its revision in the filter, so a concurrent writer holding a newer one wins), each
marking its author dirty (due after the coalescing window), then the due authors handed
to the recompute loop of this process (``on_due``), which scores them later.

When is an author due: ``window`` after its last signal change, and at the latest
``max_delay`` after its first unscored one, so that a steady trickle of events cannot
postpone its score forever. Both are measured from when the consumer has read what the
log holds, though, not from when it happened to handle a batch: while any of the
author's partitions (its key's partition number in each input topic) still has records
in the log behind the batch (a backlog: the consumer is catching up), more of the burst
may be in them, so the author is held back until a later batch finds all of them read
to their end (then due ``window`` later), or until their records show that
``burst_span`` has passed in the events' own time since the author's first unscored
event (a trickle, read late). Measured in the consumer's time instead, a burst of 500
events read slowly (a loaded machine, a consumer catching up) was split into two
recomputations whenever reading it took longer than the window or the cap. And
``burst_span`` is not ``max_delay``: the cap bounds the latency of a live trickle, a
backlog is not read live, and a burst whose events were written over more than the cap
(an importer slowed down) is still one burst.
(All input topics have the same partition count and key, so an author's events are in
the same partition number of each.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.events.trust import TrustScoreChanged
from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from services.trust import signals
from services.trust.recompute import score_of
from services.trust.store import Held, Score, SignalWrite, TrustStore, history_document

log = get_logger(__name__)
HOLD_BACK_LIMIT = timedelta(seconds=60)


class SignalHandler:
    def __init__(
        self,
        store: TrustStore,
        *,
        window_ms: int,
        max_delay_ms: int,
        burst_span_ms: int,
        on_due: Callable[[dict[str, datetime]], None] = lambda due: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.on_due = on_due
        self.window = timedelta(milliseconds=window_ms)
        self.max_delay = timedelta(milliseconds=max_delay_ms)
        self.burst_span = timedelta(milliseconds=burst_span_ms)
        self.clock = clock
        # Authors held back until the consumer reads their partitions to the end:
        # partition number -> author -> event time of the author's first unscored event.
        self._held_back: dict[int, dict[str, datetime]] = {}
        # When a batch last brought records of each partition number (any input topic).
        self._partition_read_at: dict[int, datetime] = {}
        # The latest event time read per (topic, partition): how far the log was read.
        self._read_up_to: dict[tuple[str, int], datetime] = {}

    def held_back(self) -> set[str]:
        """Authors held back on purpose, not left behind: the recompute loop's sweep leaves
        them to this handler. Only while batches keep reading their partition number: one
        not read for a minute (revoked in a rebalance, or the consumer stalled) no longer
        holds its authors back (batches are what tell how far the log was read). Counted
        per author instead, an author whose follower count was read a minute before its
        profile events (the partitions of a long backlog are read at different paces) was
        taken by the sweep, scored and published twice."""
        limit = self.clock() - HOLD_BACK_LIMIT
        return {
            a
            for partition, authors in self._held_back.items()
            if self._partition_read_at.get(partition, limit) > limit
            for a in authors
        }

    async def __call__(self, batch: Sequence[Incoming[Any]]) -> None:
        observations: dict[str, list[signals.Observation]] = {}
        events: dict[str, list[Incoming[Any]]] = {}
        for item in batch:
            obs = signals.observe(item)
            if obs.anomalies:
                log.warning(
                    "impossible_signal_values_dropped",
                    author_id=obs.author_id,
                    anomalies=list(obs.anomalies),
                    correlation_id=item.envelope.correlation_id,
                    event_id=str(item.envelope.event_id),
                )
            observations.setdefault(obs.author_id, []).append(obs)
            events.setdefault(obs.author_id, []).append(item)
        if not observations:
            self.on_due(self._release(batch, {}, {}, self.clock()))
            return
        held = await self.store.load(list(observations))
        now = self.clock()
        writes, due, hold = [], {}, {}
        holding = {a for authors in self._held_back.values() for a in authors}
        for author_id, author_obs in observations.items():
            before = held.get(author_id)
            write, wait_for = self._update(author_id, before, author_obs, events[author_id], now)
            if write is None:
                # Nothing newer: a redelivery. If what it wrote is still unscored and this
                # process does not hold the author back, it is scheduled again (the first
                # delivery may have stored it and died, or been cut off, before scheduling).
                if before is not None and before.due_at is not None and author_id not in holding:
                    due[author_id] = before.due_at
                continue
            writes.append(write)
            if wait_for is not None:
                hold[author_id] = wait_for
            else:
                due[author_id] = write.due_at
        await self.store.save_signals(writes)
        self.on_due(self._release(batch, due, hold, now))

    def _release(
        self,
        batch: Sequence[Incoming[Any]],
        due: dict[str, datetime],
        hold: dict[str, tuple[int, datetime]],
        now: datetime,
    ) -> dict[str, datetime]:
        """The authors due after this batch: those it made due, plus those held back on a
        partition number now read to its end in every input topic, or read past their cap."""
        for authors in self._held_back.values():
            for author_id in due.keys() | hold.keys():
                authors.pop(author_id, None)
        for author_id, (partition, burst_from) in hold.items():
            self._held_back.setdefault(partition, {})[author_id] = burst_from
        for item in batch:
            self._partition_read_at[item.partition] = now
            tp = (item.topic, item.partition)
            self._read_up_to[tp] = max(self._read_up_to.get(tp, item.envelope.occurred_at), item.envelope.occurred_at)
        backlog = batch[-1].backlog if batch else frozenset()
        for partition, authors in list(self._held_back.items()):
            behind = [tp for tp in backlog if tp[1] == partition]
            if not behind:
                release = dict.fromkeys(authors, now + self.window)
            else:
                marks = [self._read_up_to.get(tp) for tp in behind]
                read_up_to = None if None in marks else min(m for m in marks if m is not None)
                release = (
                    {}
                    if read_up_to is None
                    else {a: now for a, burst_from in authors.items() if read_up_to - burst_from >= self.burst_span}
                )
            for author_id in release:
                del authors[author_id]
            due.update(release)
            if not authors:
                del self._held_back[partition]
        return due

    def _update(
        self,
        author_id: str,
        held: Held | None,
        author_obs: list[signals.Observation],
        items: list[Incoming[Any]],
        now: datetime,
    ) -> tuple[SignalWrite | None, tuple[int, datetime] | None]:
        """The author's write (None if no signal is newer than the held one) and, if it is
        held back, the partition it waits for and its burst's start."""
        before = held.signals if held is not None else {}
        after = before
        for obs in author_obs:
            after = signals.apply(after, obs)
        changed = {k: after[k] for k in signals.SOURCES if k in after and after[k] is not before.get(k)}
        if not changed:
            return None, None
        wait_for = None
        dirty_since = (held and held.dirty_since) or now
        burst_from = (held and held.burst_from) or min(i.envelope.occurred_at for i in items)
        partition = items[-1].partition
        behind = any(p == partition for _, p in items[-1].backlog)
        if behind and max(i.envelope.occurred_at for i in items) - burst_from < self.burst_span:
            wait_for = (partition, burst_from)
            # Stored for a process that did not consume it (this one died): the sweep.
            due_at = now + self.burst_span
        else:
            due_at = min(now + self.window, dirty_since + self.max_delay)
        # Every change marks the author dirty, registered or not: a pass scores it, or
        # (no profile yet) only clears the mark. So a signal written while a pass scores
        # the author is never left unscored, whoever wrote it.
        write = SignalWrite(author_id, changed, held is not None, dirty_since, burst_from, due_at)
        return write, wait_for


class ScoreHistory:
    """trust.events -> ``trust_history``, live and in a rebuild alike: each entry is made of
    its event alone, recorded once the event is in the log (see the README: History)."""

    def __init__(self, store: TrustStore) -> None:
        self.store = store

    async def __call__(self, batch: Sequence[Incoming[TrustScoreChanged]]) -> None:
        await self.store.record_history([history_document(i.envelope, i.payload) for i in batch])


class PublishedScores:
    """Rebuild only: trust.events -> each author's latest published score.

    A rebuild does not recompute: coalescing depends on timing, so scores computed again
    could differ from the ones the log holds. It takes each author's latest published
    score from the service's own output instead."""

    def __init__(self, store: TrustStore) -> None:
        self.store = store

    async def __call__(self, batch: Sequence[Incoming[TrustScoreChanged]]) -> None:
        latest: dict[str, Score] = {}
        for item in batch:
            held = latest.get(item.payload.author_id)
            if held is None or item.payload.revision > held["revision"]:
                latest[item.payload.author_id] = score_of(item.payload)
        await self.store.adopt_scores(latest)
