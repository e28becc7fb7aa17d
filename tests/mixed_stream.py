"""A reproducible stream of mixed input events for the whole system, shared by the fault
tests (tests/faults) and the pipeline benchmark (bench/bench_pipeline.py).

What the web app and the importers would send, keyed by author_id as the contracts say:

* ``publications.ingested``: ``WorkIngested`` for many authors; most works have
  co-authors from the same pool, every author carries an ORCID iD on its works;
* ``webapp.follows``: ``FollowRequested`` and, for some, a later ``UnfollowRequested``;
* ``webapp.claims``: ``ClaimRequested`` with an authenticated ORCID iD equal to the
  record's (approved at once, L2); some authors get several racing claims from different
  users, of which the first in partition order must win.

``expected`` is what the system must end with, derived from the stream alone: the works
count of every author, each claimed author's owner (the first claimant in stream order,
each claimant claims one author only), and each author's follower count.

    stream = mixed_stream(10_000, seed=7)
    await stream.send(producer, topic_prefix)       # all of it, as fast as the broker takes it
    await stream.send(producer, topic_prefix, start=0, stop=5_000)   # or a slice
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from contracts.envelope import Envelope, EventModel
from contracts.events.claims import ClaimRequested, Evidence
from contracts.events.follows import FollowRequested, UnfollowRequested
from contracts.events.publications import Work, WorkAuthor, WorkIngested

TOPICS_IN = ("publications.ingested", "webapp.follows", "webapp.claims")
_TOPIC_LIST = ["ml", "nlp", "vision", "robotics", "theory", "systems", "databases", "security", "hci", "bio"]


def orcid_for(n: int) -> str:
    """A valid ORCID iD (ISO 7064 mod 11-2 check digit) derived from ``n``."""
    base = f"{n:015d}"[-15:]
    total = 0
    for ch in base:
        total = (total + int(ch)) * 2
    check = (12 - total % 11) % 11
    digits = base + ("X" if check == 10 else str(check))
    return "-".join(digits[i : i + 4] for i in range(0, 16, 4))


@dataclass(frozen=True, slots=True)
class Record:
    topic: str  # logical topic
    key: bytes
    value: bytes
    kind: str  # "work", "follow", "unfollow", "claim"
    author_id: str
    event_id: uuid.UUID
    work_id: str | None = None
    probe: bool = False  # a work whose first author appears nowhere else (see ``probe_every``)


@dataclass
class Expected:
    works: dict[str, int] = field(default_factory=dict)  # author -> works count
    owners: dict[str, str] = field(default_factory=dict)  # claimed author -> owner user
    followers: dict[str, int] = field(default_factory=dict)  # author -> follower count (non-zero only)


@dataclass
class MixedStream:
    records: list[Record]
    authors: list[str]
    expected: Expected

    def __len__(self) -> int:
        return len(self.records)

    def counts(self) -> Counter[str]:
        return Counter(r.kind for r in self.records)

    async def send(
        self, producer: AIOKafkaProducer, topic_prefix: str, *, start: int = 0, stop: int | None = None
    ) -> None:
        """Send a slice in stream order (per key the broker keeps that order) and wait
        until the broker acknowledged every record."""
        futures = [await producer.send(topic_prefix + r.topic, r.value, key=r.key) for r in self.records[start:stop]]
        for f in futures:
            await f


def _envelope(payload: EventModel, rng: random.Random, at: datetime) -> Envelope:
    return Envelope.wrap(
        payload, producer="webapp", event_id=uuid.UUID(int=rng.getrandbits(128), version=4), occurred_at=at
    )


def mixed_stream(
    n: int,
    *,
    seed: int = 7,
    authors: int | None = None,
    users: int | None = None,
    tag: str = "",
    works_share: float = 0.7,
    follows_share: float = 0.2,
    racing_share: float = 0.3,
    probe_every: int = 0,
) -> MixedStream:
    """``n`` records: ``works_share`` works, ``follows_share`` follow commands (a fifth of
    them unfollows of an earlier follow), the rest claims (``racing_share`` of the claimed
    authors get a second, racing claim). Deterministic for a given seed.

    With ``probe_every`` k, every k-th work is a *probe*: its first author is a new one
    that appears in no other record, so "this work's effect is visible" is simply "the
    author's page shows a trust score" (the pipeline benchmark's latency)."""
    rng = random.Random(seed)
    n_authors = authors or max(20, n // 25)
    n_users = users or max(20, n // 20)
    author_ids = [f"mx{tag}-a{i:05d}" for i in range(n_authors)]
    orcid = {a: orcid_for(seed * 1_000_003 + i + 1) for i, a in enumerate(author_ids)}
    works_of: Counter[str] = Counter()
    following: dict[tuple[str, str], bool] = {}
    owners: dict[str, str] = {}
    claimed_authors: list[str] = []
    claim_users = 0
    # Follows and claims name authors some earlier work introduced (the web app only
    # shows pages that exist); they may still reach a service before that work does.
    seen: list[str] = []
    seen_set: set[str] = set()
    records: list[Record] = []
    base = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

    def at(i: int) -> datetime:
        return datetime.fromtimestamp(base + i, UTC)

    n_works = 0
    for i in range(n):
        roll = rng.random()
        probe = False
        if roll < works_share or i < 10:
            n_works += 1
            probe = bool(probe_every) and n_works % probe_every == 0
            # Skewed: a few prolific authors, a long tail.
            first = rng.choice(author_ids[:10]) if rng.random() < 0.2 else rng.choice(author_ids)
            if probe:
                first = f"mx{tag}-probe{i:06d}"
                orcid[first] = orcid_for(seed * 1_000_003 + n_authors + i + 1)
            coauthors = [a for a in rng.sample(author_ids, rng.choice((0, 1, 1, 2, 3))) if a != first]
            names = [first, *coauthors]
            work_id = f"mx{tag}-w{i:06d}"
            work = Work(
                work_id=work_id,
                type=rng.choice(("article", "preprint", "proceedings-article")),
                year=rng.randint(2015, 2025),
                title=f"Mixed stream work {i}",
                topics=rng.sample(_TOPIC_LIST, rng.randint(1, 3)),
                authors=[WorkAuthor(author_id=a, display_name=f"Author {a}", orcid=orcid[a]) for a in names],
            )
            for a in names:
                works_of[a] += 1
                if a not in seen_set and not (probe and a == first):
                    seen_set.add(a)
                    seen.append(a)
            payload: EventModel = WorkIngested(author_id=first, work=work, source="mixed-stream")
            kind, author = "work", first
        elif roll < works_share + follows_share:
            active = [edge for edge, on in following.items() if on] if rng.random() < 0.2 else []
            if active:
                user, author = rng.choice(active)
                following[(user, author)] = False
                payload, kind = UnfollowRequested(user_id=user, author_id=author), "unfollow"
            else:
                author = rng.choice(seen)
                user = f"mx{tag}-f{rng.randrange(n_users):05d}"
                following[(user, author)] = True
                payload, kind = FollowRequested(user_id=user, author_id=author), "follow"
        else:
            if claimed_authors and rng.random() < racing_share:
                author = rng.choice(claimed_authors)  # a rival claim for an author already claimed
            else:
                author = rng.choice(seen)
                if author not in owners:
                    claimed_authors.append(author)
            user = f"mx{tag}-c{claim_users:05d}"
            claim_users += 1
            owners.setdefault(author, user)
            payload = ClaimRequested(
                claim_id=f"mx{tag}-claim{i:06d}",
                author_id=author,
                user_id=user,
                evidence=Evidence(orcid=orcid[author], orcid_authenticated=True),
                show_owner=True,
            )
            kind = "claim"
        env = _envelope(payload, rng, at(i))
        records.append(
            Record(
                payload.topic,
                author.encode(),
                env.to_bytes(),
                kind,
                author,
                env.event_id,
                work_id=payload.work.work_id if kind == "work" else None,  # type: ignore[attr-defined]
                probe=probe,
            )
        )

    followers = Counter(a for (_u, a), on in following.items() if on)
    return MixedStream(records, author_ids, Expected(dict(works_of), owners, dict(followers)))
