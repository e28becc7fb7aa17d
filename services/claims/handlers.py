"""Thin batch handler: decoded inputs of both consumed topics, in partition order, to the use case."""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence

from contracts.events.claims import ClaimRejected, ClaimRequested
from contracts.topics import Topic
from service_runtime.delivery import Incoming
from service_runtime.logging import get_logger
from services.claims.processing import ClaimsProcessor, is_expiry
from services.claims.rules import SLOT_REFUSAL
from services.claims.store import ClaimsStore

log = get_logger(__name__)

HANDLED_PROFILE_EVENTS = frozenset({"AuthorRegistered", "AuthorUpdated", "WorkAdded", "WorkUpdated"})


def relevant(item: Incoming) -> bool:
    return item.topic != Topic.PROFILE_EVENTS or item.event_type in HANDLED_PROFILE_EVENTS


def make_handler(processor: ClaimsProcessor):
    async def handle(batch: Sequence[Incoming]) -> None:
        # profile.events and webapp.claims are read by one consumer so that one writer
        # at a time decides for a given author; every profile event carries the full AuthorState.
        inputs = [i for i in batch if relevant(i)]
        if inputs:
            await processor.handle(inputs)

    return handle


def live_order_key(item: Incoming) -> float:
    """When the live consumer could first have seen the record: its Kafka timestamp (ms),
    else the time its envelope names."""
    if item.timestamp_ms is not None:
        return float(item.timestamp_ms)
    return item.envelope.occurred_at.timestamp() * 1000


def revision_seen(item: Incoming) -> int | None:
    """What a claims.events record says of the author revision its cause was applied against."""
    return getattr(item.payload, "author_revision", None)


def live_order(inputs: Sequence[Incoming], seen: dict[str, int]) -> list[Incoming]:
    """The inputs in an order live could have seen them in, as the log says it did.

    ``inputs``: each partition in offset order; ``seen``: for an input (by event id), the
    author revision live applied it against (0: before any profile event of the author),
    from its outputs on claims.events. Each partition keeps its own order; across
    partitions an input waits for what live had applied before it (the author's profile
    event at that revision) and goes before what live applied after it (the next
    revision); among the inputs free to go, the oldest record timestamp goes first. An
    expiry goes after its claim's request and before the author's first profile event
    (live rejected the claim while the record was unknown). Deterministic: the same
    topics give the same order."""
    items = list(inputs)
    key = [(live_order_key(it), it.topic, it.partition, it.offset) for it in items]
    after: list[list[int]] = [[] for _ in items]  # constraint edges: i before each of after[i]
    blocked = [0] * len(items)  # constraint edges not yet satisfied

    def edge(first: int, then: int) -> None:
        after[first].append(then)
        blocked[then] += 1

    profile: dict[str, list[tuple[int, int]]] = {}  # author -> [(revision, index)] in partition order
    requests: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.topic == Topic.PROFILE_EVENTS:
            profile.setdefault(it.payload.author_id, []).append((it.payload.author.revision, i))  # type: ignore[attr-defined]
        elif isinstance(it.payload, ClaimRequested):
            requests.setdefault(it.payload.claim_id, i)
    placed: set[str] = set()
    for i, it in enumerate(items):
        author_events = profile.get(it.payload.author_id, [])  # type: ignore[attr-defined]
        if is_expiry(it):
            if (request := requests.get(it.payload.claim_id)) is not None:  # type: ignore[attr-defined]
                edge(request, i)
            if author_events:
                edge(i, author_events[0][1])
            continue
        event_id = str(it.envelope.event_id)
        revision = seen.get(event_id)
        if it.topic == Topic.PROFILE_EVENTS or revision is None or event_id in placed:
            continue
        placed.add(event_id)  # a record sent twice: its first copy is the one live applied
        lower = next((j for rev, j in author_events if rev >= revision), None) if revision else None
        upper = next((j for rev, j in author_events if rev > revision), None)
        if lower is not None:
            edge(lower, i)
        if upper is not None:
            edge(i, upper)

    streams: dict[tuple[str, int], list[int]] = {}
    for i, it in enumerate(items):
        streams.setdefault((it.topic, it.partition), []).append(i)
    nxt = {i: stream[n + 1] for stream in streams.values() for n, i in enumerate(stream[:-1])}
    heads = {stream[0] for stream in streams.values()}  # each partition's next record
    ready = [(key[i], i) for i in heads if not blocked[i]]
    heapq.heapify(ready)
    queued = {i for _, i in ready}
    out: list[Incoming] = []
    forced = 0
    while heads:
        if not ready:
            # Constraints that contradict each other (a log live could not have written):
            # let the oldest partition head go rather than stop.
            forced += 1
            i = min(heads, key=lambda h: key[h])
            blocked[i] = 0
            heapq.heappush(ready, (key[i], i))
            queued.add(i)
        _, i = heapq.heappop(ready)
        heads.discard(i)
        out.append(items[i])
        for j in after[i]:
            blocked[j] -= 1
            if j in heads and blocked[j] <= 0 and j not in queued:
                heapq.heappush(ready, (key[j], j))
                queued.add(j)
        if i in nxt:
            j = nxt[i]
            heads.add(j)
            if blocked[j] <= 0:
                heapq.heappush(ready, (key[j], j))
                queued.add(j)
    if forced:
        log.warning("claims_rebuild_order_contradictions", inputs=len(items), forced=forced)
    return out


class RebuildInLiveOrder:
    """Rebuild only: every input is kept aside, then applied in the order the live
    consumer saw it, once everything is consumed (a drain hook).

    A rebuild reads each partition at its own pace (the small webapp.claims topic far
    ahead of profile.events), so applying records as they come would decide claims
    against records not rebuilt yet, and decide at once claims that live waited for their
    author (or the other way round), with another history. Record timestamps do not settle
    it either: a lagging consumer fetches the partitions of two topics in whatever order
    its fetches return, not in append order. What live saw is in its outputs: every
    claims.events record names its cause and the author revision the cause was applied
    against. So the inputs (webapp.claims, the handled profile.events, and the expiries the
    live sweeper published on claims.events, a wall-clock decision not to be taken again)
    are applied each partition in its own order, each input after the author's profile
    event live had applied and before the next one (``live_order``): a claim that waited
    live waits in the rebuild too and is decided by the same profile event; one decided
    at once is decided at once against the same revision."""

    def __init__(self, processor: ClaimsProcessor, store: ClaimsStore) -> None:
        self.processor = processor
        self.store = store

    async def handle(self, batch: Sequence[Incoming]) -> None:
        keep = [
            i
            for i in batch
            if (i.topic == Topic.CLAIMS_EVENTS and (is_expiry(i) or said_what_live_saw(i) or is_slot_refusal(i)))
            or (i.topic != Topic.CLAIMS_EVENTS and relevant(i))
        ]
        await self.store.defer(keep)

    async def settle(self, batch: int = 500) -> None:
        inputs: list[Incoming] = []
        seen: dict[str, int] = {}
        for item in await self.store.deferred():  # each partition in offset order
            if item.topic == Topic.CLAIMS_EVENTS and not is_expiry(item):
                if said_what_live_saw(item):
                    seen.setdefault(str(item.envelope.causation_id), revision_seen(item))  # type: ignore[arg-type]
                if is_slot_refusal(item):
                    self.processor.live_refusals[item.payload.claim_id] = item.payload.reason  # type: ignore[attr-defined]
            else:
                inputs.append(item)
        ordered = live_order(inputs, seen)
        started = time.monotonic()
        for start in range(0, len(ordered), batch):
            await self.processor.handle(ordered[start : start + batch])
        log.info(
            "claims_rebuild_applied",
            inputs=len(ordered),
            placed_by_live=len(seen),
            slot_refusals=len(self.processor.live_refusals),
            seconds=round(time.monotonic() - started, 1),
        )


def said_what_live_saw(item: Incoming) -> bool:
    return item.envelope.causation_id is not None and revision_seen(item) is not None


def is_slot_refusal(item: Incoming) -> bool:
    """A claims.events record of a claim rejected because its user had no slot left."""
    return (
        item.topic == Topic.CLAIMS_EVENTS
        and isinstance(item.payload, ClaimRejected)
        and item.payload.reason in SLOT_REFUSAL.values()
    )
