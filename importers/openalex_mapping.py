"""OpenAlex JSON -> ``publications.ingested`` payloads. Pure: no HTTP, no broker.

What the real recordings taught (see importers/README.md):
* abstracts come as ``abstract_inverted_index`` (word -> positions) or null;
* arXiv ids are never in ``ids``: only in an arXiv DataCite DOI (10.48550/arxiv.X) and
  in ``locations`` (arxiv.org/abs/X);
* a preprint and its published version are two works with two ids: both are kept,
  never merged (they differ in type, venue and DOI, and OpenAlex lists both).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from contracts.events.common import Affiliation, OrcidId
from contracts.events.publications import (
    ABSTRACT_MAX,
    TITLE_MAX,
    AuthorImported,
    ExternalIds,
    Work,
    WorkAuthor,
    WorkIngested,
    WorkInstitution,
    WorkType,
)

SOURCE = "openalex"
MAX_TOPICS = 50
MAX_AUTHORS = 5000
MAX_INSTITUTIONS = 50  # per authorship
NAME_MAX = 200
VENUE_MAX = 300

_OPENALEX_ID = re.compile(r"(?:https?://openalex\.org/|openalex:)?([WAI]\d+)$", re.IGNORECASE)
_DOI_PREFIX = re.compile(r"^(?:https?://(?:dx\.)?doi\.org/|doi:)", re.IGNORECASE)
_DOI = re.compile(r"^10\.\d{4,9}/\S+$")
# New-style (2108.04680) and old-style (hep-th/9901001) arXiv ids, version dropped.
_ARXIV_ID = r"(\d{4}\.\d{4,5}|[a-z\-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?"
_ARXIV_DOI = re.compile(r"^10\.48550/arxiv\." + _ARXIV_ID + r"$", re.IGNORECASE)
_ARXIV_URL = re.compile(r"^https?://(?:www\.|export\.)?arxiv\.org/(?:abs|pdf)/" + _ARXIV_ID + r"(?:\.pdf)?/?$")
_ORCID = TypeAdapter(OrcidId)

# OpenAlex ``type`` -> contract WorkType; a conference paper is an "article" whose
# ``type_crossref`` says "proceedings-article".
_TYPES: dict[str, WorkType] = {
    "article": "article",
    "preprint": "preprint",
    "book": "book",
    "book-chapter": "book-chapter",
    "dataset": "dataset",
    "dissertation": "dissertation",
    "review": "review",
    "report": "report",
    "posted-content": "preprint",
    "proceedings-article": "proceedings-article",
}


class Skip(Exception):
    """A work that cannot become a valid ``WorkIngested``; ``reason`` is short and stable
    (it is counted in the import summary)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class MappedWork:
    event: WorkIngested
    updated_date: str
    # What was dropped or shortened while mapping (invalid ORCID iD, bad DOI, ...).
    notes: list[str] = field(default_factory=list)


def openalex_key(value: str | None) -> str | None:
    """'https://openalex.org/W123' / 'openalex:W123' / 'W123' -> 'W123' (None if not a work,
    author or institution id)."""
    if not value:
        return None
    m = _OPENALEX_ID.search(value.strip())
    return m.group(1).upper() if m else None


def bzpeer_id(openalex_id: str) -> str:
    return f"{SOURCE}:{openalex_id}"


def rebuild_abstract(inverted: Mapping[str, Any] | None) -> str | None:
    """Put each word of an inverted index back at its positions; None when absent or empty."""
    if not inverted:
        return None
    placed: dict[int, str] = {}
    for word, positions in inverted.items():
        for pos in positions or ():
            if isinstance(pos, int) and pos >= 0:
                placed[pos] = word
    if not placed:
        return None
    return " ".join(placed[p] for p in sorted(placed)).strip() or None


def normalise_doi(raw: str | None) -> str | None:
    if not raw:
        return None
    doi = _DOI_PREFIX.sub("", raw.strip())
    return doi if _DOI.match(doi) and len(doi) <= 300 else None


def arxiv_id(doi: str | None, locations: list[Any] | None) -> str | None:
    """The arXiv id from an arXiv DOI, else from an arxiv.org landing or PDF URL."""
    if doi and (m := _ARXIV_DOI.match(doi)):
        return m.group(1)
    for loc in locations or ():
        if not isinstance(loc, dict):
            continue
        for url in (loc.get("landing_page_url"), loc.get("pdf_url")):
            if isinstance(url, str) and (m := _ARXIV_URL.match(url.strip())):
                return m.group(1)
    return None


def normalise_orcid(raw: str | None) -> str | None:
    """A valid ORCID iD in bare form, or None. Raises ValueError for a malformed one."""
    if not raw:
        return None
    return _ORCID.validate_python(raw)


def map_type(work: Mapping[str, Any]) -> WorkType:
    oa_type = (work.get("type") or "").lower()
    if oa_type == "article" and (work.get("type_crossref") or "").lower() == "proceedings-article":
        return "proceedings-article"
    return _TYPES.get(oa_type, "other")


def _topics(work: Mapping[str, Any]) -> list[str]:
    names = [t.get("display_name") for t in work.get("topics") or () if isinstance(t, dict)]
    if not any(names):  # older records carry only concepts
        names = [c.get("display_name") for c in work.get("concepts") or () if isinstance(c, dict)]
    distinct: dict[str, None] = {}
    for name in names:
        if isinstance(name, str) and name.strip():
            distinct.setdefault(name.strip(), None)
    return list(distinct)[:MAX_TOPICS]


def _institutions(authorship: Mapping[str, Any]) -> list[WorkInstitution]:
    """The institutions of an authorship that have an OpenAlex id and a name, once each."""
    found: dict[str, WorkInstitution] = {}
    for institution in authorship.get("institutions") or ():
        if not isinstance(institution, dict):
            continue
        key = openalex_key(institution.get("id"))
        name = (institution.get("display_name") or "").strip()
        if key is None or not key.startswith("I") or not name or bzpeer_id(key) in found:
            continue
        found[bzpeer_id(key)] = WorkInstitution(institution_id=bzpeer_id(key), display_name=name[:VENUE_MAX])
    return list(found.values())[:MAX_INSTITUTIONS]


def _authors(work: Mapping[str, Any], notes: list[str]) -> list[WorkAuthor]:
    authors: dict[str, WorkAuthor] = {}
    for authorship in work.get("authorships") or ():
        if not isinstance(authorship, dict):
            continue
        author = authorship.get("author") or {}
        key = openalex_key(author.get("id"))
        name = (author.get("display_name") or authorship.get("raw_author_name") or "").strip()
        if key is None or not key.startswith("A") or not name:
            notes.append(f"authorship without author id or name dropped: {author!r:.120}")
            continue
        if bzpeer_id(key) in authors:  # OpenAlex occasionally lists one author twice
            continue
        try:
            orcid = normalise_orcid(author.get("orcid"))
        except ValueError as exc:
            notes.append(f"invalid ORCID iD {author.get('orcid')!r} of {bzpeer_id(key)} dropped: {exc}")
            orcid = None
        authors[bzpeer_id(key)] = WorkAuthor(
            author_id=bzpeer_id(key),
            display_name=name[:NAME_MAX],
            orcid=orcid,
            institutions=_institutions(authorship),
        )
        if len(authors) == MAX_AUTHORS:
            notes.append(f"author list cut at {MAX_AUTHORS}")
            break
    return list(authors.values())


def map_work(work: Mapping[str, Any]) -> MappedWork:
    """One OpenAlex Work -> a ``WorkIngested`` keyed by its first author (as the contract says).

    Raises ``Skip`` for a work the contract cannot hold; everything else that is wrong in a
    single field (an invalid ORCID iD, a malformed DOI) is dropped and noted, never fatal.
    """
    if not isinstance(work, Mapping):
        raise Skip("not a work object")
    key = openalex_key(work.get("id"))
    if key is None or not key.startswith("W"):
        raise Skip("no OpenAlex work id", repr(work.get("id")))
    notes: list[str] = []
    title = (work.get("title") or work.get("display_name") or "").strip()
    if not title:
        raise Skip("no title", key)
    if len(title) > TITLE_MAX:
        raise Skip(f"title longer than {TITLE_MAX} characters", f"{key} ({len(title)})")
    year = work.get("publication_year")
    if not isinstance(year, int):
        raise Skip("no publication year", key)
    authors = _authors(work, notes)
    if not authors:
        raise Skip("no authors", key)

    abstract = rebuild_abstract(work.get("abstract_inverted_index"))
    if abstract and len(abstract) > ABSTRACT_MAX:
        notes.append(f"abstract cut at {ABSTRACT_MAX} characters")
        abstract = abstract[:ABSTRACT_MAX].rsplit(" ", 1)[0]
    doi = normalise_doi(work.get("doi"))
    if work.get("doi") and doi is None:
        notes.append(f"malformed DOI {work.get('doi')!r} dropped")
    source = (work.get("primary_location") or {}).get("source") or {}
    venue = (source.get("display_name") or "").strip()[:VENUE_MAX] or None

    try:
        event = WorkIngested(
            author_id=authors[0].author_id,
            source=SOURCE,
            work=Work(
                work_id=bzpeer_id(key),
                type=map_type(work),
                year=year,
                venue=venue,
                title=title,
                abstract=abstract,
                external_ids=ExternalIds(doi=doi, arxiv_id=arxiv_id(doi, work.get("locations")), openalex_id=key),
                topics=_topics(work),
                authors=authors,
            ),
        )
    except ValidationError as exc:  # e.g. a year outside the plausible range
        first = exc.errors()[0]
        raise Skip("rejected by the contract", f"{key}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    return MappedWork(event=event, updated_date=str(work.get("updated_date") or ""), notes=notes)


def map_author(author: Mapping[str, Any]) -> tuple[AuthorImported, list[str]]:
    """An OpenAlex Author -> ``AuthorImported`` (identity only). Raises ``Skip`` when unusable."""
    key = openalex_key(author.get("id"))
    name = (author.get("display_name") or "").strip()
    if key is None or not key.startswith("A") or not name:
        raise Skip("author without id or name", repr(author.get("id")))
    notes: list[str] = []
    try:
        orcid = normalise_orcid(author.get("orcid"))
    except ValueError as exc:
        notes.append(f"invalid ORCID iD {author.get('orcid')!r} dropped: {exc}")
        orcid = None
    institutions = [i for i in author.get("last_known_institutions") or () if isinstance(i, dict)]
    institution = (institutions[0].get("display_name") or "").strip() if institutions else ""
    return (
        AuthorImported(
            author_id=bzpeer_id(key),
            display_name=name[:NAME_MAX],
            orcid=orcid,
            # OpenAlex knows the institution, not its email domains (claims need those for L2).
            affiliation=Affiliation(name=institution[:300]) if institution else None,
            source=SOURCE,
        ),
        notes,
    )
