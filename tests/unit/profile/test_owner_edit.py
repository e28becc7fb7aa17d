"""The owner's own edit: only the owner, only the fields named, and importers leave what
the owner set."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contracts.events.profile import AuthorState, ProfileEditRequested
from contracts.events.publications import AuthorImported
from services.profile.ingest import plan_batch
from services.profile.owner_edit import NOT_OWNER, ProfileEdit, Refused, decide, may_edit, owner_of
from services.profile.store import author_fields, record_of
from tests.unit.profile.test_profile_domain import incoming, ingested, work

CLAIMED = {"claimed": True, "owner_user_id": "quoc", "claim_id": "c1", "verification_level": "L2", "revision": 2}
STATE = AuthorState(
    author_id="a1",
    display_name="Quoc V. Le",
    description="Imported text.",
    works_count=3,
    record_verification_level="L1",
    revision=7,
).model_dump(mode="json")


def edit(user: str = "quoc", **fields: Any) -> ProfileEditRequested:
    return ProfileEdit.model_validate(fields).command("a1", user)


def test_only_the_current_owner_may_edit() -> None:
    assert owner_of(CLAIMED) == "quoc" and may_edit("quoc", CLAIMED)
    assert not may_edit("mallory", CLAIMED)
    assert not may_edit("quoc", {**CLAIMED, "claimed": False}), "a revoked or withdrawn claim owns nothing"
    assert not may_edit("quoc", None), "an unclaimed record has no owner"
    assert decide(edit("mallory", open_to_collaborate=True), STATE, CLAIMED) == Refused("not_owner", NOT_OWNER)
    refused = decide(edit(open_to_collaborate=True), None, CLAIMED)
    assert isinstance(refused, Refused) and refused.reason == "unknown_author"


def test_the_owner_sets_the_fields_named_and_only_those() -> None:
    after = decide(
        edit(open_to_collaborate=True, affiliation={"name": "Google DeepMind", "domains": ["google.com"]}),
        STATE,
        CLAIMED,
    )
    assert isinstance(after, dict)
    assert after["open_to_collaborate"] is True
    assert after["affiliation"] == {"name": "Google DeepMind", "domains": ["google.com"]}
    assert after["description"] == "Imported text." and after["works_count"] == 3
    assert after["set_by_owner"] == ["affiliation", "open_to_collaborate"] and after["revision"] == 8
    cleared = decide(edit(description=None), AuthorState.model_validate(after).model_dump(mode="json"), CLAIMED)
    assert isinstance(cleared, dict) and cleared["description"] is None
    assert cleared["set_by_owner"] == ["affiliation", "description", "open_to_collaborate"]


def test_an_edit_that_changes_nothing_publishes_nothing() -> None:
    once = decide(edit(open_to_collaborate=True), STATE, CLAIMED)
    assert isinstance(once, dict)
    assert decide(edit(open_to_collaborate=True), once, CLAIMED) is None


@pytest.mark.parametrize(
    "body",
    [{}, {"open_to_collaborate": None}, {"owner": "me"}, {"description": "x" * 2001}, {"affiliation": {"name": ""}}],
)
def test_an_edit_names_something_valid_to_set(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ProfileEdit.model_validate(body)


def test_the_command_names_the_fields_given_even_to_clear_them() -> None:
    command = edit(affiliation=None, open_to_collaborate=False)
    assert command.edited == ["affiliation", "open_to_collaborate"] and command.affiliation is None
    with pytest.raises(ValidationError):
        ProfileEditRequested(author_id="a1", user_id="u", edited=["open_to_collaborate"])


def test_a_re_import_leaves_what_the_owner_set() -> None:
    imported = AuthorImported(author_id="a1", display_name="Quoc V. Le", description="Imported text.", source="test")
    plan = plan_batch([incoming(imported), ingested(work("w1", "a1"))], {}, {}, min_shared_works=5)
    doc = author_fields(plan.authors["a1"], published=True) | {"_id": "a1"}
    owned = decide(edit(open_to_collaborate=True, description="In my words."), doc["state"], CLAIMED)
    assert isinstance(owned, dict)
    doc |= {k: owned[k] for k in ("description", "open_to_collaborate", "set_by_owner")}
    doc |= {"state": owned, "revision": owned["revision"]}

    again = AuthorImported(
        author_id="a1", display_name="Quoc Le", description="Imported again.", open_to_collaborate=False, source="t"
    )
    replanned = plan_batch([incoming(again)], {"a1": record_of(doc)}, {}, min_shared_works=5)
    state = replanned.authors["a1"].state
    assert state is not None and state.display_name == "Quoc Le", "what the owner did not set follows the import"
    assert state.description == "In my words." and state.open_to_collaborate is True
    assert state.set_by_owner == ["description", "open_to_collaborate"]
