"""The follow service's pure rules: edges and counts, who a source event notifies, chunking."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from contracts.events.notifications import fanout_id, notification_id
from services.follow.rules import (
    NO_EDGE,
    Command,
    Edge,
    apply_commands,
    band_went_up,
    cut_chunks,
    field_key,
    from_field_key,
    in_range,
    page_of,
    recipients,
    unknown_author_expired,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_following_twice_is_one_follow_and_unfollowing_nothing_is_a_no_op() -> None:
    out = apply_commands(
        [Command("follow", "u1", at(1)), Command("follow", "u1", at(2)), Command("unfollow", "u2", at(3))], {}, 0, None
    )
    assert [o.result for o in out.outcomes] == ["followed", "no_change", "no_change"]
    assert out.count == 1 and out.changed == {"u1": Edge(True, at(1), None)}


def test_a_follow_racing_an_unfollow_ends_in_the_order_given() -> None:
    cmds = [Command("follow", "u1", at(1)), Command("unfollow", "u1", at(2)), Command("follow", "u1", at(3))]
    out = apply_commands(cmds, {}, 5, None)
    assert [o.count for o in out.outcomes] == [6, 5, 6]
    assert out.changed["u1"] == Edge(True, at(3), None)


def test_the_owner_cannot_follow_their_own_record() -> None:
    out = apply_commands([Command("follow", "owner", at(1))], {}, 0, "owner")
    assert out.outcomes[0].result == "rejected_self_follow" and out.count == 0 and not out.changed


def test_unfollow_keeps_the_edge_marked_with_its_time() -> None:
    out = apply_commands([Command("unfollow", "u1", at(5))], {"u1": Edge(True, at(1))}, 1, None)
    assert out.count == 0 and out.changed["u1"] == Edge(False, at(1), at(5))


def test_recipients_are_who_followed_at_the_moment_of_the_event() -> None:
    edges = [
        ("before", Edge(True, at(1))),
        ("after", Edge(True, at(20))),
        ("left-before", Edge(False, at(1), at(5))),
        ("left-after", Edge(False, at(1), at(15))),
        ("never", NO_EDGE),
    ]
    assert recipients(edges, at(10)) == ["before", "left-after"]


def test_chunks_are_consecutive_user_id_ranges_covering_everyone_once() -> None:
    users = sorted(f"u{i:03d}" for i in range(23))
    chunks = cut_chunks(users, 10)
    assert [len(m) for _, m in chunks] == [10, 10, 3]
    for user in users:
        assert sum(in_range(user, r.after_user_id, r.upto_user_id) for r, _ in chunks) == 1
    assert cut_chunks(users, 10) == chunks  # a re-plan gives the same chunks
    assert cut_chunks([], 10) == []


def test_only_an_upward_band_change_notifies() -> None:
    assert band_went_up("Emerging", "Established") and band_went_up("Established", "Distinguished")
    assert not band_went_up("Trusted", "Emerging") and not band_went_up("Trusted", "Trusted")
    assert not band_went_up(None, "Trusted")


def test_ids_are_deterministic() -> None:
    source = uuid.uuid4()
    assert notification_id(source, "u1") == notification_id(source, "u1") != notification_id(source, "u2")
    assert fanout_id(source) == fanout_id(source) != fanout_id(uuid.uuid4())


def test_pages_are_stable_and_field_keys_round_trip() -> None:
    assert page_of("user.7", 256) == page_of("user.7", 256) < 256
    for identifier in ("openalex:A5017898742", "a.b.c", "50%.x"):
        key = field_key(identifier)
        assert "." not in key and from_field_key(key) == identifier


# --- unknown authors --------------------------------------------------------------


def test_a_parked_follow_of_an_unknown_author_expires_only_once_its_events_were_read_past_the_wait() -> None:
    expires = T0 + timedelta(seconds=60)
    assert not unknown_author_expired(expires, None)  # nothing known about the reading yet
    assert not unknown_author_expired(expires, expires - timedelta(seconds=1))  # lagging: maybe registered
    assert unknown_author_expired(expires, expires)
