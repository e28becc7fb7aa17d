"""Live updates: which sections of which author's page changed, pushed to the browsers
showing it over server-sent events.

``ChangeFeed`` tails the four topics whose events change a profile page
(profile.events, trust.events, claims.events, follows.events) WITHOUT a consumer group:
every partition assigned to this process, read from the end, nothing committed. Each web
process sees every change, so whichever process holds a browser's event stream can tell
it; a consumer group would split the partitions between processes, and a browser whose
stream sits on one process would miss the changes the others read. Records are keyed by
author id, so the feed never decodes an event: the key says whose page changed and the
topic which sections.

``Hub`` hands each change to the streams open on that author's page, and remembers when
each author's sections last changed, so a stream opened a moment after its page was read
from the services refreshes what changed in between (``missed``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer

from contracts.topics import TOPICS, Topic
from service_runtime.kafka import ensure_topics
from service_runtime.logging import get_logger
from service_runtime.offsets import partitions_of
from services.web.settings import WebSettings

log = get_logger(__name__)

# The page sections each topic's events can change.
SECTIONS_OF: dict[str, tuple[str, ...]] = {
    Topic.PROFILE_EVENTS: ("header", "snapshot", "works"),
    Topic.TRUST_EVENTS: ("snapshot",),
    Topic.CLAIMS_EVENTS: ("snapshot", "claim", "collab"),
    Topic.FOLLOWS_EVENTS: ("snapshot", "follow"),
}
LIVE_SECTIONS: frozenset[str] = frozenset(s for sections in SECTIONS_OF.values() for s in sections)


@dataclass(eq=False)
class Subscriber:
    author_id: str
    pending: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, sections: Iterable[str]) -> None:
        self.pending.update(sections)
        self.wake.set()

    def take(self) -> set[str]:
        taken, self.pending = self.pending, set()
        self.wake.clear()
        return taken


class Hub:
    def __init__(self, *, remember_authors: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._subscribers: dict[str, set[Subscriber]] = {}
        # author -> section -> when it last changed (this process's clock), oldest first.
        self._changed: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._remember = remember_authors
        self._forgotten_until = 0.0  # changes up to this moment may have been forgotten
        # Since when the feed has seen every change (None: it is not tailing right now).
        self.tailing_since: float | None = None

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def subscribe(self, author_id: str) -> Subscriber:
        sub = Subscriber(author_id)
        self._subscribers.setdefault(author_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subscribers.get(sub.author_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.author_id]

    def changed(self, author_id: str, sections: Iterable[str]) -> None:
        sections = tuple(sections)
        now = self.clock()
        seen = self._changed.pop(author_id, {})
        seen.update(dict.fromkeys(sections, now))
        self._changed[author_id] = seen
        while len(self._changed) > self._remember:
            _, oldest = self._changed.popitem(last=False)
            self._forgotten_until = max(self._forgotten_until, *oldest.values())
        for sub in self._subscribers.get(author_id, ()):
            sub.add(sections)

    def started(self) -> None:
        """The feed is at the end of every partition: from now on it sees every change."""
        self.tailing_since = self.clock()

    def interrupted(self) -> None:
        """The feed stopped (it will start again from the end, so changes in between are
        lost to it): every open page refreshes everything, now and once it is back."""
        self.tailing_since = None
        for subs in self._subscribers.values():
            for sub in subs:
                sub.add(LIVE_SECTIONS)

    def missed(self, author_id: str, since: float, margin: float) -> set[str]:
        """Sections of the author's page that may have changed after ``since`` (when the
        page was read; ``margin`` covers the clocks of several web processes)."""
        cutoff = since - margin
        if self.tailing_since is None or self.tailing_since > cutoff or self._forgotten_until >= cutoff:
            return set(LIVE_SECTIONS)
        return {s for s, at in self._changed.get(author_id, {}).items() if at >= cutoff}


class ChangeFeed:
    def __init__(self, settings: WebSettings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.ready = asyncio.Event()
        self.records = 0

    async def run(self) -> None:
        """Tail until cancelled; after a failure, start again from the end."""
        delay = self.settings.retry_initial_delay_s
        while True:
            try:
                await self._tail()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live_feed_interrupted", error=repr(exc), retry_in_s=delay)
            self.ready.clear()
            self.hub.interrupted()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.retry_max_delay_s)

    async def _tail(self) -> None:
        s = self.settings
        await ensure_topics(s.kafka_bootstrap_servers, [TOPICS[t] for t in SECTIONS_OF], prefix=s.topic_prefix)
        physical = {s.physical_topic(t): t for t in SECTIONS_OF}
        partitions = await partitions_of(s.kafka_bootstrap_servers, list(physical))
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"bzpeer-{s.service_name}-live",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:  # resolve the end offsets now: changes from here on are seen
                await consumer.position(tp)
            self.hub.started()
            self.ready.set()
            log.info("live_feed_tailing", partitions=len(partitions))
            while True:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=2000)
                for tp, records in fetched.items():
                    sections = SECTIONS_OF[physical[tp.topic]]
                    for record in records:
                        if record.key:
                            self.hub.changed(record.key.decode("utf-8", "replace"), sections)
                    self.records += len(records)
        finally:
            await consumer.stop()


def sse(event: str | None, data: object, event_id: str | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data)}")
    return "\n".join(lines) + "\n\n"


async def page_changes(hub: Hub, settings: WebSettings, author_id: str, since: float) -> AsyncGenerator[str, None]:
    """The event stream of one open page: a ``change`` event naming the sections to read
    again, at most one per coalescing window; a comment now and then keeps proxies from
    closing an idle stream. Each event's id is the moment it was sent, so a browser that
    reconnects (``Last-Event-ID``) is told what changed while it was away."""
    sub = hub.subscribe(author_id)
    try:
        yield "retry: 2000\n\n"
        missed = hub.missed(author_id, since, settings.live_catch_up_margin_s)
        if missed:
            sub.add(missed)
        while True:
            if not sub.pending:
                try:
                    await asyncio.wait_for(sub.wake.wait(), settings.live_keepalive_s)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
            await asyncio.sleep(settings.live_coalesce_s)
            sent_at = hub.clock()
            yield sse("change", {"sections": sorted(sub.take())}, event_id=f"{sent_at:.3f}")
    finally:
        hub.unsubscribe(sub)
