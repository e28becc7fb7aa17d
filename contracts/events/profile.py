"""``profile.events``: author records and works, each event carrying the author's current state."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

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


# The fields of a record its owner (the user who claimed it) sets themself.
OwnerField = Literal["affiliation", "description", "open_to_collaborate"]
DESCRIPTION_MAX = 2000


class AuthorState(Frozen):
    """The author's full current state: consumers replace, never add."""

    author_id: Id
    display_name: str
    description: str | None = None
    affiliation: Affiliation | None = None
    orcid: OrcidId | None = None
    open_to_collaborate: bool = False
    # The fields the record's owner set: importers no longer change them.
    set_by_owner: list[OwnerField] = []
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


class ProfileEditRequested(EventModel):
    """Command (``webapp.profile``): the record's owner sets some of its own fields. Only
    the fields named in ``edited`` change; a null affiliation or description clears it."""

    event_type: ClassVar[str] = "ProfileEditRequested"
    topic: ClassVar[str] = Topic.WEBAPP_PROFILE

    author_id: Id
    user_id: Id  # who asks: applied only if this user owns the record when it is handled
    edited: list[OwnerField] = Field(min_length=1, max_length=3)
    affiliation: Affiliation | None = None
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX)
    open_to_collaborate: bool | None = None

    @model_validator(mode="after")
    def _edited_once_and_set(self) -> ProfileEditRequested:
        if len(set(self.edited)) != len(self.edited):
            raise ValueError("a field is named twice in edited")
        if "open_to_collaborate" in self.edited and self.open_to_collaborate is None:
            raise ValueError("open_to_collaborate is edited, so it must be true or false")
        return self


EditRefusal = Literal["not_owner", "unknown_author"]


class ProfileEditRejected(EventModel):
    """An owner's edit refused: the user does not own the record (now), or there is no such
    record. Nothing changed."""

    event_type: ClassVar[str] = "ProfileEditRejected"
    topic: ClassVar[str] = Topic.PROFILE_EVENTS

    author_id: Id
    user_id: Id
    reason: EditRefusal
    detail: str = Field(max_length=500)
