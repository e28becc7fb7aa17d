"""Recomputing scores of due authors in bulk, and publishing changes through the outbox.

One pass: lease the due authors (an inserted lease document each: two passes never hold
one author), compute each score from its stored signals, and store it, with the
TrustScoreChanged pushed onto the author's outbox when score or band moved, in one
single-document update whose filter holds the ``seq`` and score revision read (no signal
and no other score arrived meanwhile). Then, still under the leases, ``Outbox.deliver``:
publish (the author's older pending events first) and pull what was published, at once
(``remove_now``); then the leases go back, so two passes never publish the same event.

A crash anywhere leaves the event in the author's outbox: the next pass over the author
publishes it before anything newer, and the runtime's sweeper publishes what nobody
touches again, under the same event id, derived from (author, formula version, revision).
The history entry is not written here: ``handlers.ScoreHistory`` records it from
trust.events, so it exists exactly when the event does, live and in a rebuild alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.envelope import deterministic_event_id
from contracts.events.trust import ScoreComponent, ScoreInputs, TrustScoreChanged
from service_runtime.logging import get_logger
from service_runtime.outbox import Outbox
from service_runtime.retry import is_transient
from services.trust import scoring, signals
from services.trust.store import Author, Score, ScoreWrite, TrustStore

log = get_logger(__name__)
Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def describe_change(
    before: dict[str, Any] | None, after: dict[str, Any], before_version: int | None, after_version: int
) -> str:
    """Why the score moved, in words: which inputs changed since the last score."""
    if before is None:
        return "first score"
    parts = []
    if before_version is not None and before_version != after_version:
        parts.append(f"formula v{before_version} -> v{after_version}")
    for key, value in after.items():
        if before.get(key) != value:
            old = before.get(key)
            if isinstance(value, bool):
                parts.append(key if value else f"no longer {key}")
            else:
                parts.append(f"{key.replace('_', ' ')} {old} -> {value}")
    return "; ".join(parts)[:500] or "recomputed"


def score_of(event: TrustScoreChanged) -> Score:
    """The score an author holds after this TrustScoreChanged (what a pass stores with it)."""
    return {
        "score": event.score,
        "band": event.band,
        "verification_level": event.verification_level,
        "components": [c.model_dump() for c in event.components],
        "formula_version": event.formula_version,
        "revision": event.revision,
        "inputs": None if event.inputs is None else event.inputs.model_dump(),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class PassResult:
    stored: int  # scores stored (changed or not)
    skipped: list[str]  # authors another pass held


class Recomputer:
    def __init__(
        self,
        store: TrustStore,
        outbox: Outbox,
        *,
        lease_s: float = 30.0,
        formula: scoring.Formula = scoring.CURRENT,
        clock: Clock = _now,
        lease_retry_s: float = 0.2,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.lease_s = lease_s
        self.formula = formula
        self.clock = clock
        self.lease_retry_s = lease_retry_s
        self.failure_pause_s = 0.5  # a failed pass's authors are due again this much later
        self.stop_grace_s = 5.0  # how long passes under way may take to finish at stop
        self.started = clock()
        self.recomputations = 0  # scores stored by this process
        self.published = 0  # events this process published (its own, and pending ones it found)
        self._due: dict[str, datetime] = {}  # author -> when to recompute it (see ``schedule``)
        self._wakeup = asyncio.Event()
        self._running = 0  # passes of the loop under way
        # Authors this process's consumer holds back on purpose (see handlers): not orphans.
        self.held_back: Callable[[], set[str]] = set

    def schedule(self, due: dict[str, datetime]) -> None:
        """Authors whose signals this process just stored, and when each is due. The
        consumer calls this after each batch, so the loop finds due authors without
        reading the store (and wakes when the first is due); ``sweep`` reads the store
        for the rest (a restart, a replica that died)."""
        if due:
            self._due.update(due)
            self._wakeup.set()

    def idle(self) -> bool:
        """Nothing scheduled or being scored in this process (and nothing its consumer
        holds back)."""
        return not self._due and not self._running and not self.held_back()

    async def recompute(self, author_ids: Sequence[str], *, only_dirty: bool = False) -> int:
        """Score these authors (those another pass holds are skipped; with ``only_dirty``,
        those already scored from their current signals too) and publish their changes;
        returns how many scores were stored."""
        return (await self._pass(author_ids, only_dirty=only_dirty)).stored

    async def _pass(self, author_ids: Sequence[str], *, only_dirty: bool) -> PassResult:
        if not author_ids:
            return PassResult(0, [])
        now = self.clock()
        token, authors = await self.store.claim(author_ids, now, self.lease_s)
        held = {a.author_id for a in authors}
        stored = 0
        try:
            writes = [self._write(a) for a in authors if a.dirty or not only_dirty]
            # The store keeps milliseconds: the score's time as a reader will see it.
            scored_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
            stored = await self.store.save_scores(writes, scored_at)
            self.recomputations += stored
            if stored == len(writes):
                new = {w.author.author_id: w.event for w in writes if w.event is not None}
                deliveries = {
                    a.author_id: [*a.pending, *([new[a.author_id]] if a.author_id in new else [])] for a in authors
                }
            else:
                # Some author's signals moved meanwhile: publish what the outboxes hold now.
                deliveries = await self.store.pending(list(held))
            # Removed before the leases go back (not a moment later, off the path): so no other
            # pass reads these entries as pending and publishes them again, and the removal
            # does not race the next writes of the same authors (the store answers such
            # races with "deadlock detected"). Counted after the await: passes run at once,
            # and ``x += await f()`` reads x first.
            published = await self.outbox.deliver(
                self.store.authors, {a: events for a, events in deliveries.items() if events}, remove_now=True
            )
            self.published += published
        finally:
            await self.store.release(token, list(held))
        return PassResult(stored, [a for a in author_ids if a not in held])

    def _write(self, author: Author) -> ScoreWrite:
        """The score write of a leased author: its new score, and the TrustScoreChanged
        if score or band moved (the revision after the held one)."""
        inputs = signals.score_inputs(author.signals, self.formula)
        if inputs is None:  # not registered by profile: nothing to score, the dirty mark goes
            return ScoreWrite(author, None, None)
        result = scoring.compute(inputs, self.formula)
        snapshot = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
        components = [
            {"name": c.name, "signal": c.signal, "weight": c.weight, "cap": c.cap, "points": c.points}
            for c in result.components
        ]
        held = author.score
        revision = held["revision"] if held else 0
        event = None
        if held is None or held["score"] != result.score or held["band"] != result.band:
            revision += 1
            payload = TrustScoreChanged(
                author_id=author.author_id,
                score=result.score,
                band=result.band,
                verification_level=result.verification_level,
                components=[ScoreComponent(**c) for c in components],
                previous_score=held["score"] if held else None,
                previous_band=held["band"] if held else None,
                reason=describe_change(
                    held and held["inputs"], snapshot, held and held["formula_version"], result.formula_version
                ),
                formula_version=result.formula_version,
                revision=revision,
                inputs=ScoreInputs(**snapshot),
            )
            event_id = deterministic_event_id(author.author_id, "TrustScoreChanged", result.formula_version, revision)
            event = self.outbox.publisher.outgoing(payload, event_id=event_id)
        score: Score = {
            "score": result.score,
            "band": result.band,
            "verification_level": result.verification_level,
            "components": components,
            "formula_version": result.formula_version,
            "revision": revision,
            "inputs": snapshot,
        }
        return ScoreWrite(author, score, event)

    async def settle_rebuilt(self, batch: int = 500) -> None:
        """Rebuild only (a drain hook). The scores came from trust.events; rescore every
        author whose signals changed since, and keep the result where score and band are
        the published ones (a breakdown the live service computed without publishing).
        An author whose score would change stays dirty: deciding and publishing that
        change is the live service's job."""
        dirty = list(await self.store.due(self.clock() + timedelta(days=365), 10_000_000))
        for start in range(0, len(dirty), batch):
            token, authors = await self.store.claim(dirty[start : start + batch], self.clock(), self.lease_s)
            try:
                unchanged = [w for w in (self._write(a) for a in authors) if w.event is None]
                await self.store.save_scores(unchanged, self.clock())
            finally:
                await self.store.release(token, [a.author_id for a in authors])

    async def sweep(self, due_before: datetime) -> None:
        """Authors dirty and due before ``due_before`` that this process did not schedule
        (marked before a restart, or by a replica that died): an index read of those only.
        (Events left in outboxes are the runtime sweeper's.)"""
        now = self.clock()
        held_back = self.held_back()
        for author_id in await self.store.due(due_before, 100_000):
            if author_id not in held_back:
                self._due.setdefault(author_id, now)

    def _take_due(self, batch: int) -> list[tuple[datetime, str]]:
        """Up to ``batch`` scheduled authors due now, the most overdue first (no longer scheduled)."""
        now = self.clock()
        due = sorted((at, a) for a, at in self._due.items() if at <= now)[:batch]
        for _, a in due:
            del self._due[a]
        return due

    async def _run(self, due: list[tuple[datetime, str]]) -> None:
        """One pass over these due authors. Those another pass held (a replica, the rescore
        command) that may have read older signals are looked at again shortly; if the pass
        fails, all of them are due again a little later."""
        self._running += 1
        try:
            result = await self._pass([a for _, a in due], only_dirty=True)
        except Exception as exc:  # an outage, or a bug: scoring must not stop for good
            later = self.clock() + timedelta(seconds=self.failure_pause_s)
            for _, a in due:
                self._due.setdefault(a, later)
            if is_transient(exc):
                log.warning("recompute_transient_failure", error=repr(exc))
            else:
                log.exception("recompute_failed", error=repr(exc))
        else:
            retry = self.clock() + timedelta(seconds=self.lease_retry_s)
            for a in result.skipped:
                self._due.setdefault(a, retry)
        finally:
            self._running -= 1
            self._wakeup.set()

    async def run_due_once(self, batch: int) -> int:
        """One pass over up to ``batch`` due authors; returns how many were taken."""
        due = self._take_due(batch)
        if due:
            await self._run(due)
        return len(due)

    async def _sleep(self, longest_s: float, *, slot_free: bool) -> None:
        """Until something is scheduled, a pass ends, the first scheduled author is due (if
        a pass could start), or ``longest_s`` passed."""
        self._wakeup.clear()
        first = min(self._due.values(), default=None) if slot_free else None
        wait = longest_s if first is None else min(longest_s, (first - self.clock()).total_seconds())
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)

    async def loop(self, *, batch: int, passes: int, poll_s: float, sweep_s: float) -> None:
        """The service's background task: recompute due authors until cancelled, in up to
        ``passes`` passes of up to ``batch`` authors at once, each started as soon as
        authors are due and a pass is free (while one waits for the store or the broker,
        another works; each leases its own authors)."""
        # The first sweep (at start) takes every author due before this process began: the
        # ones its own consumer marks from then on, it schedules itself (a sweep counting
        # from its own moment could take one of them in the middle of its burst). Later
        # sweeps take those overdue by a whole period.
        due_before = self.started
        next_sweep = 0.0
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                if loop.time() >= next_sweep:
                    try:
                        await self.sweep(due_before)
                        next_sweep = loop.time() + sweep_s
                        due_before = self.clock()
                    except Exception as exc:
                        log.warning("recompute_sweep_failed", error=repr(exc))
                        next_sweep = loop.time() + poll_s
                while len(running) < passes and (due := self._take_due(batch)):
                    task = asyncio.create_task(self._run(due))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await self._sleep(poll_s, slot_free=len(running) < passes)
        finally:
            # Stopping: the passes under way finish (their events published, their leases
            # given back) unless they take too long; cut off, a pass leaves its leases to
            # expire and its stored events to the next pass or the outbox's sweeper.
            if running:
                _, late = await asyncio.wait(running, timeout=self.stop_grace_s)
                for task in late:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
