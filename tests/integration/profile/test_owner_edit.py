"""The owner's own edit over HTTP and Kafka, on the real broker and store: the owner's PATCH
reaches the page through webapp.profile and profile.events; anyone else is refused (403 at
the door, ProfileEditRejected for a command that reaches the topic anyway) and the record
stays as it was; a re-import leaves what the owner set."""

from __future__ import annotations

import json
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from contracts import Envelope
from contracts.envelope import EventModel
from contracts.events.claims import AuthorClaimState, VerificationLevelChanged
from contracts.events.profile import ProfileEditRequested
from contracts.events.publications import AuthorImported, Work, WorkIngested
from contracts.topics import Topic
from service_runtime.auth import mint_token
from service_runtime.service import Service
from service_runtime.topic_reader import read_topic
from tests.conftest import Namespace, eventually

AUTHOR = "edit:ada"
OWNER = "ada-user"


async def publish(ns: Namespace, *payloads: EventModel) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"], enable_idempotence=True)
    await producer.start()
    try:
        for p in payloads:
            env = Envelope.wrap(p, producer="test")
            await producer.send_and_wait(ns.topic(str(p.topic)), env.to_bytes(), key=p.key().encode())
    finally:
        await producer.stop()


def imported(description: str, name: str = "Ada Lovelace") -> AuthorImported:
    return AuthorImported(author_id=AUTHOR, display_name=name, description=description, source="test")


def a_work() -> WorkIngested:
    work = Work(
        work_id="edit-w1",
        type="article",
        year=2022,
        title="Notes",
        authors=[{"author_id": AUTHOR, "display_name": "A"}],
    )
    return WorkIngested(author_id=AUTHOR, work=work, source="test")


async def page(http: httpx.AsyncClient) -> dict[str, Any] | None:
    r = await http.get(f"/authors/{AUTHOR}")
    return r.json() if r.status_code == 200 else None


async def profile_events(ns: Namespace) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in await read_topic(ns.infra["kafka"], ns.topic(Topic.PROFILE_EVENTS))]


def as_user(profile: Service, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(profile.settings, user, [])}"}


async def test_the_owner_edits_their_record_and_nobody_else_can(
    ns: Namespace, profile: Service, http: httpx.AsyncClient
) -> None:
    claim = AuthorClaimState(claimed=True, owner_user_id=OWNER, claim_id="c1", verification_level="L2", revision=1)
    await publish(
        ns,
        imported("Imported text."),
        a_work(),
        VerificationLevelChanged(author_id=AUTHOR, verification_level="L2", author_claim=claim),
    )
    before = await eventually(
        lambda: page(http),
        until=lambda p: p is not None and p["counts"]["works"] == 1 and p["direct_collaboration_unlocked"],
        what="the claimed record",
    )
    assert before is not None
    assert before["open_to_collaborate"] is False and before["affiliation"] is None

    # The web app asks whether to show the owner's form.
    for user, editable in ((OWNER, True), ("mallory", False)):
        r = await http.get(f"/authors/{AUTHOR}/editable", headers=as_user(profile, user))
        assert r.json() == {"author_id": AUTHOR, "editable": editable}

    # At the door: no token, someone else, no such record, nothing to set.
    edit = {"open_to_collaborate": True}
    assert (await http.patch(f"/authors/{AUTHOR}", json=edit)).status_code == 401
    r = await http.patch(f"/authors/{AUTHOR}", json=edit, headers=as_user(profile, "mallory"))
    assert r.status_code == 403 and "claimed this record" in r.json()["detail"]
    assert (await http.patch("/authors/edit:nobody", json=edit, headers=as_user(profile, OWNER))).status_code == 404
    assert (await http.patch(f"/authors/{AUTHOR}", json={}, headers=as_user(profile, OWNER))).status_code == 422

    # A command from someone else that reaches the topic anyway is refused, with a reason.
    await publish(
        ns, ProfileEditRequested(author_id=AUTHOR, user_id="mallory", edited=["description"], description="x")
    )
    rejected = await eventually(
        lambda: profile_events(ns),
        until=lambda es: any(e["event_type"] == "ProfileEditRejected" for e in es),
        what="the stranger's edit refused",
    )
    (refusal,) = [e["data"] for e in rejected if e["event_type"] == "ProfileEditRejected"]
    assert refusal["user_id"] == "mallory" and refusal["reason"] == "not_owner"

    # The owner: 202, then the page shows it and profile.events carries the new state.
    affiliation = {"name": "University of London", "domains": ["london.ac.uk"]}
    r = await http.patch(
        f"/authors/{AUTHOR}",
        json={"open_to_collaborate": True, "affiliation": affiliation, "description": "In my own words."},
        headers=as_user(profile, OWNER),
    )
    assert r.status_code == 202 and r.json()["edited"] == ["affiliation", "description", "open_to_collaborate"]
    after = await eventually(lambda: page(http), until=lambda p: p is not None and p["open_to_collaborate"])
    assert after is not None
    assert after["affiliation"] == affiliation and after["description"] == "In my own words."
    assert after["revision"] == before["revision"] + 1, "the stranger's command changed nothing"
    updates = [e for e in await profile_events(ns) if e["event_type"] == "AuthorUpdated"]
    assert updates[-1]["data"]["author"]["set_by_owner"] == ["affiliation", "description", "open_to_collaborate"]
    assert updates[-1]["data"]["author"]["revision"] == after["revision"]

    # A re-import does not undo what the owner set; what the owner did not set follows it.
    await publish(ns, imported("Imported again.", name="Augusta Ada King"))
    reimported = await eventually(
        lambda: page(http), until=lambda p: p is not None and p["display_name"] != "Ada Lovelace"
    )
    assert reimported is not None and reimported["display_name"] == "Augusta Ada King"
    assert reimported["description"] == "In my own words." and reimported["open_to_collaborate"] is True

    # Once the claim is revoked, the former owner is a stranger too.
    revoked = AuthorClaimState(claimed=False, revision=2)
    await publish(ns, VerificationLevelChanged(author_id=AUTHOR, verification_level=None, author_claim=revoked))
    await eventually(lambda: page(http), until=lambda p: p is not None and not p["direct_collaboration_unlocked"])
    r = await http.patch(f"/authors/{AUTHOR}", json={"open_to_collaborate": False}, headers=as_user(profile, OWNER))
    assert r.status_code == 403
    unchanged = await page(http)
    assert unchanged is not None and unchanged["open_to_collaborate"] is True
