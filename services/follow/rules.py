"""The follow service's pure rules: deciding follow commands, folding follows.events back
into edges and counts, what other services' events say of an author, who a source event
notifies and how a fan-out is cut into chunks. No broker, no driver, no stored shape here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from contracts.envelope import EventModel
from contracts.events.claims import AuthorClaimState
from contracts.events.common import TrustBand, band_rank, is_newer
from contracts.events.follows import (
    AuthorFollowed,
    AuthorUnfollowed,
    FollowerCountChanged,
    FollowPending,
    FollowRejected,
    FollowRejectionReason,
)
from contracts.events.notifications import NotificationKind


def band_went_up(previous_band: TrustBand | None, band: TrustBand) -> bool:
    """Only a move to a higher band notifies followers (a first score is no move)."""
    return previous_band is not None and band_rank(band) > band_rank(previous_band)


# --- edges ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Edge:
    """One user's follow of one author. An unfollow keeps the edge, marked, so a fan-out
    planned later still knows who followed at the moment of its source event."""

    active: bool
    followed_at: datetime | None = None
    unfollowed_at: datetime | None = None

    def followed_at_time(self, moment: datetime) -> bool:
        """Was this user a follower at ``moment``?"""
        if self.followed_at is None or self.followed_at > moment:
            return False
        return self.active or (self.unfollowed_at is not None and self.unfollowed_at > moment)


NO_EDGE = Edge(active=False)


# --- deciding commands ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cause:
    """The command an event answers: its event id and correlation id."""

    id: uuid.UUID
    correlation_id: str


@dataclass(frozen=True, slots=True)
class Command:
    kind: Literal["follow", "unfollow"]
    user_id: str
    at: datetime  # when the user asked (the command's occurred_at)
    cause: Cause


@dataclass(frozen=True, slots=True)
class ParkedUnfollow:
    at: datetime
    cause: Cause


@dataclass(frozen=True, slots=True)
class Parked:
    """A follow waiting for its author to be known, and the unfollow of the same user
    that came while it waited, if one did (applied right after it)."""

    user_id: str
    at: datetime
    cause: Cause
    wait_until: datetime
    unfollow: ParkedUnfollow | None = None

    def event(self, author_id: str) -> FollowPending:
        return FollowPending(
            author_id=author_id,
            user_id=self.user_id,
            follow_id=self.cause.id,
            requested_at=self.at,
            wait_until=self.wait_until,
            unfollow_id=self.unfollow.cause.id if self.unfollow else None,
            unfollow_requested_at=self.unfollow.at if self.unfollow else None,
        )


@dataclass(frozen=True, slots=True)
class FollowState:
    """What deciding an author's commands needs: whether the author is known, its owner,
    the exact count, the follow revision (+1 per edge change) and the parked follows."""

    known: bool = False
    owner_user_id: str | None = None
    count: int = 0
    revision: int = 0
    parked: tuple[Parked, ...] = ()


@dataclass(frozen=True, slots=True)
class Emit:
    """An event a decision publishes: the payload, the command it answers, and what makes
    its id unique among that command's events (the id is derived from both)."""

    payload: EventModel
    cause: Cause
    id_parts: tuple[object, ...] = ()


@dataclass
class Decision:
    state: FollowState  # after the commands
    emits: list[Emit] = field(default_factory=list)
    edges: dict[str, Edge] = field(default_factory=dict)  # user -> edge, those that changed
    parked_changed: bool = False

    @property
    def changes_anything(self) -> bool:
        return bool(self.emits) or self.parked_changed


def unknown_author_expired(expires_at: datetime, sources_read_until: datetime | None) -> bool:
    """A follow parked for an unknown author is rejected only once the wait is over AND the
    author's events have been read up to that moment: a registration appended before the
    wait ended has been seen by then, so the author is really unknown. A wall-clock wait
    alone rejects follows of authors already registered but not read yet (a lagging
    ``profile.events`` consumer)."""
    return sources_read_until is not None and expires_at <= sources_read_until


class _Applying:
    """One author's edges and count while its commands are applied in order."""

    def __init__(self, author_id: str, state: FollowState, edges: dict[str, Edge]) -> None:
        self.author_id = author_id
        self.owner = state.owner_user_id
        self.count = state.count
        self.revision = state.revision
        self.edges = dict(edges)
        self.changed: dict[str, Edge] = {}
        self.emits: list[Emit] = []
        self.last_change: Cause | None = None

    def follow(self, user_id: str, at: datetime, cause: Cause) -> None:
        if self.owner is not None and user_id == self.owner:
            self.reject(user_id, "self_follow", cause)
            return
        if self.edges.get(user_id, NO_EDGE).active:
            return  # following twice is one follow
        self.count += 1
        self.revision += 1
        self._set(user_id, Edge(True, at, None), cause)
        self.emit(
            AuthorFollowed(
                author_id=self.author_id, user_id=user_id, count=self.count, followed_at=at, revision=self.revision
            ),
            cause,
        )

    def unfollow(self, user_id: str, at: datetime, cause: Cause) -> None:
        edge = self.edges.get(user_id, NO_EDGE)
        if not edge.active:
            return  # unfollowing what you don't follow changes nothing
        self.count -= 1
        self.revision += 1
        self._set(user_id, Edge(False, edge.followed_at, at), cause)
        self.emit(
            AuthorUnfollowed(
                author_id=self.author_id, user_id=user_id, count=self.count, unfollowed_at=at, revision=self.revision
            ),
            cause,
        )

    def reject(self, user_id: str, reason: FollowRejectionReason, cause: Cause) -> None:
        self.emit(FollowRejected(author_id=self.author_id, user_id=user_id, reason=reason), cause)

    def emit(self, payload: EventModel, cause: Cause, *id_parts: object) -> None:
        self.emits.append(Emit(payload, cause, id_parts))

    def _set(self, user_id: str, edge: Edge, cause: Cause) -> None:
        self.edges[user_id] = self.changed[user_id] = edge
        self.last_change = cause


def decide(
    author_id: str,
    state: FollowState,
    commands: Sequence[Command],
    edges: dict[str, Edge],
    *,
    wait_until: datetime,
    sources_read_until: datetime | None,
) -> Decision:
    """Apply one author's commands in order (``edges``: the current edges of the users
    concerned). Following twice is one follow, unfollowing what you don't follow changes
    nothing, and the owner of the record can't follow it.

    A known author's parked follows are applied first, in the order they came. While the
    author is unknown a follow is parked (``FollowPending``, waiting until ``wait_until``);
    an unfollow is kept with the user's parked follow, if there is one; a parked follow
    whose wait is over (``unknown_author_expired``) is rejected with its unfollow."""
    run = _Applying(author_id, state, edges)
    if state.known:
        for p in state.parked:
            run.follow(p.user_id, p.at, p.cause)
            if p.unfollow is not None:
                run.unfollow(p.user_id, p.unfollow.at, p.unfollow.cause)
        for c in commands:
            if c.kind == "follow":
                run.follow(c.user_id, c.at, c.cause)
            else:
                run.unfollow(c.user_id, c.at, c.cause)
        parked: tuple[Parked, ...] = ()
    else:
        waiting: list[Parked] = []
        for p in state.parked:
            if unknown_author_expired(p.wait_until, sources_read_until):
                run.reject(p.user_id, "unknown_author", p.cause)
            else:
                waiting.append(p)
        for c in commands:
            i = _open_follow(waiting, c.user_id)
            if c.kind == "follow" and i is None:
                waiting.append(Parked(c.user_id, c.at, c.cause, wait_until))
                run.emit(waiting[-1].event(author_id), c.cause)
            elif c.kind == "unfollow" and i is not None:
                waiting[i] = replace(waiting[i], unfollow=ParkedUnfollow(c.at, c.cause))
                run.emit(waiting[i].event(author_id), c.cause)
        parked = tuple(waiting)
    if run.count != state.count and run.last_change is not None:
        # The revision is part of the id: a re-sent command may end two batches, and each
        # batch's count is its own event.
        run.emit(
            FollowerCountChanged(author_id=author_id, count=run.count, revision=run.revision),
            run.last_change,
            run.revision,
        )
    after = replace(state, count=run.count, revision=run.revision, parked=parked)
    return Decision(after, run.emits, run.changed, parked != state.parked)


def _open_follow(parked: Sequence[Parked], user_id: str) -> int | None:
    """The user's parked follow that no unfollow has joined yet (at most one)."""
    for i, p in enumerate(parked):
        if p.user_id == user_id and p.unfollow is None:
            return i
    return None


# --- folding follows.events back ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EdgeChange:
    """What a run of one edge's events sets: its state, ``followed_at`` only when the run
    holds a follow (an unfollow keeps the stored one), and the newest revision among them
    (None: events of producers that did not say)."""

    active: bool
    followed_at: datetime | None
    sets_followed_at: bool
    unfollowed_at: datetime | None
    revision: int | None


class EdgeFold:
    """Edges as ``AuthorFollowed``/``AuthorUnfollowed`` say, events taken in log order:
    (author, user) -> the change to write. An event not newer than the change held for its
    edge is passed over: at-least-once delivery can put a copy of an older event (an
    outbox published again) after newer ones. ``at`` is the time to use for an event of an
    older producer that does not carry its moment (its envelope's)."""

    def __init__(self) -> None:
        self.changes: dict[tuple[str, str], EdgeChange] = {}

    def _stale(self, key: tuple[str, str], revision: int | None) -> bool:
        held = self.changes.get(key)
        return revision is not None and held is not None and not is_newer(revision, held.revision)

    def followed(self, p: AuthorFollowed, at: datetime) -> None:
        key = (p.author_id, p.user_id)
        if self._stale(key, p.revision):
            return
        self.changes[key] = EdgeChange(
            True, p.followed_at or at, True, None, _newest(self.changes.get(key), p.revision)
        )

    def unfollowed(self, p: AuthorUnfollowed, at: datetime) -> None:
        key = (p.author_id, p.user_id)
        if self._stale(key, p.revision):
            return
        before = self.changes.get(key)
        self.changes[key] = EdgeChange(
            False,
            before.followed_at if before else None,
            before.sets_followed_at if before else False,
            p.unfollowed_at or at,
            _newest(before, p.revision),
        )

    def revisions(self) -> dict[str, int]:
        """Per author, the newest revision among the changes."""
        out: dict[str, int] = {}
        for (author_id, _), change in self.changes.items():
            if change.revision is not None and change.revision > out.get(author_id, 0):
                out[author_id] = change.revision
        return out


def _newest(before: EdgeChange | None, revision: int | None) -> int | None:
    held = before.revision if before else None
    if held is None or (revision is not None and revision > held):
        return revision
    return held


@dataclass
class FollowFold:
    """One author's count, revisions and parked follows as follows.events says (a rebuild
    applies its events in log order, from the stored state)."""

    count: int | None
    revision: int | None
    count_revision: int | None
    parked: list[Parked]
    parked_changed: bool = False
    # The parked follows that ended: a copy of their FollowPending read later (an outbox
    # published again) must not park them again. Kept by the rebuild across batches.
    ended: set[uuid.UUID] = field(default_factory=set)

    def followed(self, p: AuthorFollowed, caused_by: uuid.UUID | None) -> None:
        self._edge_changed(p.count, p.revision)
        self._end(caused_by)

    def unfollowed(self, p: AuthorUnfollowed) -> None:
        self._edge_changed(p.count, p.revision)

    def count_changed(self, p: FollowerCountChanged) -> None:
        if is_newer(p.revision, self.count_revision):
            self.count, self.count_revision = p.count, p.revision

    def rejected(self, caused_by: uuid.UUID | None) -> None:
        self._end(caused_by)

    def pending(self, p: FollowPending, correlation_id: str) -> None:
        """A follow parked, or joined by an unfollow (the event of the same follow again)."""
        if p.follow_id in self.ended:
            return
        unfollow = (
            ParkedUnfollow(p.unfollow_requested_at, Cause(p.unfollow_id, correlation_id))
            if p.unfollow_id is not None and p.unfollow_requested_at is not None
            else None
        )
        for i, held in enumerate(self.parked):
            if held.cause.id == p.follow_id:
                self.parked[i] = replace(held, unfollow=unfollow or held.unfollow)
                break
        else:
            cause = Cause(p.follow_id, correlation_id)
            self.parked.append(Parked(p.user_id, p.requested_at, cause, p.wait_until, unfollow))
        self.parked_changed = True

    def _edge_changed(self, count: int, revision: int | None) -> None:
        if revision is None:  # an older producer: in log order
            self.count = count
        elif is_newer(revision, self.revision):
            self.count, self.revision = count, revision

    def _end(self, caused_by: uuid.UUID | None) -> None:
        """A parked follow ends with the AuthorFollowed or FollowRejected it caused."""
        if caused_by is None:
            return
        kept = [p for p in self.parked if p.cause.id != caused_by]
        if len(kept) != len(self.parked):
            self.parked, self.parked_changed = kept, True
            self.ended.add(caused_by)


# --- what other services' events say of an author -------------------------------------


@dataclass
class AuthorFacts:
    """An author as profile.events and claims.events tell it: known (registered), its
    newest name and its owner, each with the revision of its last change."""

    known: bool = False
    display_name: str | None = None
    profile_revision: int | None = None
    owner_user_id: str | None = None
    claim_revision: int | None = None

    def named(self, display_name: str, revision: int) -> bool:
        """The author exists, with this name as of ``revision``; True if that changed
        anything. A newer revision with the same name changes nothing (nearly every profile
        event is a new revision of its author), so ``profile_revision`` is the revision of
        the last change; an author's events are read in order, so a redelivered one is
        passed over again as it was the first time."""
        if not is_newer(revision, self.profile_revision):
            return False
        if self.known and self.display_name == display_name:
            return False
        self.known, self.display_name, self.profile_revision = True, display_name, revision
        return True

    def claimed(self, claim: AuthorClaimState) -> bool:
        """The newest owner (None when unclaimed); as for the name, a newer revision with
        the same owner changes nothing."""
        if not is_newer(claim.revision, self.claim_revision):
            return False
        owner = claim.owner_user_id if claim.claimed else None
        if self.claim_revision is not None and self.owner_user_id == owner:
            return False
        self.owner_user_id, self.claim_revision = owner, claim.revision
        return True

    def name(self, author_id: str) -> str:
        return self.display_name or author_id


# --- fan-out ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkRange:
    number: int
    after_user_id: str | None  # exclusive; None: from the first
    upto_user_id: str  # inclusive
    followers: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A fan-out: who follows ``author_id`` at ``followed_before`` (the source event's
    moment) is notified, in the user-id ranges of its chunks."""

    fanout_id: str
    author_id: str
    kind: NotificationKind
    title: str
    source_event_id: uuid.UUID
    followed_before: datetime
    chunks: list[ChunkRange]
    shared: bool = False  # chunks write shared inbox entries (``shares_entries``)
    # False: the chunks are cut later, away from the source events (``FanoutCutRequested``),
    # and ``counted`` is the follower count the plan was made for.
    cut: bool = True
    counted: int = 0

    @property
    def followers(self) -> int:
        return sum(c.followers for c in self.chunks) if self.cut else self.counted


@dataclass(frozen=True, slots=True)
class ChunkNotified:
    """A chunk whose notifications were decided (they are in its outbox until published)."""

    chunk_key: str
    fanout_id: str
    author_id: str
    number: int
    notified: int


def recipients(edges: Iterable[tuple[str, Edge]], moment: datetime) -> list[str]:
    """Followers at the moment of the source event, sorted by user id, each once (a paged
    scan of the store can return a document twice)."""
    return sorted({user for user, edge in edges if edge.followed_at_time(moment)})


def cut_chunks(sorted_users: Sequence[str], size: int) -> list[ChunkRange]:
    """Consecutive user-id ranges of at most ``size`` followers each. The same follower set
    always gives the same ranges, so a re-planned fan-out is the same fan-out."""
    chunks = []
    previous: str | None = None
    for number, start in enumerate(range(0, len(sorted_users), size)):
        members = sorted_users[start : start + size]
        chunks.append(ChunkRange(number, previous, members[-1], len(members)))
        previous = members[-1]
    return chunks


def in_range(user_id: str, after: str | None, upto: str | None) -> bool:
    """Whether a user id is in (after, upto]; None: unbounded on that side."""
    return (after is None or user_id > after) and (upto is None or user_id <= upto)


def notification_title(kind: str, author_name: str, detail: str | None = None) -> str:
    if kind == "new_work":
        text = f"{author_name} published a new work: {detail}" if detail else f"{author_name} published a new work"
    elif kind == "claim_approved":
        text = f"{author_name} claimed their researcher profile"
    else:
        text = f"{author_name} is now {detail}" if detail else f"{author_name} moved up a trust band"
    return text[:600]


# --- the inbox: own entries and shared ones ---------------------------------------------


def shares_entries(followers: int, shared_above: int) -> bool:
    """A fan-out to more followers than ``shared_above`` keeps one shared inbox entry per
    chunk of followers (one document listing them) instead of one entry per follower:
    measured on our store, a document per follower is written at ~5,700/s, a member of a
    shared entry at ~75,000/s (docs/fanout.md)."""
    return followers > shared_above


@dataclass(frozen=True, slots=True)
class SharedEntry:
    """One notification of a large fan-out, shared by the followers of one chunk (its
    ``shared_id`` is the chunk key, "<fanout_id>:<n>"). Each follower's notification id is
    derived from the source event and the user, as for an entry of their own."""

    shared_id: str
    author_id: str
    kind: NotificationKind
    title: str
    source_event_id: uuid.UUID
    created_at: datetime

    @property
    def fanout_id(self) -> str:
        return self.shared_id.rsplit(":", 1)[0]


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One notification as a user's inbox lists it, own or from a shared entry."""

    notification_id: str
    created_at: datetime
    read: bool
    shared_id: str | None  # the shared entry it comes from, if it is not one of the user's own

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.created_at, self.notification_id)


def before_cursor(item: InboxItem, before: tuple[datetime, str] | None) -> bool:
    """Strictly older than the cursor (newest first: ``created_at``, then id, descending)."""
    return before is None or item.order < before


def merge_newest_first(
    own: Iterable[InboxItem], shared: Iterable[InboxItem], *, materialized: set[str], limit: int
) -> list[InboxItem]:
    """One page of a user's inbox from the page of their own entries and the page of the
    shared entries they are in (each newest first). A shared notification the user marked
    read has an entry of their own with the same id (``materialized``): that one stands."""
    by_id: dict[str, InboxItem] = {i.notification_id: i for i in shared if i.notification_id not in materialized}
    by_id.update({i.notification_id: i for i in own})
    return sorted(by_id.values(), key=lambda i: i.order, reverse=True)[:limit]
