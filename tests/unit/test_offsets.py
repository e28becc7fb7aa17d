"""How far a consumer group has read, as a moment (pure part of service_runtime.offsets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service_runtime.offsets import LogMark, read_until

T0 = datetime(2026, 1, 1, tzinfo=UTC)
P0, P1 = ("profile.events", 0), ("profile.events", 1)


def test_read_until_is_the_newest_mark_the_committed_offsets_reached() -> None:
    marks = [
        LogMark(T0, {P0: 5, P1: 3}),
        LogMark(T0 + timedelta(seconds=1), {P0: 9, P1: 3}),
        LogMark(T0 + timedelta(seconds=2), {P0: 12, P1: 4}),
    ]
    assert read_until(marks, {P0: 4, P1: 3}) == (None, marks)
    reached, left = read_until(marks, {P0: 9, P1: 3})
    assert reached == T0 + timedelta(seconds=1) and left == marks[2:]
    assert read_until(marks, {P0: 12, P1: 4}) == (T0 + timedelta(seconds=2), [])


def test_a_partition_never_committed_reaches_only_an_empty_mark() -> None:
    assert read_until([LogMark(T0, {P0: 0, P1: 0})], {}) == (T0, [])
    assert read_until([LogMark(T0, {P0: 1})], {})[0] is None
