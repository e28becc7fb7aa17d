"""Mapping real recorded OpenAlex records to publications.ingested payloads (pure)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from contracts.events.publications import TITLE_MAX
from importers.openalex import parse_identifier
from importers.openalex_mapping import (
    Skip,
    arxiv_id,
    map_author,
    map_type,
    map_work,
    normalise_doi,
    openalex_key,
    rebuild_abstract,
)

DATA = Path(__file__).parents[2] / "integration" / "importers" / "data"
WORKS = {
    w["id"].rsplit("/", 1)[1]: w
    for w in json.loads((DATA / "works-author-A5017898742-page-1.json").read_text())["results"]
}


def work(key: str) -> dict:
    return copy.deepcopy(WORKS[key])


def test_every_recorded_work_maps_with_its_title_year_and_id() -> None:
    for key, raw in WORKS.items():
        event = map_work(raw).event
        assert event.work.work_id == f"openalex:{key}"
        assert (event.work.title, event.work.year) == (raw["title"], raw["publication_year"])
        assert event.author_id == event.work.authors[0].author_id
        assert event.source == "openalex"


def test_abstract_is_rebuilt_by_position_or_absent() -> None:
    assert rebuild_abstract({"world": [1], "hello": [0, 2]}) == "hello world hello"
    assert rebuild_abstract(None) is None and rebuild_abstract({}) is None
    abstract = map_work(work("W2250748100")).event.work.abstract
    assert abstract is not None
    assert abstract.startswith("By collecting images of heritage assets from members of the public and processing them")
    assert map_work(work("W3200026003")).event.work.abstract is None  # recorded as null


def test_arxiv_id_comes_from_the_arxiv_doi_since_ids_never_has_it() -> None:
    raw = work("W3188841554")
    assert "arxiv" not in raw["ids"]
    ids = map_work(raw).event.work.external_ids
    assert (ids.doi, ids.arxiv_id, ids.openalex_id) == ("10.48550/arxiv.2108.04680", "2108.04680", "W3188841554")


def test_arxiv_id_is_found_in_locations_when_the_doi_is_not_arxivs() -> None:
    raw = work("W3188841554")
    raw["doi"] = None
    assert map_work(raw).event.work.external_ids.arxiv_id == "2108.04680"
    assert arxiv_id(None, [{"landing_page_url": "https://arxiv.org/pdf/hep-th/9901001v2.pdf"}]) == "hep-th/9901001"
    assert (
        arxiv_id(
            None, [{"landing_page_url": "https://dblp.uni-trier.de/db/journals/corr/corr2108.html#abs-2108-04680"}]
        )
        is None
    )


def test_a_preprint_and_its_published_version_stay_two_works() -> None:
    preprint, published = map_work(work("W3188841554")).event.work, map_work(work("W3187234764")).event.work
    assert preprint.title == published.title
    assert preprint.work_id != published.work_id
    assert (preprint.type, published.type) == ("preprint", "article")
    assert published.external_ids.doi == "10.2312/cgvc.20211309" and published.external_ids.arxiv_id is None


def test_types_venue_and_topics() -> None:
    conference = map_work(work("W3200026003")).event.work
    assert (conference.type, conference.venue) == ("proceedings-article", "IEEE Visualization")
    assert conference.topics == [
        "Augmented Reality Applications",
        "Virtual Reality Applications and Impacts",
        "Interactive and Immersive Displays",
    ]
    assert map_work(work("W2241997964")).event.work.venue is None  # primary_location has no source
    assert map_type({"type": "paratext"}) == "other"
    assert map_type({"type": "dissertation"}) == "dissertation"


def test_topics_fall_back_to_concepts_for_records_without_topics() -> None:
    raw = work("W2978758657")
    raw["topics"] = []
    topics = map_work(raw).event.work.topics
    assert topics == [c["display_name"] for c in raw["concepts"]]


def test_authors_get_prefixed_ids_and_bare_orcids() -> None:
    authors = map_work(work("W2978758657")).event.work.authors
    assert [(a.author_id, a.display_name, a.orcid) for a in authors[:2]] == [
        ("openalex:A5017898742", "Joseph Mearman", None),
        ("openalex:A5032473237", "Peter Butcher", "0000-0002-3361-627X"),
    ]


def test_an_invalid_orcid_is_dropped_and_noted_not_fatal() -> None:
    raw = work("W2978758657")
    raw["authorships"][1]["author"]["orcid"] = "https://orcid.org/0000-0002-3361-6270"  # wrong check digit
    mapped = map_work(raw)
    assert mapped.event.work.authors[1].orcid is None
    assert any("invalid ORCID" in n and "A5032473237" in n for n in mapped.notes)


def test_an_author_listed_twice_is_kept_once() -> None:
    raw = work("W2978758657")
    raw["authorships"].append(copy.deepcopy(raw["authorships"][0]))
    assert len(map_work(raw).event.work.authors) == len(WORKS["W2978758657"]["authorships"])


@pytest.mark.parametrize(
    "change, reason",
    [
        (
            lambda w: w.update(title="x" * (TITLE_MAX + 1), display_name="x" * (TITLE_MAX + 1)),
            f"title longer than {TITLE_MAX} characters",
        ),
        (lambda w: w.update(authorships=[]), "no authors"),
        (lambda w: w.update(publication_year=None), "no publication year"),
        (lambda w: w.update(publication_year=2999), "rejected by the contract"),
        (lambda w: w.update(title=None, display_name=None), "no title"),
        (lambda w: w.update(id=None), "no OpenAlex work id"),
    ],
)
def test_unusable_works_are_skipped_with_a_reason(change, reason) -> None:
    raw = work("W2250748100")
    change(raw)
    with pytest.raises(Skip) as skipped:
        map_work(raw)
    assert skipped.value.reason == reason


def test_malformed_doi_is_dropped() -> None:
    raw = work("W2250748100")
    raw["doi"] = "https://doi.org/not-a-doi"
    mapped = map_work(raw)
    assert mapped.event.work.external_ids.doi is None and mapped.notes
    assert normalise_doi("https://doi.org/10.1145/2795233") == "10.1145/2795233"


def test_authors_map_with_affiliation_and_orcid() -> None:
    priem, _ = map_author(json.loads((DATA / "author-A5023888391.json").read_text()))
    assert priem.affiliation is not None
    assert (priem.author_id, priem.display_name, priem.orcid, priem.affiliation.name) == (
        "openalex:A5023888391",
        "Jason Priem",
        "0000-0001-6187-6610",
        "OpenAlex",
    )
    mearman, _ = map_author(json.loads((DATA / "author-A5017898742.json").read_text()))
    assert mearman.affiliation is not None
    assert (mearman.orcid, mearman.affiliation.name) == (None, "Bangor University")


def test_identifiers_are_orcids_or_openalex_author_ids() -> None:
    assert parse_identifier("0000-0001-6187-6610") == ("orcid", "0000-0001-6187-6610")
    assert parse_identifier("https://orcid.org/0000-0001-6187-6610") == ("orcid", "0000-0001-6187-6610")
    assert parse_identifier("A5017898742") == ("openalex", "A5017898742")
    assert parse_identifier("https://openalex.org/A5017898742") == ("openalex", "A5017898742")
    assert parse_identifier("openalex:a5017898742") == ("openalex", "A5017898742")
    with pytest.raises(ValueError, match="check digit"):
        parse_identifier("0000-0001-6187-6611")
    with pytest.raises(ValueError, match="neither an ORCID"):
        parse_identifier("W3188841554")
    assert openalex_key("https://openalex.org/W1") == "W1" and openalex_key("nonsense") is None


def test_the_recorded_single_work_response_maps_like_its_list_entry() -> None:
    single = json.loads((DATA / "work-W3188841554.json").read_text())
    assert map_work(single).event.work.external_ids.arxiv_id == "2108.04680"
    assert map_work(single).event.work.title == map_work(work("W3188841554")).event.work.title


def test_each_author_carries_the_institutions_of_its_authorship() -> None:
    authors = {a.author_id: a for a in map_work(work("W3188841554")).event.work.authors}
    mearman = authors["openalex:A5017898742"]
    assert [(i.institution_id, i.display_name) for i in mearman.institutions] == [
        ("openalex:I161548249", "Bangor University")
    ]


def test_institutions_without_id_or_name_are_dropped_and_none_leaves_the_work_as_before() -> None:
    raw = work("W3188841554")
    raw["authorships"][0]["institutions"] = [
        {"id": None, "display_name": "Nameless Lab"},
        {"id": "https://openalex.org/I1", "display_name": " "},
    ]
    assert map_work(raw).event.work.authors[0].institutions == []
    bare = map_work(work("W2978758657")).event.work
    assert all("institutions" not in a for a in bare.model_dump(mode="json")["authors"])
