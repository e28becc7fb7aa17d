"""Recomputing scores of due authors in bulk, and publishing changes through the outbox.

One pass: lease the due authors (atomic per document), compute each score from its
stored signals, store the score and, when score or band changed, the TrustScoreChanged
in the author's own document (the outbox) in the same single-document update; then
record the history, publish, and clear the outbox. A crash anywhere in between leaves
the outbox in place and the next pass (or the next process) publishes the very same
event: its id is derived from (author, formula version, revision).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.envelope import Envelope, deterministic_event_id
from contracts.topics import Topic
from contracts.events.trust import ScoreComponent, ScoreInputs, TrustScoreChanged
from service_runtime.logging import get_logger
from service_runtime.publishing import EventPublisher, Outgoing
from service_runtime.retry import TRANSIENT_ERRORS
from services.trust import scoring, signals
from services.trust.store import TrustStore

log = get_logger(__name__)
Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def describe_change(before: dict[str, Any] | None, after: dict[str, Any],
                    before_version: int | None, after_version: int) -> str:
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
    def __init__(self, store: TrustStore, publisher: EventPublisher, *, lease_s: float = 30.0,
                 formula: scoring.Formula = scoring.CURRENT, clock: Clock = _now) -> None:
        self.store = store
        self.publisher = publisher
        self.lease_s = lease_s
        self.formula = formula
        self.clock = clock
        self.recomputations = 0  # authors scored by this process
        self.published = 0  # TrustScoreChanged acknowledged by the broker

    async def recompute(self, author_ids: list[str]) -> int:
        """Score these authors (those another replica holds are skipped); returns how many."""
        if not author_ids:
            return 0
        async with self.store.write_lock:  # see TrustStore.write_lock
            token, docs = await self.store.claim(author_ids, self.clock(), self.lease_s)
            results = [self._score(doc) for doc in docs]
            await self.store.save_scores(token, results)
        self.recomputations += len(docs)
        await self.flush_outboxes([doc["_id"] for doc in docs])
        return len(docs)

    def _score(self, doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict | None]:
        inputs = signals.score_inputs(doc, self.formula)
        assert inputs is not None, "only authors with a profile are marked dirty"
        result = scoring.compute(inputs, self.formula)
        snapshot = {"works_count": inputs.works_count, "recent_works": inputs.recent_works, "topics": inputs.topics,
                    "close_collaborators": inputs.close_collaborators,
                    "verification_level": inputs.verification_level, "claimed": inputs.claimed,
                    "followers": inputs.followers}
        held = doc.get("score")
        revision = held["revision"] if held else 0
        changed = held is None or held["score"] != result.score or held["band"] != result.band
        outbox = None
        if changed:
            revision += 1
            event = TrustScoreChanged(
                author_id=doc["_id"], score=result.score, band=result.band,
                verification_level=result.verification_level,
                components=[ScoreComponent(name=c.name, signal=c.signal, weight=c.weight, cap=c.cap, points=c.points)
                            for c in result.components],
                previous_score=held["score"] if held else None, previous_band=held["band"] if held else None,
                reason=describe_change(held and held.get("signals"), snapshot,
                                       held and held.get("formula_version"), result.formula_version),
                formula_version=result.formula_version, revision=revision, inputs=ScoreInputs(**snapshot),
            )
            event_id = deterministic_event_id(doc["_id"], "TrustScoreChanged", result.formula_version, revision)
            envelope = Envelope.wrap(event, producer=self.publisher.producer_name, event_id=event_id)
            outbox = {"envelope": envelope.model_dump(mode="json"), "signals": snapshot}
        score = {"score": result.score, "band": result.band, "verification_level": result.verification_level,
                 "components": [_component(c) for c in result.components],
                 "formula_version": result.formula_version, "revision": revision, "signals": snapshot,
                 "computed_at": self.clock()}
        return doc, score, outbox

    async def flush_outboxes(self, author_ids: list[str] | None = None, limit: int = 5000) -> int:
        """Publish what is waiting in outboxes (history first, then the broker, then clear)."""
        docs = await self.store.pending_outboxes(limit, author_ids)
        if not docs:
            return 0
        envelopes = [Envelope.model_validate(d["outbox"]["envelope"]) for d in docs]
        await self.store.record_history([history_entry(env) for env in envelopes])
        await self.publisher.publish([Outgoing(str(Topic.TRUST_EVENTS), env.data["author_id"], env) for env in envelopes])
        async with self.store.write_lock:  # see TrustStore.write_lock
            await self.store.clear_outboxes([(d["_id"], str(env.event_id)) for env, d in zip(envelopes, docs)])
        self.published += len(docs)
        return len(docs)

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
                token, docs = await self.store.claim(dirty[start:start + batch], self.clock(), self.lease_s)
                results = [self._score(doc) for doc in docs]
                await self.store.save_scores(token, [r for r in results if r[2] is None])
                await self.store.release([r[0]["_id"] for r in results if r[2] is not None])

    async def run_due_once(self, batch: int) -> int:
        return await self.recompute(await self.store.due_ids(self.clock(), batch))

    async def loop(self, *, batch: int, poll_s: float) -> None:
        """The service's background task: recompute due authors until cancelled."""
        while True:
            try:
                # Outboxes first: what an earlier pass or a previous process computed but
                # did not get acknowledged (normally none: a pass flushes its own).
                await self.flush_outboxes()
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
    that a rebuild from trust.events writes the very same document."""
    data = envelope.data
    return {"_id": str(envelope.event_id), "author_id": data["author_id"], "revision": data["revision"],
            "score": data["score"], "band": data["band"], "verification_level": data["verification_level"],
            "previous_score": data["previous_score"], "previous_band": data["previous_band"],
            "reason": data["reason"], "components": data["components"], "formula_version": data["formula_version"],
            "signals": data.get("inputs"), "changed_at": envelope.occurred_at}


def score_of(envelope: Envelope) -> dict[str, Any]:
    """The ``score`` an author document holds after this TrustScoreChanged (what ``_score``
    stores live, less the moment it was computed)."""
    data = envelope.data
    return {"score": data["score"], "band": data["band"], "verification_level": data["verification_level"],
            "components": data["components"], "formula_version": data["formula_version"],
            "revision": data["revision"], "signals": data.get("inputs")}
