"""The owner's own edit of their record: who may edit it, and what an edit changes. Pure.

Only the record's current owner (the user whose claim the claims service approved, as
``claims.events`` told the profile's standing) sets the record's affiliation (name and
email domains), description and openness to collaboration. The HTTP route refuses anyone
else at once (403); the consumer of ``webapp.profile`` asks again when it applies the
command, since the claim may have changed in between (a revocation), and refuses with
``ProfileEditRejected``. The fields an owner set are kept in ``set_by_owner``: importers
no longer change them (``ingest``), so a re-import does not undo the owner's word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from contracts.events.common import Affiliation
from contracts.events.profile import DESCRIPTION_MAX, EditRefusal, OwnerField, ProfileEditRequested
from service_runtime.requests import RequestBody

OWNER_FIELDS: tuple[OwnerField, ...] = get_args(OwnerField)


class ProfileEdit(RequestBody):
    """``PATCH /authors/{id}``: the fields given change, the others stay; a null
    affiliation or description clears it."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})  # an edit names what it sets

    affiliation: Affiliation | None = Field(default=None, description="name and email domains; null clears it")
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX, description="null clears it")
    # Not nullable in the schema (SkipJsonSchema): null is no answer to "open to collaborate?".
    open_to_collaborate: bool | SkipJsonSchema[None] = Field(default=None, description="true or false")

    @model_validator(mode="after")
    def _something_to_set(self) -> ProfileEdit:
        if not self.model_fields_set:
            raise ValueError(f"name at least one of {', '.join(OWNER_FIELDS)}")
        if "open_to_collaborate" in self.model_fields_set and self.open_to_collaborate is None:
            raise ValueError("open_to_collaborate is true or false")
        return self

    def command(self, author_id: str, user_id: str) -> ProfileEditRequested:
        edited = [f for f in OWNER_FIELDS if f in self.model_fields_set]
        return ProfileEditRequested(
            author_id=author_id, user_id=user_id, edited=edited, **{f: getattr(self, f) for f in edited}
        )


class Editable(BaseModel):
    """``GET /authors/{id}/editable``: whether the signed-in user may edit the record (the
    web app shows the owner's form by it)."""

    author_id: str
    editable: bool


def owner_of(claim: Mapping[str, Any] | None) -> str | None:
    """The user who owns the record while it is claimed (the standing's claim part)."""
    if claim and claim.get("claimed"):
        owner = claim.get("owner_user_id")
        return str(owner) if owner else None
    return None


def may_edit(user_id: str, claim: Mapping[str, Any] | None) -> bool:
    return owner_of(claim) == user_id


@dataclass(frozen=True, slots=True)
class Refused:
    reason: EditRefusal
    detail: str


NOT_OWNER = "only the user who claimed this record may edit it"


def decide(
    edit: ProfileEditRequested, state: Mapping[str, Any] | None, claim: Mapping[str, Any] | None
) -> dict[str, Any] | Refused | None:
    """The author's state after the edit (``AuthorState`` shape, one revision on), None when
    it changes nothing, or why it is refused."""
    if state is None:
        return Refused("unknown_author", f"no author record with id {edit.author_id!r}")
    if not may_edit(edit.user_id, claim):
        return Refused("not_owner", NOT_OWNER)
    values = edit.model_dump(mode="json", include={str(f) for f in edit.edited})
    owned = set(state.get("set_by_owner") or ()) | set(edit.edited)
    after = {**state, **values, "set_by_owner": [f for f in OWNER_FIELDS if f in owned]}
    if after == {**state, "set_by_owner": list(state.get("set_by_owner") or ())}:
        return None
    return after | {"revision": state["revision"] + 1}
