"""The consumer of profile.events, claims.events and follows.events: signals in bulk.

Per batch: one read of the authors concerned, the pure reducer over their events in
partition order, one bulk write of the signals that changed, each marking its author
dirty (due after the coalescing window). Scores are computed later, by the recompute loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from services.trust import signals
from services.trust.recompute import history_entry, score_of
from services.trust.store import TrustStore

log = get_logger(__name__)


class SignalHandler:
    def __init__(self, store: TrustStore, *, window_ms: int, max_delay_ms: int,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.window = timedelta(milliseconds=window_ms)
        self.max_delay = timedelta(milliseconds=max_delay_ms)
        self.clock = clock
        self.ignored = 0  # events carrying no newer signal (stale, duplicate, no signal at all)

    async def __call__(self, batch: Sequence[Incoming]) -> None:
        observations: dict[str, list[signals.Observation]] = {}
        for item in batch:
            obs = signals.observe(item.payload)
            if isinstance(obs, signals.Ignored):
                self.ignored += 1
                continue
            if obs.anomalies:
                log.warning("impossible_signal_values_dropped", author_id=obs.author_id, anomalies=list(obs.anomalies),
                            correlation_id=item.envelope.correlation_id, event_id=str(item.envelope.event_id))
            observations.setdefault(obs.author_id, []).append(obs)
        if not observations:
            return
        async with self.store.write_lock:
            held = await self.store.load(list(observations))
            now = self.clock()
            updates = []
            for author_id, author_obs in observations.items():
                update = self._update(author_id, held.get(author_id, {}), author_obs, now)
                if update is not None:
                    updates.append(update)
            await self.store.save_signals(updates)

    def _update(self, author_id: str, doc: dict[str, Any], author_obs: list[signals.Observation],
                now: datetime) -> UpdateOne | None:
        projection = {k: doc[k] for k in signals.SOURCES if k in doc}
        after = projection
        for obs in author_obs:
            after = signals.apply(after, obs)
        changed = {k: after[k] for k in signals.SOURCES if k in after and after[k] is not projection.get(k)}
        if not changed:
            return None
        fields: dict[str, Any] = dict(changed)
        # Only an author the profile registered is scored; other signals wait for it.
        if "profile" in after:
            dirty_since = doc.get("dirty_since") or now
            fields.update(dirty=True, dirty_since=dirty_since,
                          due_at=min(now + self.window, dirty_since + self.max_delay))
        return UpdateOne({"_id": author_id}, {"$set": fields, "$inc": {"seq": 1}}, upsert=True)


class PublishedScores:
    """Rebuild only: trust.events -> the scores and history the live service published.

    A rebuild does not recompute: coalescing depends on timing, so scores computed again
    could differ from the ones the log holds. It takes each author's latest published
    score and every history entry from the service's own output instead."""

    def __init__(self, store: TrustStore) -> None:
        self.store = store

    async def __call__(self, batch: Sequence[Incoming]) -> None:
        published = [i.envelope for i in batch if i.event_type == "TrustScoreChanged"]
        if not published:
            return
        await self.store.record_history([history_entry(e) for e in published])
        latest: dict[str, dict[str, Any]] = {}
        for envelope in published:
            score = score_of(envelope)
            held = latest.get(envelope.data["author_id"])
            if held is None or score["revision"] > held["revision"]:
                latest[envelope.data["author_id"]] = score
        async with self.store.write_lock:
            await self.store.adopt_scores(latest)
