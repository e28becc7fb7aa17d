"""The profile service's pure logic: derived state, batch planning, standing, paging, seed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from contracts import Envelope
from contracts.events.publications import AuthorImported, Work, WorkIngested
from contracts.registry import decode
from services.profile.derive import fold_name, name_keys
from services.profile.ingest import AuthorRecord, plan_batch
from services.profile.page import (
    BadCursor,
    author_page,
    author_page_json,
    first_page,
    pack_works,
    page_slice,
    unpack_works,
)
from services.profile.seed import DEMO_ORCID, SEED_AUTHOR_ID, seed_envelopes
from services.profile.standing import merge, newest


def work(work_id: str, *authors: str, year: int = 2021, **extra: Any) -> Work:
    return Work(
        work_id=work_id,
        type="article",
        year=year,
        title=f"Title {work_id}",
        authors=[{"author_id": a, "display_name": a.upper()} for a in authors],
        **extra,
    )


def ingested(w: Work) -> tuple[Envelope, WorkIngested]:
    payload = WorkIngested(author_id=w.authors[0].author_id, work=w, source="test")
    return Envelope.wrap(payload, producer="test"), payload


def replan(batch: list, plan) -> Any:
    """Plan again over the state the previous plan left (as if it had been stored)."""
    for record in plan.authors.values():
        record.changed = False
    return plan_batch(batch, plan.authors, {w: d for w, d in plan.works.items()}, min_shared_works=2)


def test_names_fold_case_and_accents_and_every_word_start_is_searchable() -> None:
    assert fold_name("Françoise  BEAUFAYS") == "francoise beaufays"
    assert name_keys("Quoc V. Le") == ["quoc v le", "v le", "le"]


def test_a_batch_registers_authors_adds_works_and_derives_state() -> None:
    batch = [
        ingested(work("w1", "a", "b", topics=["NLP"], external_ids={"arxiv_id": "2101.00001"})),
        ingested(work("w2", "a", "b", year=2020, topics=["NLP", "Vision"])),
        ingested(work("w3", "a", "c", topics=["Vision"])),
    ]
    plan = plan_batch(batch, {}, {}, min_shared_works=2)
    a = plan.authors["a"].state
    assert a["works_count"] == 3 and a["works_by_year"] == {"2021": 2, "2020": 1}
    assert a["topics"] == [{"name": "NLP", "count": 2}, {"name": "Vision", "count": 2}]
    assert a["close_collaborators"] == [{"author_id": "b", "display_name": "B", "shared_works": 2}]
    assert a["record_verification_level"] == "L1"  # a work with an arXiv id
    assert plan.authors["c"].state["record_verification_level"] == "L0"
    kinds = [
        (e.payload.author_id, e.payload.event_type, e.payload.author.revision)
        for e in plan.events
        if e.payload.author_id == "a"
    ]
    assert kinds == [("a", "AuthorRegistered", 1), ("a", "WorkAdded", 2), ("a", "WorkAdded", 3), ("a", "WorkAdded", 4)]
    assert len(plan.works) == 3


def test_the_same_work_again_changes_nothing_and_a_correction_updates_every_author() -> None:
    original = work("w1", "a", "b")
    plan = plan_batch([ingested(original)], {}, {}, min_shared_works=2)
    again = replan([ingested(original)], plan)
    assert again.events == [] and again.changed_authors == [] and again.works == {}
    corrected = replan([ingested(original.model_copy(update={"title": "Fixed"}))], plan)
    assert [(e.payload.author_id, e.payload.event_type, e.payload.work.title) for e in corrected.events] == [
        ("a", "WorkUpdated", "Fixed"),
        ("b", "WorkUpdated", "Fixed"),
    ]


def test_an_author_dropped_from_a_corrected_author_list_loses_the_work() -> None:
    plan = plan_batch([ingested(work("w1", "a", "b"))], {}, {}, min_shared_works=2)
    stored = {"w1": {"_id": "w1", "fingerprint": "old", "author_ids": ["a", "b"]}}
    for record in plan.authors.values():
        record.changed = False
    fixed = plan_batch([ingested(work("w1", "a"))], plan.authors, stored, min_shared_works=2)
    assert fixed.authors["b"].state["works_count"] == 0
    assert [(e.payload.author_id, e.payload.event_type) for e in fixed.events] == [
        ("a", "WorkUpdated"),
        ("b", "AuthorUpdated"),
    ]


def test_author_imported_sets_identity_and_publishes_only_real_changes() -> None:
    imported = AuthorImported(
        author_id="a", display_name="Ada", description="d", orcid="0000-0002-1825-0097", source="t"
    )
    env = Envelope.wrap(imported, producer="t")
    plan = plan_batch([(env, imported)], {}, {}, min_shared_works=2)
    assert plan.authors["a"].state["record_verification_level"] == "L1"  # an ORCID iD on record
    again = replan([(env, imported)], plan)
    assert again.events == []
    renamed = imported.model_copy(update={"display_name": "Ada L."})
    changed = replan([(Envelope.wrap(renamed, producer="t"), renamed)], plan)
    assert [e.payload.event_type for e in changed.events] == ["AuthorUpdated"]


def test_event_ids_are_derived_from_the_cause() -> None:
    batch = [ingested(work("w1", "a"))]
    first = plan_batch(batch, {}, {}, min_shared_works=2)
    second = plan_batch(batch, {}, {}, min_shared_works=2)
    assert [e.event_id for e in first.events] == [e.event_id for e in second.events]


def test_stored_author_documents_round_trip() -> None:
    plan = plan_batch([ingested(work("w1", "a", "b"))], {}, {}, min_shared_works=2)
    doc = plan.authors["a"].to_doc("token")
    back = AuthorRecord.from_doc(doc)
    assert back.entries == plan.authors["a"].entries and back.revision == 2 and back.outbox_token == "token"


def test_standing_keeps_the_newest_revision_and_ignores_stale_events() -> None:
    updates = newest(
        [
            ("a", "trust", {"score": 30, "band": "Emerging", "revision": 2}),
            ("a", "trust", {"score": 10, "band": "Emerging", "revision": 1}),
        ]
    )
    doc = merge("a", None, updates["a"])
    assert doc["trust"]["score"] == 30 and doc["version"] == 1
    assert merge("a", doc, {"trust": {"score": 99, "band": "Trusted", "revision": 2}}) is None


def test_page_shows_null_score_before_trust_and_claim_level_while_claimed() -> None:
    plan = plan_batch([ingested(work("w1", "a", external_ids={"doi": "10.1000/x"}))], {}, {}, min_shared_works=2)
    record = plan.authors["a"]
    doc = {"_id": "a", "works": record.entries, "state": record.state}  # as ProfileStore.author reads it
    page = author_page(doc, None)
    assert page["trust_snapshot"] == {"score": None, "band": None, "verification_level": "L1", "claimed": False}
    claimed = {"claim": {"claimed": True, "verification_level": "L3", "revision": 5}}
    page = author_page(doc, claimed)
    assert page["trust_snapshot"]["verification_level"] == "L3" and page["direct_collaboration_unlocked"]


def test_first_page_is_cut_newest_first_names_missing_works_and_round_trips_into_the_page() -> None:
    entries = [{"id": f"w{i}", "y": 2000 + i} for i in range(5)]
    known = {f"w{i}": {"work_id": f"w{i}", "title": f"Tïtle {i}"} for i in (4, 3)}
    works, cursor, missing = first_page(entries, 3, known)
    assert works is None and missing == ["w2"], "a work neither the batch nor the old page holds is asked for"
    known["w2"] = {"work_id": "w2", "title": "Title 2"}
    works, cursor, missing = first_page(entries, 3, known)
    assert [w["work_id"] for w in works] == ["w4", "w3", "w2"] and not missing
    assert cursor == page_slice(entries, None, 3)[1] is not None
    plan = plan_batch([ingested(work("w1", "a"))], {}, {}, min_shared_works=2)
    page = author_page({"_id": "a", "state": plan.authors["a"].state}, None)
    body = json.loads(author_page_json(page, unpack_works(pack_works(works)), cursor))
    assert body == {**page, "works": {"items": works, "next_cursor": cursor}}


def test_cursor_paging_is_stable_when_works_are_added() -> None:
    entries = [{"id": f"w{i}", "y": 2000 + i % 3} for i in range(10)]
    first, cursor = page_slice(entries, None, 4)
    entries.append({"id": "w-new", "y": 2002})  # a newer work arrives between page loads
    seen = [e["id"] for e in first]
    while cursor:
        page, cursor = page_slice(entries, cursor, 4)
        seen += [e["id"] for e in page]
    assert sorted(seen) == sorted(f"w{i}" for i in range(10))
    with pytest.raises(BadCursor):
        page_slice(entries, "not-a-cursor", 4)


def test_seed_fixture_gives_the_seed_page_counts() -> None:
    batch = [decode("publications.ingested", e.to_bytes()) for e in seed_envelopes()]
    plan = plan_batch(batch, {}, {}, min_shared_works=5)
    state = plan.authors[SEED_AUTHOR_ID].state
    assert state["works_count"] == 28 and len(state["topics"]) == 9
    assert len(state["close_collaborators"]) == 4 and state["record_verification_level"] == "L1"
    assert state["affiliation"] is None and state["orcid"] is None and state["open_to_collaborate"]
    assert "seed:ben-caine" not in plan.authors and "seed:benjamin-caine" in plan.authors


def test_the_seed_gives_the_same_records_in_any_order_of_its_works() -> None:
    """Partitions are consumed in no fixed order (and a rebuild reads them in another one):
    the author records must not depend on it. Ben Caine is "Benjamin Caine" on one work
    and "Ben Caine" on another; the fuller spelling wins either way."""
    batch = [decode("publications.ingested", e.to_bytes()) for e in seed_envelopes()]
    forward = plan_batch(batch, {}, {}, min_shared_works=5).authors
    backward = plan_batch(list(reversed(batch)), {}, {}, min_shared_works=5).authors
    assert forward["seed:benjamin-caine"].identity["display_name"] == "Benjamin Caine"

    def stored(record: AuthorRecord) -> dict[str, Any]:  # less the count of changes it took
        doc = record.to_doc("t")
        state = json.loads(doc.pop("state_json"))
        state.pop("revision")
        return doc | {"revision": None, "state": state}

    assert {a: stored(r) for a, r in forward.items()} == {a: stored(r) for a, r in backward.items()}


def test_a_demo_copy_has_its_own_ids_and_the_example_orcid() -> None:
    copy = seed_envelopes(author_id="demo:run-1", demo_copy=True)
    assert copy[0].data["display_name"] == "Quoc V. Le (demo copy)" and copy[0].data["orcid"] == DEMO_ORCID
    assert all(e.data["work"]["work_id"].startswith("demo:run-1:") for e in copy[1:])
    # Its co-authors are copies too: a demo never adds works to the real co-authors' records.
    co_authors = {a["author_id"] for e in copy[1:] for a in e.data["work"]["authors"]} - {"demo:run-1"}
    assert co_authors and all(a.startswith("demo:run-1.seed:") for a in co_authors)
    assert {e.event_id for e in copy}.isdisjoint({e.event_id for e in seed_envelopes()})
    assert [e.event_id for e in copy] == [e.event_id for e in seed_envelopes(author_id="demo:run-1", demo_copy=True)]
