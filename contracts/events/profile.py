"""``profile.events``: author records and works, each event carrying the author's current state."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from contracts.envelope import EventModel
from contracts.events.common import Affiliation, Frozen, Id, OrcidId, VerificationLevel
from contracts.events.publications import ExternalIds, WorkType
from contracts.topics import Topic


class TopicCount(Frozen):
    name: str
    count: int = Field(ge=1)


class Collaborator(Frozen):
    author_id: Id
    display_name: str
    shared_works: int = Field(ge=1)


class AuthorState(Frozen):
    """The author's full current state: consumers replace, never add."""

    author_id: Id
    display_name: str
    description: str | None = None
    affiliation: Affiliation | None = None
    orcid: OrcidId | None = None
    open_to_collaborate: bool = False
    works_count: int = Field(ge=0)
    works_by_year: dict[str, int] = {}  # "2023" -> 5: what trust's recency signal needs
    topics: list[TopicCount] = []
    close_collaborators: list[Collaborator] = []
    # L0/L1 from the record itself; L2/L3 come from the claims service.
    record_verification_level: VerificationLevel
    # Increases by one with every change of this author's record: consumers ignore an
    # event whose revision is not newer than the one they hold.
    revision: int = Field(ge=1)


class WorkSummary(Frozen):
    work_id: Id
    type: WorkType
    year: int
    title: str
    venue: str | None = None
    external_ids: ExternalIds = ExternalIds()


class _AuthorEvent(EventModel):
    topic: ClassVar[str] = Topic.PROFILE_EVENTS

    author_id: Id
    author: AuthorState


class AuthorRegistered(_AuthorEvent):
    event_type: ClassVar[str] = "AuthorRegistered"


class AuthorUpdated(_AuthorEvent):
    event_type: ClassVar[str] = "AuthorUpdated"


class WorkAdded(_AuthorEvent):
    event_type: ClassVar[str] = "WorkAdded"
    work: WorkSummary


class WorkUpdated(_AuthorEvent):
    event_type: ClassVar[str] = "WorkUpdated"
    work: WorkSummary
