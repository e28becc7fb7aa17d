"""The profile service's pure logic: derived state, batch planning, standing, paging, seed."""

from __future__ import annotations

import json
from typing import Any

from contracts import Envelope
from contracts.envelope import EventModel
from contracts.events.claims import AuthorClaimState, ClaimApproved
from contracts.events.follows import AuthorFollowed, FollowerCountChanged
from contracts.events.profile import WorkUpdated
from contracts.events.publications import AuthorImported, Work, WorkIngested
from contracts.events.trust import TrustScoreChanged
from contracts.registry import decode
from service_runtime.delivery import Incoming
from services.profile.derive import fold_name, name_keys
from services.profile.ingest import AuthorRecord, BatchPlan, FirstPage, StoredWork, plan_batch
from services.profile.page import (
    author_page,
    author_page_json,
    cut_first_page,
    is_cursor,
    page_slice,
    stored_cursor,
)
from services.profile.seed import DEMO_ORCID, SEED_AUTHOR_ID, seed_envelopes
from services.profile.standing import PARTS, newest
from services.profile.store import author_fields, record_of


def work(work_id: str, *authors: str, year: int = 2021, **extra: Any) -> Work:
    return Work(
        work_id=work_id,
        type="article",
        year=year,
        title=f"Title {work_id}",
        authors=[{"author_id": a, "display_name": a.upper()} for a in authors],
        **extra,
    )


def incoming(payload: EventModel, topic: str = "publications.ingested") -> Incoming[Any]:
    return Incoming(Envelope.wrap(payload, producer="test"), payload, topic, 0, 0)


def ingested(w: Work) -> Incoming[Any]:
    return incoming(WorkIngested(author_id=w.authors[0].author_id, work=w, source="test"))


def decoded(env: Envelope) -> Incoming[Any]:
    envelope, payload = decode("publications.ingested", env.to_bytes())
    return Incoming(envelope, payload, "publications.ingested", 0, 0)


def state(plan: BatchPlan, author_id: str) -> dict[str, Any]:
    found = plan.authors[author_id].state
    assert found is not None
    return found.model_dump(mode="json")


def replan(batch: list[Incoming[Any]], plan: BatchPlan) -> BatchPlan:
    """Plan again over the state the previous plan left (as if it had been stored)."""
    for record in plan.authors.values():
        record.changed, record.events = False, []
    stored = {w: StoredWork(w, n.fingerprint, n.author_ids) for w, n in plan.works.items()}
    return plan_batch(batch, plan.authors, stored, min_shared_works=2)


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
    a = state(plan, "a")
    assert a["works_count"] == 3 and a["works_by_year"] == {"2021": 2, "2020": 1}
    assert a["topics"] == [{"name": "NLP", "count": 2}, {"name": "Vision", "count": 2}]
    assert a["close_collaborators"] == [{"author_id": "b", "display_name": "B", "shared_works": 2}]
    assert a["record_verification_level"] == "L1"  # a work with an arXiv id
    assert state(plan, "c")["record_verification_level"] == "L0"
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
    updates = [e.payload for e in corrected.events]
    assert [(p.author_id, p.event_type, p.work.title) for p in updates if isinstance(p, WorkUpdated)] == [
        ("a", "WorkUpdated", "Fixed"),
        ("b", "WorkUpdated", "Fixed"),
    ]
    assert len(updates) == 2


def test_an_author_dropped_from_a_corrected_author_list_loses_the_work() -> None:
    plan = plan_batch([ingested(work("w1", "a", "b"))], {}, {}, min_shared_works=2)
    stored = {"w1": StoredWork("w1", "old", ("a", "b"))}
    for record in plan.authors.values():
        record.changed, record.events = False, []
    fixed = plan_batch([ingested(work("w1", "a"))], plan.authors, stored, min_shared_works=2)
    assert state(fixed, "b")["works_count"] == 0
    assert [(e.payload.author_id, e.payload.event_type) for e in fixed.events] == [
        ("a", "WorkUpdated"),
        ("b", "AuthorUpdated"),
    ]


def test_author_imported_sets_identity_and_publishes_only_real_changes() -> None:
    imported = AuthorImported(
        author_id="a", display_name="Ada", description="d", orcid="0000-0002-1825-0097", source="t"
    )
    item = incoming(imported)
    plan = plan_batch([item], {}, {}, min_shared_works=2)
    assert state(plan, "a")["record_verification_level"] == "L1"  # an ORCID iD on record
    again = replan([item], plan)
    assert again.events == []
    renamed = imported.model_copy(update={"display_name": "Ada L."})
    changed = replan([incoming(renamed)], plan)
    assert [e.payload.event_type for e in changed.events] == ["AuthorUpdated"]


def test_event_ids_are_derived_from_the_cause() -> None:
    batch = [ingested(work("w1", "a"))]
    first = plan_batch(batch, {}, {}, min_shared_works=2)
    second = plan_batch(batch, {}, {}, min_shared_works=2)
    assert [e.event_id for e in first.events] == [e.event_id for e in second.events]


def test_stored_author_documents_round_trip() -> None:
    plan = plan_batch([ingested(work("w1", "a", "b"))], {}, {}, min_shared_works=2)
    record = plan.authors["a"]
    record.first_page = FirstPage(20, [work("w1", "a", "b").model_dump(mode="json")], None)
    doc = {"_id": "a", **author_fields(record, published=True)}
    assert doc["state"] == state(plan, "a") and doc["revision"] == 2 and doc["display_name"] == "A"
    assert doc["works"][0]["co_authors"] == [{"author_id": "b", "display_name": "B"}]
    back = record_of(doc)
    assert back.entries == record.entries and back.revision == 2 and back.first_page == record.first_page
    assert back.identity == record.identity and back.pending == []


def test_standing_keeps_the_newest_revision_of_each_part_and_ignores_other_events() -> None:
    trust = dict(author_id="a", band="Emerging", verification_level="L1", components=[], reason="r", formula_version=1)
    claim = AuthorClaimState(claimed=True, owner_user_id="u", claim_id="c", verification_level="L2", revision=4)
    parts = newest(
        PARTS(incoming(p, topic))
        for p, topic in [
            (TrustScoreChanged(score=30, revision=2, **trust), "trust.events"),
            (TrustScoreChanged(score=10, revision=1, **trust), "trust.events"),
            (FollowerCountChanged(author_id="a", count=3, revision=7), "follows.events"),
            (ClaimApproved(claim_id="c", author_id="a", user_id="u", author_claim=claim, verification_level="L2"), "x"),
        ]
    )
    assert {p.name: (p.revision, p.value.get("score", p.value.get("count"))) for p in parts} == {
        "trust": (2, 30),
        "followers": (7, 3),
        "claim": (4, None),
    }
    assert AuthorFollowed not in PARTS.types, "the count comes with FollowerCountChanged"


def test_page_shows_null_score_before_trust_and_claim_level_while_claimed() -> None:
    plan = plan_batch([ingested(work("w1", "a", external_ids={"doi": "10.1000/x"}))], {}, {}, min_shared_works=2)
    page = author_page(state(plan, "a"), None, [], None).model_dump(mode="json")
    assert page["trust_snapshot"] == {"score": None, "band": None, "verification_level": "L1", "claimed": False}
    claimed = {"claim": {"claimed": True, "verification_level": "L3", "revision": 5}}
    page = author_page(state(plan, "a"), claimed, [], None).model_dump(mode="json")
    assert page["trust_snapshot"]["verification_level"] == "L3" and page["direct_collaboration_unlocked"]


def entry(work_id: str, year: int) -> dict[str, Any]:
    return {"work_id": work_id, "year": year}


def test_first_page_is_cut_newest_first_names_missing_works_and_goes_into_the_page() -> None:
    entries = [entry(f"w{i}", 2000 + i) for i in range(5)]
    known = {f"w{i}": work(f"w{i}", "a", year=2000 + i).model_dump(mode="json") for i in (4, 3)}
    assert cut_first_page(entries, 3, known) == ["w2"], "a work neither the batch nor the old page holds is asked for"
    known["w2"] = work("w2", "a", year=2002).model_dump(mode="json")
    first = cut_first_page(entries, 3, known)
    assert isinstance(first, FirstPage)
    assert [w["work_id"] for w in first.works] == ["w4", "w3", "w2"] and first.limit == 3
    assert first.next_cursor == page_slice(entries, None, 3)[1] is not None
    plan = plan_batch([ingested(work("w1", "a"))], {}, {}, min_shared_works=2)
    body = json.loads(author_page(state(plan, "a"), None, first.works, first.next_cursor).model_dump_json())
    assert body["works"] == {"items": first.works, "next_cursor": first.next_cursor}
    assert body["counts"] == {"works": 1, "followers": 0, "topics": 0, "close_collaborators": 0}


def test_served_page_is_the_response_models_json_byte_for_byte() -> None:
    """The page is served without building ``AuthorPage``: its JSON must be the model's."""
    plan = plan_batch(
        [decoded(env) for env in seed_envelopes() if env.event_type == "WorkIngested"], {}, {}, min_shared_works=2
    )
    seed = state(plan, SEED_AUTHOR_ID)
    seed["affiliation"] = {"name": "Example University", "domains": ["example.edu"]}
    seed["description"], seed["orcid"], seed["open_to_collaborate"] = (
        "Researcher. «Ünïcode» \u2028 \n",
        DEMO_ORCID,
        True,
    )
    works = [w.work.model_dump(mode="json") for w in plan.works.values()]
    # Stored works may hold what the page leaves out (authorships' institutions) and lack
    # what it fills in (the defaults of venue, abstract, ids and topics).
    with_institutions = work("w-inst", SEED_AUTHOR_ID, "b").model_dump(mode="json")
    with_institutions["authors"][0]["institutions"] = [{"institution_id": "x:i1", "display_name": "I"}]
    bare = {
        k: v
        for k, v in work("w-bare", "b").model_dump(mode="json").items()
        if k in ("work_id", "type", "year", "title", "authors")
    }
    some_ids = work("w-ids", "b", external_ids={"arxiv_id": "2101.00001"}).model_dump(mode="json")
    some_ids["external_ids"] = {"arxiv_id": "2101.00001"}
    standings: list[dict[str, Any] | None] = [
        None,
        {},
        {"trust": {"score": 71, "band": "Trusted", "verification_level": "L2", "revision": 3}},
        {
            "claim": {"claimed": True, "verification_level": "L3", "revision": 5},
            "followers": {"count": 12, "revision": 2},
        },
    ]
    assert seed["topics"] and seed["close_collaborators"] and len(works) > 20
    for standing in standings:
        for shown, cursor in (([*works[:20], with_institutions, bare, some_ids], "2019:w1"), ([], None)):
            expected = author_page(seed, standing, shown, cursor).model_dump_json().encode()
            assert author_page_json(seed, standing, shown, cursor) == expected
    seed["affiliation"] = None
    assert author_page_json(seed, None, works, None) == author_page(seed, None, works, None).model_dump_json().encode()


def test_a_first_page_cut_before_the_open_cursor_keeps_its_place() -> None:
    # What the base64url JSON cursor of [2020, "arxiv:1912.01106"] was stored as.
    legacy = "WzIwMjAsICJhcnhpdjoxOTEyLjAxMTA2Il0"
    assert stored_cursor(legacy) == (True, "2020:arxiv:1912.01106")
    assert stored_cursor("2020:arxiv:1912.01106") == (True, "2020:arxiv:1912.01106")
    assert stored_cursor(None) == (True, None)
    assert stored_cursor("not a cursor")[0] is False
    assert stored_cursor("WzEsIDJd")[0] is False, "[1, 2]: no work id"


def test_cursor_paging_is_stable_when_works_are_added() -> None:
    entries = [entry(f"w{i}", 2000 + i % 3) for i in range(10)]
    first, cursor = page_slice(entries, None, 4)
    entries.append(entry("w-new", 2002))  # a newer work arrives between page loads
    seen = [e["work_id"] for e in first]
    while cursor:
        page, cursor = page_slice(entries, cursor, 4)
        seen += [e["work_id"] for e in page]
    assert sorted(seen) == sorted(f"w{i}" for i in range(10))


def test_a_works_cursor_is_the_key_of_the_last_work_shown_and_any_such_key_is_a_place() -> None:
    entries = [entry(f"w{i}", 2000 + i) for i in range(5)]  # newest first: w4 (2004) .. w0
    first, cursor = page_slice(entries, None, 2)
    assert [e["work_id"] for e in first] == ["w4", "w3"] and cursor == "2003:w3"
    assert [e["work_id"] for e in page_slice(entries, "2002:w", 10)[0]] == ["w2", "w1", "w0"]
    assert page_slice(entries, "1600:zzz", 10) == ([], None)  # past the end: an empty page
    assert is_cursor(cursor) and is_cursor(None)
    assert not is_cursor("WzIwMDMsICJ3MyJd") and not is_cursor("2003:") and not is_cursor("203:w3")


def test_seed_fixture_gives_the_seed_page_counts() -> None:
    batch = [decoded(e) for e in seed_envelopes()]
    plan = plan_batch(batch, {}, {}, min_shared_works=5)
    seed = state(plan, SEED_AUTHOR_ID)
    assert seed["works_count"] == 28 and len(seed["topics"]) == 9
    assert len(seed["close_collaborators"]) == 4 and seed["record_verification_level"] == "L1"
    assert seed["affiliation"] is None and seed["orcid"] is None and seed["open_to_collaborate"]
    assert "seed:ben-caine" not in plan.authors and "seed:benjamin-caine" in plan.authors


def test_the_seed_gives_the_same_records_in_any_order_of_its_works() -> None:
    """Partitions are consumed in no fixed order (and a rebuild reads them in another one):
    the author records must not depend on it. Ben Caine is "Benjamin Caine" on one work
    and "Ben Caine" on another; the fuller spelling wins either way."""
    batch = [decoded(e) for e in seed_envelopes()]
    forward = plan_batch(batch, {}, {}, min_shared_works=5).authors
    backward = plan_batch(list(reversed(batch)), {}, {}, min_shared_works=5).authors
    assert forward["seed:benjamin-caine"].identity["display_name"] == "Benjamin Caine"

    def stored(record: AuthorRecord) -> dict[str, Any]:  # less the count of changes it took
        doc = author_fields(record, published=True)
        doc["state"].pop("revision")
        return doc | {"revision": None}

    assert {a: stored(r) for a, r in forward.items()} == {a: stored(r) for a, r in backward.items()}


def test_a_demo_copy_has_its_own_ids_and_the_example_orcid() -> None:
    copy = seed_envelopes(author_id="demo:run-1", demo_copy=True)
    assert copy[0].data["display_name"] == "Quoc V. Le (demo copy)" and copy[0].data["orcid"] == DEMO_ORCID
    assert copy[0].data["open_to_collaborate"] is False, "its owner opens it (the demo's step)"
    assert all(e.data["work"]["work_id"].startswith("demo:run-1:") for e in copy[1:])
    # Its co-authors are copies too: a demo never adds works to the real co-authors' records.
    co_authors = {a["author_id"] for e in copy[1:] for a in e.data["work"]["authors"]} - {"demo:run-1"}
    assert co_authors and all(a.startswith("demo:run-1.seed:") for a in co_authors)
    assert {e.event_id for e in copy}.isdisjoint({e.event_id for e in seed_envelopes()})
    assert [e.event_id for e in copy] == [e.event_id for e in seed_envelopes(author_id="demo:run-1", demo_copy=True)]
