"""The incremental tally behind an author's derived state: changed entry by entry it
must say what a recount of the final entries says, whatever the order of the works."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.profile.derive import derive_state
from services.profile.ingest import AuthorRecord
from services.profile.store import WrittenAuthors, record_of

IDENTITY = {"author_id": "a", "display_name": "Quoc V. Le", "orcid": None}
CO_AUTHORS = ["b", "c", "d"]
SPELLINGS = {"b": ["Ben Caine", "Benjamin Caine"], "c": ["Yonghui Wu"], "d": ["I. Sutskever", "Ilya Sutskever"]}


def entry(work: int, year: int, topics: list[str], co: list[tuple[str, int]], external: bool) -> dict[str, Any]:
    return {
        "work_id": f"w{work}",
        "year": year,
        "fingerprint": f"h{work}-{year}",
        "has_external_id": external,
        "topics": topics,
        "co_authors": [{"author_id": c, "display_name": SPELLINGS[c][s % len(SPELLINGS[c])]} for c, s in co],
    }


entries_st = st.builds(
    entry,
    st.integers(0, 12),
    st.integers(2015, 2024),
    st.lists(st.sampled_from(["ML", "Speech", "Vision"]), max_size=2, unique=True),
    st.lists(st.tuples(st.sampled_from(CO_AUTHORS), st.integers(0, 1)), max_size=3, unique_by=lambda t: t[0]),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "drop"]), entries_st), max_size=30))
def test_changed_entry_by_entry_it_equals_a_recount(changes: list[tuple[str, dict[str, Any]]]) -> None:
    record = AuthorRecord(author_id="a", identity=dict(IDENTITY), entries=[])
    record.derive_state(2)  # the tally exists from here on and is kept up to date
    for op, e in changes:
        position = record.position(e["work_id"])
        if op == "drop":
            record.drop_entry(e["work_id"])
        elif position is None:
            record.add_entry(e)
        else:
            record.replace_entry(position, e)
        assert record.derive_state(2) == derive_state(record.identity, record.entries, record.revision, 2)
    assert sorted(e["work_id"] for e in record.entries) == sorted({e["work_id"] for e in record.entries})


def test_the_state_does_not_depend_on_the_order_of_the_works() -> None:
    """Close collaborators are named by their fullest spelling: a rebuild that reads the
    works in another order derives the same state."""
    entries = [entry(i, 2015 + i % 4, ["ML"], [("b", i), ("d", i + 1)], i % 2 == 0) for i in range(6)]
    states = set()
    for seed in range(10):
        shuffled = entries[:]
        random.Random(seed).shuffle(shuffled)
        states.add(repr(derive_state(IDENTITY, shuffled, 7, 2)))
    assert len(states) == 1
    state = derive_state(IDENTITY, entries, 7, 2)
    assert [c["display_name"] for c in state["close_collaborators"]] == ["Benjamin Caine", "Ilya Sutskever"]
    assert state["works_count"] == 6 and state["record_verification_level"] == "L1"
    assert state["works_by_year"] == {"2018": 1, "2017": 1, "2016": 2, "2015": 2}


def test_a_record_taken_from_the_written_one_is_a_copy() -> None:
    """The planner changes the record it is given; the one kept as written stays as written
    (a batch that fails after planning must find it unchanged)."""
    written = AuthorRecord(
        author_id="a", identity=dict(IDENTITY), entries=[entry(1, 2020, ["ML"], [("b", 0)], True)], revision=3
    )
    before = written.derive_state(1)
    kept = WrittenAuthors(100)
    kept.keep([written])
    held = kept.get("a")
    assert held is not None and held.revision == 3
    taken = record_of({"_id": "a", "display_name": "Quoc V. Le", "revision": 3, "outbox": []}, held)
    taken.add_entry(entry(2, 2021, ["Speech"], [("b", 1)], False))
    taken.revision += 1
    assert taken.derive_state(1)["works_count"] == 2
    assert len(written.entries) == 1 and written.derive_state(1) == before
    kept.keep([AuthorRecord(author_id="big", identity={}, entries=[entry(i, 2020, [], [], False) for i in range(101)])])
    assert "big" not in kept and "a" in kept, "an author larger than the whole cache is not kept"
