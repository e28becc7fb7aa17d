"""``publications.ingested``: what importers publish (works and author records)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from contracts.envelope import EventModel
from contracts.events.common import NOT_BLANK, Affiliation, Frozen, Id, JsonInt, OrcidId
from contracts.topics import Topic

WorkType = Literal[
    "preprint",
    "article",
    "book",
    "book-chapter",
    "dataset",
    "dissertation",
    "proceedings-article",
    "review",
    "report",
    "other",
]
TITLE_MAX = 500  # longest real titles are ~300 characters; beyond this is junk input
ABSTRACT_MAX = 20_000
MIN_YEAR = 1600  # older than the first scholarly journals (1665) is certainly wrong
# A fixed bound, stated in the JSON Schema: one that moved with the calendar (say, next
# year) would make a year the schema allows one the service refuses.
MAX_YEAR = 2100


class WorkInstitution(Frozen):
    """An institution an author gave on a work (an authorship's affiliation)."""

    institution_id: Id  # e.g. "openalex:I161548249"
    display_name: str = Field(min_length=1, max_length=300)


class WorkAuthor(Frozen):
    author_id: Id
    display_name: str = Field(min_length=1, max_length=200, pattern=NOT_BLANK)
    orcid: OrcidId | None = None
    # Optional, added after the first works were published: left out of the JSON when
    # empty, so a work without institutions serializes (and fingerprints) as before.
    institutions: list[WorkInstitution] = Field(default=[], max_length=50, exclude_if=lambda v: not v)


class ExternalIds(Frozen):
    doi: str | None = Field(default=None, pattern=r"^10\.\d{4,9}/\S+$", max_length=300)
    arxiv_id: str | None = Field(default=None, pattern=r"^(\d{4}\.\d{4,5}|[a-z\-]+(\.[A-Z]{2})?/\d{7})(v\d+)?$")
    openalex_id: str | None = Field(default=None, pattern=r"^W\d+$")


class Work(Frozen):
    work_id: Id
    type: WorkType
    year: JsonInt = Field(ge=MIN_YEAR, le=MAX_YEAR)
    venue: str | None = Field(default=None, max_length=300)
    title: str = Field(min_length=1, max_length=TITLE_MAX, pattern=NOT_BLANK)
    abstract: str | None = Field(default=None, max_length=ABSTRACT_MAX)
    external_ids: ExternalIds = ExternalIds()
    topics: list[str] = Field(default=[], max_length=50)
    authors: list[WorkAuthor] = Field(
        min_length=1, max_length=5000, description="an author listed twice is kept once, where first listed"
    )

    @field_validator("authors")
    @classmethod
    def _each_author_once(cls, authors: list[WorkAuthor]) -> list[WorkAuthor]:
        # Taken once rather than refused: JSON Schema cannot say "unique by author_id", so
        # a refusal would turn down works the published schema allows.
        first: dict[str, WorkAuthor] = {}
        for author in authors:
            first.setdefault(author.author_id, author)
        return list(first.values())


class WorkIngested(EventModel):
    """An importer saw this work (new or corrected). Keyed by the first author's id."""

    event_type: ClassVar[str] = "WorkIngested"
    topic: ClassVar[str] = Topic.PUBLICATIONS_INGESTED
    key_field: ClassVar[str] = "author_id"

    author_id: Id  # the partition key: the first author
    work: Work
    source: str = Field(min_length=1, max_length=100)  # e.g. "seed", "openalex", "http-import"

    @model_validator(mode="after")
    def _key_is_an_author(self) -> WorkIngested:
        if self.author_id not in {a.author_id for a in self.work.authors}:
            raise ValueError("author_id must be one of the work's authors")
        return self


class AuthorImported(EventModel):
    """An importer's view of an author record (identity fields only)."""

    event_type: ClassVar[str] = "AuthorImported"
    topic: ClassVar[str] = Topic.PUBLICATIONS_INGESTED

    author_id: Id
    display_name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    affiliation: Affiliation | None = None
    orcid: OrcidId | None = None
    open_to_collaborate: bool = False
    source: str = Field(min_length=1, max_length=100)
