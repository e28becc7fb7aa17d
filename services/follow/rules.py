"""The follow service's pure rules: applying follow commands to edges, who a source event
notifies, and how a fan-out is cut into chunks. No broker, no driver here."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

BAND_ORDER = ("Emerging", "Established", "Trusted", "Distinguished")


def band_went_up(previous_band: str | None, band: str) -> bool:
    """Only a move to a higher band notifies followers (a first score is no move)."""
    if previous_band is None or previous_band not in BAND_ORDER or band not in BAND_ORDER:
        return False
    return BAND_ORDER.index(band) > BAND_ORDER.index(previous_band)


def page_of(user_id: str, pages: int) -> int:
    """The page of an author's follower index that holds this user (stable across runs)."""
    return zlib.crc32(user_id.encode()) % pages


def field_key(identifier: str) -> str:
    """Ids may contain '.', which MongoDB reads as a path separator inside field names."""
    return identifier.replace("%", "%25").replace(".", "%2E")


def from_field_key(key: str) -> str:
    return key.replace("%2E", ".").replace("%25", "%")


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


@dataclass(frozen=True, slots=True)
class Command:
    kind: Literal["follow", "unfollow"]
    user_id: str
    at: datetime
    ref: object = None  # what the caller needs to derive the outcome's event (its envelope)


@dataclass(frozen=True, slots=True)
class Outcome:
    command: Command
    result: Literal["followed", "unfollowed", "rejected_self_follow", "no_change"]
    count: int  # follower count right after this command


@dataclass
class Applied:
    outcomes: list[Outcome] = field(default_factory=list)
    changed: dict[str, Edge] = field(default_factory=dict)  # user_id -> edge after the batch
    count: int = 0


def apply_commands(
    commands: Sequence[Command], edges: dict[str, Edge], count: int, owner_user_id: str | None
) -> Applied:
    """Apply one author's commands in order. Following twice is one follow, unfollowing
    what you don't follow changes nothing, and the owner of the record can't follow it."""
    current = dict(edges)
    out = Applied(count=count)
    for cmd in commands:
        edge = current.get(cmd.user_id, NO_EDGE)
        if cmd.kind == "follow":
            if owner_user_id is not None and cmd.user_id == owner_user_id:
                result = "rejected_self_follow"
            elif edge.active:
                result = "no_change"
            else:
                current[cmd.user_id] = out.changed[cmd.user_id] = Edge(True, cmd.at, None)
                out.count += 1
                result = "followed"
        else:
            if edge.active:
                current[cmd.user_id] = out.changed[cmd.user_id] = Edge(False, edge.followed_at, cmd.at)
                out.count -= 1
                result = "unfollowed"
            else:
                result = "no_change"
        out.outcomes.append(Outcome(cmd, result, out.count))
    return out


# --- fan-out ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkRange:
    number: int
    after_user_id: str | None  # exclusive; None: from the first
    upto_user_id: str  # inclusive


def recipients(edges: Iterable[tuple[str, Edge]], moment: datetime) -> list[str]:
    """Followers at the moment of the source event, sorted by user id."""
    return sorted(user for user, edge in edges if edge.followed_at_time(moment))


def cut_chunks(sorted_users: Sequence[str], size: int) -> list[tuple[ChunkRange, list[str]]]:
    """Consecutive user-id ranges of at most ``size`` followers each. The same follower set
    always gives the same ranges, so a re-planned fan-out is the same fan-out."""
    chunks = []
    previous: str | None = None
    for number, start in enumerate(range(0, len(sorted_users), size)):
        members = list(sorted_users[start : start + size])
        chunks.append((ChunkRange(number, previous, members[-1]), members))
        previous = members[-1]
    return chunks


def in_range(user_id: str, after: str | None, upto: str) -> bool:
    return (after is None or user_id > after) and user_id <= upto


def notification_title(kind: str, author_name: str, detail: str | None = None) -> str:
    if kind == "new_work":
        text = f"{author_name} published a new work: {detail}" if detail else f"{author_name} published a new work"
    elif kind == "claim_approved":
        text = f"{author_name} claimed their researcher profile"
    else:
        text = f"{author_name} is now {detail}" if detail else f"{author_name} moved up a trust band"
    return text[:600]


# --- unknown authors --------------------------------------------------------------


def unknown_author_expired(expires_at: datetime, sources_read_until: datetime | None) -> bool:
    """A follow parked for an unknown author is rejected only once the wait is over AND the
    author's events have been read up to that moment: a registration appended before the
    wait ended has been seen by then, so the author is really unknown. A wall-clock wait
    alone rejects follows of authors already registered but not read yet (a lagging
    ``profile.events`` consumer)."""
    return sources_read_until is not None and expires_at <= sources_read_until
