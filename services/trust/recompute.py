"""Recomputing scores of due authors in bulk, and publishing changes through the outbox.

One pass: lease the due authors (an inserted lease document each, so two replicas never
hold one author), compute each score from its stored signals, store the score and, when
score or band changed, the TrustScoreChanged in the author's own document (the outbox)
in the same single-document update, conditional on the signals read being still the
latest; then publish, and record the history, which is the acknowledgement: an outbox
whose event has no history entry is not published yet. A crash anywhere in between
leaves the outbox unacknowledged and the next pass (or the next process) publishes the
very same event: its id is derived from (author, formula version, revision).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.envelope import Envelope, deterministic_event_id
from contracts.events.trust import ScoreComponent, ScoreInputs, TrustScoreChanged
from contracts.topics import Topic
from service_runtime.logging import get_logger
from service_runtime.publishing import EventPublisher, Outgoing
from service_runtime.retry import TRANSIENT_ERRORS
from services.trust import scoring, signals
from services.trust.store import TrustStore, encode, history_key

log = get_logger(__name__)
Clock = Callable[[], datetime]
ACKNOWLEDGED_CACHE = 500_000


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


class Recomputer:
    def __init__(
        self,
        store: TrustStore,
        publisher: EventPublisher,
        *,
        lease_s: float = 30.0,
        formula: scoring.Formula = scoring.CURRENT,
        clock: Clock = _now,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.lease_s = lease_s
        self.formula = formula
        self.clock = clock
        self.recomputations = 0  # authors scored by this process
        self.published = 0  # TrustScoreChanged acknowledged by the broker
        self._due: dict[str, datetime] = {}  # author -> when to recompute it (see ``schedule``)
        # History keys of outboxes known to be acknowledged (history recorded): a pass does
        # not look them up again before replacing them. Only a cache, bounded.
        self._acknowledged: set[str] = set()
        # Authors this process's consumer holds back on purpose (see handlers): not orphans.
        self.held_back: Callable[[], set[str]] = set

    def schedule(self, due: dict[str, datetime]) -> None:
        """Authors whose signals this process just stored, and when each is due. The
        consumer calls this after each batch, so the loop finds due authors without
        reading the store; ``sweep`` reads the store for the rest (a restart, a replica
        that died)."""
        self._due.update(due)

    def idle(self) -> bool:
        """Nothing scheduled in this process (and nothing its consumer holds back)."""
        return not self._due and not self.held_back()

    async def recompute(self, author_ids: list[str], *, only_dirty: bool = False) -> int:
        """Score these authors (those another replica holds are skipped; with
        ``only_dirty``, those already scored from their current signals too) and publish
        their changes; returns how many scores were stored. Everything, publishing
        included, happens under the authors' leases: an outbox is published by the
        replica that holds its author, never by two at once."""
        if not author_ids:
            return 0
        stored = 0
        async with self.store.write_lock:  # see TrustStore.write_lock
            token, docs = await self.store.claim(author_ids, self.clock(), self.lease_s)
        held = [d["_id"] for d in docs]
        try:
            # An outbox a pass left unpublished (it died) goes out before a newer one replaces it.
            unpublished = await self.store.unpublished(docs, self._acknowledged)
            await self._publish([Envelope.model_validate_json(d["outbox"]) for d in unpublished])
            todo = [d for d in docs if d.get("dirty") or not only_dirty]
            if todo:
                results = [self._score(doc) for doc in todo]
                async with self.store.write_lock:
                    saved = set(
                        await self.store.save_scores(
                            [
                                (doc, score, envelope and envelope.model_dump(mode="json"))
                                for doc, score, envelope in results
                            ],
                            self.clock(),
                        )
                    )
                stored = len(saved)
                self.recomputations += stored
                await self._publish([envelope for doc, _, envelope in results if envelope and doc["_id"] in saved])
        finally:
            await self.store.release(token, held)
        return stored

    def _score(self, doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Envelope | None]:
        inputs = signals.score_inputs(doc, self.formula)
        assert inputs is not None, "only authors with a profile are marked dirty"
        result = scoring.compute(inputs, self.formula)
        snapshot = {
            "works_count": inputs.works_count,
            "recent_works": inputs.recent_works,
            "topics": inputs.topics,
            "close_collaborators": inputs.close_collaborators,
            "verification_level": inputs.verification_level,
            "claimed": inputs.claimed,
            "followers": inputs.followers,
        }
        held = doc.get("score")
        revision = held["revision"] if held else 0
        changed = held is None or held["score"] != result.score or held["band"] != result.band
        outbox = None
        if changed:
            revision += 1
            event = TrustScoreChanged(
                author_id=doc["_id"],
                score=result.score,
                band=result.band,
                verification_level=result.verification_level,
                components=[
                    ScoreComponent(name=c.name, signal=c.signal, weight=c.weight, cap=c.cap, points=c.points)
                    for c in result.components
                ],
                previous_score=held["score"] if held else None,
                previous_band=held["band"] if held else None,
                reason=describe_change(
                    held and held.get("signals"), snapshot, held and held.get("formula_version"), result.formula_version
                ),
                formula_version=result.formula_version,
                revision=revision,
                inputs=ScoreInputs(**snapshot),
            )
            event_id = deterministic_event_id(doc["_id"], "TrustScoreChanged", result.formula_version, revision)
            outbox = Envelope.wrap(event, producer=self.publisher.producer_name, event_id=event_id)
        score = {
            "score": result.score,
            "band": result.band,
            "verification_level": result.verification_level,
            "components": [_component(c) for c in result.components],
            "formula_version": result.formula_version,
            "revision": revision,
            "signals": snapshot,
        }
        return doc, score, outbox

    async def flush_outboxes(self) -> int:
        """Publish outboxes left unacknowledged by a pass that died before the broker
        acknowledged them (the broker, then the history), under lease. Reads the whole
        collection (see ``TrustStore.sweep_scan``)."""
        return await self._flush((await self.store.sweep_scan(self._acknowledged))[1])

    async def _flush(self, ids: list[str]) -> int:
        published = self.published
        for start in range(0, len(ids), 1000):
            await self.recompute(ids[start : start + 1000], only_dirty=True)
        return self.published - published

    async def _publish(self, envelopes: list[Envelope]) -> int:
        """To the broker, then the history entries, which acknowledge the outboxes."""
        if not envelopes:
            return 0
        await self.publisher.publish(
            [Outgoing(str(Topic.TRUST_EVENTS), env.data["author_id"], env) for env in envelopes]
        )
        await self.store.record_history([history_entry(env) for env in envelopes])
        if len(self._acknowledged) > ACKNOWLEDGED_CACHE:
            self._acknowledged.clear()
        self._acknowledged.update(history_key(env.data["author_id"], env.data["revision"]) for env in envelopes)
        self.published += len(envelopes)
        return len(envelopes)

    async def settle_rebuilt(self, batch: int = 500) -> None:
        """Rebuild only (a drain hook). The scores came from trust.events; rescore every
        author whose signals changed since, and keep the result where score and band are
        the published ones (a breakdown the live service computed without publishing).
        An author whose score would change stays dirty: deciding and publishing that
        change is the live service's job."""
        far = self.clock() + timedelta(days=365)
        dirty = await self.store.due_ids(far, 1_000_000)
        for start in range(0, len(dirty), batch):
            async with self.store.write_lock:
                token, docs = await self.store.claim(dirty[start : start + batch], self.clock(), self.lease_s)
            try:
                unchanged = [r for r in (self._score(doc) for doc in docs) if r[2] is None]
                async with self.store.write_lock:
                    await self.store.save_scores(unchanged, self.clock())
            finally:
                await self.store.release(token, [d["_id"] for d in docs])

    async def sweep(self, overdue_s: float) -> None:
        """What the consumer did not schedule in this process: outboxes left unpublished,
        and authors due for more than ``overdue_s`` (marked dirty before a restart, or by a
        replica that died). Reads the whole collection once, so it runs seldom."""
        dirty, unpublished = await self.store.sweep_scan(self._acknowledged)
        await self._flush(unpublished)
        now = self.clock()
        held_back = self.held_back()
        overdue = now - timedelta(seconds=overdue_s)
        for author_id, due_at in dirty.items():
            if due_at <= overdue and author_id not in held_back:
                self._due.setdefault(author_id, now)

    async def run_due_once(self, batch: int) -> int:
        now = self.clock()
        due = sorted((at, a) for a, at in self._due.items() if at <= now)[:batch]
        ids = [a for _, a in due]
        for a in ids:
            del self._due[a]
        try:
            await self.recompute(ids, only_dirty=True)
        except BaseException:
            for at, a in due:
                self._due.setdefault(a, at)
            raise
        return len(ids)

    async def loop(self, *, batch: int, poll_s: float, sweep_s: float) -> None:
        """The service's background task: recompute due authors until cancelled."""
        next_sweep, overdue_s = 0.0, 0.0  # the first sweep (at start) takes every dirty author
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() >= next_sweep:
                    await self.sweep(overdue_s)
                    next_sweep, overdue_s = loop.time() + sweep_s, sweep_s
                done = await self.run_due_once(batch)
            except TRANSIENT_ERRORS as exc:
                log.warning("recompute_transient_failure", error=repr(exc))
                done = 0
            except Exception as exc:  # a bug must not stop scoring for good: log, retry later
                log.exception("recompute_failed", error=repr(exc))
                done = 0
            if done < batch:
                await asyncio.sleep(poll_s)


def _component(c: scoring.Component) -> dict[str, Any]:
    return {"name": c.name, "signal": c.signal, "weight": c.weight, "cap": c.cap, "points": c.points}


def history_entry(envelope: Envelope) -> dict[str, Any]:
    """The history document of a published TrustScoreChanged: made of the event alone, so
    that a rebuild from trust.events writes the very same document. What is only read back
    whole is one JSON string (``entry``; see ``store``): cheap to insert and to look up."""
    data = envelope.data
    entry = {
        "score": data["score"],
        "band": data["band"],
        "verification_level": data["verification_level"],
        "previous_score": data["previous_score"],
        "previous_band": data["previous_band"],
        "reason": data["reason"],
        "components": data["components"],
        "formula_version": data["formula_version"],
        "signals": data.get("inputs"),
    }
    return {
        "_id": history_key(data["author_id"], data["revision"]),
        "event_id": str(envelope.event_id),
        "author_id": data["author_id"],
        "revision": data["revision"],
        "entry": encode(entry),
        "changed_at": envelope.occurred_at,
    }


def score_of(envelope: Envelope) -> dict[str, Any]:
    """The ``score`` an author document holds after this TrustScoreChanged (what ``_score``
    stores live, less the moment it was computed)."""
    data = envelope.data
    return {
        "score": data["score"],
        "band": data["band"],
        "verification_level": data["verification_level"],
        "components": data["components"],
        "formula_version": data["formula_version"],
        "revision": data["revision"],
        "signals": data.get("inputs"),
    }
