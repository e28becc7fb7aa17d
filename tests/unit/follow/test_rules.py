"""The follow service's pure rules: deciding commands, folding the decisions back, who a
source event notifies, chunking."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events.follows import (
    AuthorFollowed,
    AuthorUnfollowed,
    FollowerCountChanged,
    FollowPending,
    FollowRejected,
)
from contracts.events.notifications import fanout_id, notification_id
from services.follow.rules import (
    NO_EDGE,
    Cause,
    Command,
    Decision,
    Edge,
    EdgeFold,
    FollowFold,
    FollowState,
    InboxItem,
    band_went_up,
    before_cursor,
    cut_chunks,
    decide,
    in_range,
    merge_newest_first,
    recipients,
    shares_entries,
    unknown_author_expired,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WAIT = T0 + timedelta(hours=1)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def cmd(kind: str, user: str, minute: int) -> Command:
    return Command("follow" if kind == "follow" else "unfollow", user, at(minute), Cause(uuid.uuid4(), "c"))


def run(
    commands: list[Command],
    state: FollowState | None = None,
    edges: dict[str, Edge] | None = None,
    read_until: datetime | None = None,
) -> Decision:
    return decide(
        "a1",
        state or FollowState(known=True),
        commands,
        edges or {},
        wait_until=WAIT,
        sources_read_until=read_until,
    )


def kinds(d: Decision) -> list[str]:
    return [e.payload.event_type for e in d.emits]


def test_following_twice_is_one_follow_and_unfollowing_nothing_is_a_no_op() -> None:
    d = run([cmd("follow", "u1", 1), cmd("follow", "u1", 2), cmd("unfollow", "u2", 3)])
    assert kinds(d) == ["AuthorFollowed", "FollowerCountChanged"]
    assert d.state.count == 1 and d.edges == {"u1": Edge(True, at(1), None)}


def test_a_follow_racing_an_unfollow_ends_in_the_order_given() -> None:
    d = run(
        [cmd("follow", "u1", 1), cmd("unfollow", "u1", 2), cmd("follow", "u1", 3)],
        FollowState(known=True, count=5, revision=9),
    )
    counts = [(e.payload.event_type, getattr(e.payload, "count", None)) for e in d.emits]
    assert counts == [
        ("AuthorFollowed", 6),
        ("AuthorUnfollowed", 5),
        ("AuthorFollowed", 6),
        ("FollowerCountChanged", 6),
    ]
    assert d.edges["u1"] == Edge(True, at(3), None)
    assert [getattr(e.payload, "revision", None) for e in d.emits] == [10, 11, 12, 12]


def test_the_owner_cannot_follow_their_own_record() -> None:
    d = run([cmd("follow", "owner", 1)], FollowState(known=True, owner_user_id="owner"))
    assert kinds(d) == ["FollowRejected"] and d.state.count == 0 and not d.edges
    assert d.emits[0].payload == FollowRejected(author_id="a1", user_id="owner", reason="self_follow")


def test_unfollow_keeps_the_edge_marked_with_its_time() -> None:
    d = run([cmd("unfollow", "u1", 5)], FollowState(known=True, count=1, revision=1), {"u1": Edge(True, at(1))})
    assert d.state.count == 0 and d.edges["u1"] == Edge(False, at(1), at(5))


def test_a_batch_that_nets_to_no_change_publishes_no_count() -> None:
    d = run([cmd("follow", "u1", 1), cmd("unfollow", "u1", 2)], FollowState(known=True, count=3, revision=4))
    assert kinds(d) == ["AuthorFollowed", "AuthorUnfollowed"] and d.state.count == 3 and d.state.revision == 6


# --- unknown authors --------------------------------------------------------------


def test_follows_of_an_unknown_author_wait_and_an_unfollow_joins_its_follow() -> None:
    commands = [
        cmd("follow", "u1", 1),
        cmd("follow", "u2", 2),
        cmd("unfollow", "u1", 3),
        cmd("follow", "u3", 4),
        cmd("follow", "u2", 5),  # already waiting: one follow
        cmd("unfollow", "u9", 6),  # nothing to unfollow
    ]
    d = run(commands, FollowState(known=False))
    assert kinds(d) == ["FollowPending"] * 4 and d.state.count == 0 and not d.edges
    assert [(p.user_id, p.unfollow is not None) for p in d.state.parked] == [("u1", True), ("u2", False), ("u3", False)]
    joined = d.emits[2].payload
    assert isinstance(joined, FollowPending) and joined.unfollow_id == commands[2].cause.id
    assert joined.follow_id == commands[0].cause.id and d.emits[2].cause == commands[2].cause

    # The author becomes known: the parked follows go first, in order, then new commands.
    after = run([cmd("follow", "u4", 7)], FollowState(known=True, parked=d.state.parked))
    users = [(e.payload.event_type, getattr(e.payload, "user_id", None)) for e in after.emits]
    assert users == [
        ("AuthorFollowed", "u1"),
        ("AuthorUnfollowed", "u1"),
        ("AuthorFollowed", "u2"),
        ("AuthorFollowed", "u3"),
        ("AuthorFollowed", "u4"),
        ("FollowerCountChanged", None),
    ]
    assert after.state.parked == () and after.parked_changed and after.state.count == 3
    # Each outcome answers the command it came from.
    assert after.emits[0].cause == commands[0].cause and after.emits[1].cause == commands[2].cause


def test_a_parked_follow_whose_wait_is_over_is_rejected_with_its_unfollow() -> None:
    parked = run([cmd("follow", "u1", 1), cmd("unfollow", "u1", 2)], FollowState(known=False)).state
    assert run([], parked, read_until=WAIT - timedelta(seconds=1)).emits == []  # read, but not that far
    d = run([], parked, read_until=WAIT)
    assert kinds(d) == ["FollowRejected"] and d.state.parked == ()
    assert d.emits[0].payload == FollowRejected(author_id="a1", user_id="u1", reason="unknown_author")


def test_a_parked_follow_of_an_unknown_author_expires_only_once_its_events_were_read_past_the_wait() -> None:
    expires = T0 + timedelta(seconds=60)
    assert not unknown_author_expired(expires, None)  # nothing known about the reading yet
    assert not unknown_author_expired(expires, expires - timedelta(seconds=1))  # lagging: maybe registered
    assert unknown_author_expired(expires, expires)


# --- the decisions folded back (what a rebuild does) ------------------------------------


def events_of(decisions: list[Decision]) -> list[tuple[object, Cause]]:
    """The events of ``decisions`` in the order they were published."""
    return [(e.payload, e.cause) for d in decisions for e in d.emits]


def fold(events: list[tuple[object, Cause]], start: FollowState) -> tuple[FollowFold, EdgeFold]:
    """Fold ``events`` the way a rebuild reads them from follows.events."""
    follow = FollowFold(count=None, revision=None, count_revision=None, parked=list(start.parked))
    edges = EdgeFold()
    for p, cause in events:
        if isinstance(p, AuthorFollowed):
            follow.followed(p, cause.id)
            edges.followed(p, T0)
        elif isinstance(p, AuthorUnfollowed):
            follow.unfollowed(p)
            edges.unfollowed(p, T0)
        elif isinstance(p, FollowerCountChanged):
            follow.count_changed(p)
        elif isinstance(p, FollowRejected):
            follow.rejected(cause.id)
        elif isinstance(p, FollowPending):
            follow.pending(p, cause.correlation_id)
    return follow, edges


steps = st.lists(
    st.tuples(
        st.sampled_from(["follow", "unfollow", "register", "expire", "cut"]),
        st.sampled_from(["u1", "u2", "u3", "owner"]),
    ),
    max_size=40,
)


def decide_script(script: list[tuple[str, str]]) -> tuple[list[Decision], FollowState, dict[str, Edge]]:
    """Run the commands of ``script`` through ``decide`` in the batches it cuts, the author
    becoming known and waits running out where it says: the decisions, the final state and
    the edges they left."""
    state = FollowState(known=False, owner_user_id="owner")
    edges: dict[str, Edge] = {}
    decisions: list[Decision] = []
    batch: list[Command] = []
    read_until: datetime | None = None
    minute = 0

    def flush() -> None:
        nonlocal state, batch
        d = decide("a1", state, batch, edges, wait_until=at(minute + 1000), sources_read_until=read_until)
        edges.update(d.edges)
        decisions.append(d)
        state, batch = d.state, []

    for step, user in script:
        minute += 1
        if step in ("follow", "unfollow"):
            batch.append(cmd(step, user, minute))
        elif step == "register":
            flush()
            state = FollowState(
                known=True, owner_user_id="owner", count=state.count, revision=state.revision, parked=state.parked
            )
        elif step == "expire":
            read_until = at(minute + 10_000)
            flush()
        else:
            flush()
    flush()
    return decisions, state, edges


def assert_folds_to(events: list[tuple[object, Cause]], state: FollowState, edges: dict[str, Edge]) -> None:
    follow, edge_fold = fold(events, FollowState())
    assert (follow.count or 0) == state.count
    assert (follow.revision or 0) == state.revision
    assert tuple(follow.parked) == state.parked
    folded = {user: Edge(c.active, c.followed_at, c.unfollowed_at) for (_, user), c in edge_fold.changes.items()}
    assert folded == edges
    assert all(c.revision is not None for c in edge_fold.changes.values())


@given(steps)
@settings(max_examples=300, deadline=None)
def test_folding_the_events_of_any_run_of_decisions_gives_the_state_decided(script: list[tuple[str, str]]) -> None:
    """Whatever the commands, the batches they came in, when the author became known and
    when a wait ran out: the events alone give back the count, the revision, the parked
    follows and every edge the decisions left."""
    decisions, state, edges = decide_script(script)
    assert_folds_to(events_of(decisions), state, edges)
    assert state.count == sum(e.active for e in edges.values())


@given(steps, st.data())
@settings(max_examples=300, deadline=None)
def test_copies_of_older_events_read_after_newer_ones_change_nothing(
    script: list[tuple[str, str]], data: st.DataObject
) -> None:
    """At-least-once: an outbox published again puts copies of its events after newer
    ones (a follow read again after its unfollow, a parked follow's FollowPending after the
    follow it became). The fold still gives the state decided."""
    decisions, state, edges = decide_script(script)
    events = events_of(decisions)
    if events:
        copies = data.draw(st.lists(st.integers(0, len(events) - 1), max_size=8), label="copied")
        for i in copies:
            later = data.draw(st.integers(i + 1, len(events)), label="read again at")
            events.insert(later, events[i])
    assert_folds_to(events, state, edges)


def test_an_unfollow_survives_its_follow_published_again_after_it() -> None:
    """The follow service's rebuild once came out with an edge active that live had
    unfollowed: the AuthorFollowed was published a second time after the AuthorUnfollowed."""
    decisions, state, edges = decide_script([("register", "u1"), ("follow", "u1"), ("cut", "u1"), ("unfollow", "u1")])
    events = events_of(decisions)
    followed = next(e for e in events if isinstance(e[0], AuthorFollowed))
    assert_folds_to([*events, followed], state, edges)
    assert edges["u1"].active is False


# --- fan-out ----------------------------------------------------------------------


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
    assert [c.followers for c in chunks] == [10, 10, 3]
    for user in users:
        assert sum(in_range(user, c.after_user_id, c.upto_user_id) for c in chunks) == 1
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


def test_only_a_fanout_past_the_threshold_shares_entries() -> None:
    assert not shares_entries(10_000, 10_000)
    assert shares_entries(10_001, 10_000)
    assert shares_entries(1, 0)


def item(minute: int, nid: str, shared: str | None = None, read: bool = False) -> InboxItem:
    return InboxItem(nid, at(minute), read, shared)


def test_an_inbox_page_merges_own_and_shared_entries_newest_first() -> None:
    own = [item(5, "b"), item(3, "c")]
    shared = [item(6, "x", "f:0"), item(5, "a", "g:0"), item(1, "y", "h:0")]
    page = merge_newest_first(own, shared, materialized=set(), limit=4)
    assert [i.notification_id for i in page] == ["x", "b", "a", "c"]  # ties by id, descending


def test_a_shared_notification_marked_read_is_listed_once_as_the_users_own() -> None:
    own = [item(4, "x", read=True)]  # the copy written when the user marked it read
    shared = [item(4, "x", "f:0"), item(2, "y", "g:0")]
    page = merge_newest_first(own, shared, materialized={"x"}, limit=10)
    assert [(i.notification_id, i.read, i.shared_id) for i in page] == [("x", True, None), ("y", False, "g:0")]


def test_the_cursor_takes_strictly_older_entries() -> None:
    cursor = (at(5), "b")
    assert before_cursor(item(5, "a"), cursor)
    assert not before_cursor(item(5, "b"), cursor)
    assert not before_cursor(item(6, "a"), cursor)
    assert before_cursor(item(4, "z"), cursor)
    assert before_cursor(item(9, "z"), None)
