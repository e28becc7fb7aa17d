"""The seed story end to end: the four services in one namespace of the real broker and
store, driven only through Kafka as the web app and importers drive them, observed over HTTP."""

from __future__ import annotations

import pytest

from service_runtime.publishing import EventPublisher
from services.profile.seed import SEED_AUTHOR_ID, load_seed
from tests.conftest import Namespace, eventually, throughout
from tests.system import System


@pytest.fixture
async def system(ns: Namespace):
    async with System(ns).running() as running:
        yield running


async def seed_page(system: System) -> dict | None:
    async with system.http("profile") as http:
        r = await http.get(f"/authors/{SEED_AUTHOR_ID}")
    return r.json() if r.status_code == 200 else None


async def test_seed_page_then_follow_claim_new_work_and_rival_claim_then_collaboration(
    system: System, webapp: EventPublisher, ns: Namespace
) -> None:
    await load_seed(webapp)
    page = await eventually(
        lambda: seed_page(system),
        until=lambda p: p is not None and p["trust_snapshot"]["score"] == 21,
        timeout=120,
        what="seed page scored 21 once all 28 works are in",
    )
    assert page is not None
    assert page["display_name"] == "Quoc V. Le" and page["affiliation"] is None
    assert page["trust_snapshot"] == {"score": 21, "band": "Emerging", "verification_level": "L1", "claimed": False}
    assert page["counts"] == {"works": 28, "followers": 0, "topics": 9, "close_collaborators": 4}
    assert page["direct_collaboration_unlocked"] is False

    lines: list[str] = []
    async with system.story(webapp, out=lines.append) as story:
        snaps = list(await story.play())
        played = len(lines)
        # Exactly one notification per source event: nothing arrives twice later either.
        kinds = sorted(n["kind"] for n in await story.notifications())
        # The researcher opens the record to collaboration (a stranger may not), a colleague
        # invites the researcher, the researcher accepts, and they exchange a message each.
        opened = (await story.collaborate())[5]
        assert opened.page["open_to_collaborate"] and opened.extra["stranger_edit"] == 403
        assert story.invitation_id is not None
        async with system.http("collab") as collab:
            for user in (story.researcher, story.colleague):
                r = await collab.get(f"/invitations/{story.invitation_id}", headers=system.token(user))
                conversation = r.json()
                assert conversation["status"] == "accepted" and conversation["owner_user_id"] == story.researcher
                assert [m["user_id"] for m in conversation["thread"]] == [story.colleague, story.researcher]
            received = (
                await collab.get(f"/users/{story.researcher}/invitations", headers=system.token(story.researcher))
            ).json()["received"]
            assert [i["invitation_id"] for i in received] == [story.invitation_id]
    seed, followed, claimed, newer, rival = (s.page for s in snaps)
    assert seed["trust_snapshot"] == {"score": 21, "band": "Emerging", "verification_level": "L1", "claimed": False}
    assert seed["counts"] == {"works": 28, "followers": 0, "topics": 9, "close_collaborators": 4}
    assert followed["counts"]["followers"] == 1
    assert claimed["trust_snapshot"]["verification_level"] == "L2" and claimed["direct_collaboration_unlocked"]
    assert claimed["trust_snapshot"]["score"] > 21
    assert newer["counts"]["works"] == 29 and newer["trust_snapshot"]["score"] > claimed["trust_snapshot"]["score"]
    assert snaps[3].extra["notifications"].count("new_work") == 1
    assert snaps[4].extra["second_claim"] == "rejected (already_claimed)"
    assert rival["trust_snapshot"]["claimed"] and rival["counts"]["works"] == 29
    assert played == 6 and lines[1].startswith("[1 seed page] Trust 21 - Emerging | Verification L1")
    assert len(lines) == 10 and lines[-1].startswith("[9 they exchange a message each]")

    assert kinds.count("claim_approved") == 1 and kinds.count("new_work") == 1
    assert set(kinds) <= {"claim_approved", "new_work", "trust_band_up"} and len(kinds) == len(set(kinds))
    # Both inboxes hold exactly the collaboration's notifications: the researcher's the
    # invitation, the colleague's the answer (the follower's are counted above).
    expected = {story.researcher: ["invitation_received"], story.colleague: ["invitation_answered"]}
    async with system.http("follow") as follow:

        async def inboxes() -> dict[str, list[str]]:
            found = {}
            for user in expected:
                r = await follow.get(f"/users/{user}/notifications", headers=system.token(user))
                found[user] = [n["kind"] for n in r.json()["notifications"] if n["author_id"] == story.author_id]
            return found

        await eventually(inboxes, until=lambda held: held == expected, what="both inboxes notified")
        # A duplicate delivery would arrive within seconds: none does.
        await throughout(inboxes, holds=lambda held: held == expected, seconds=2, what="each notification once")
    # The seed record itself is untouched by the demo copy's story.
    seed_now = await seed_page(system)
    assert seed_now is not None
    assert seed_now["counts"] == {"works": 28, "followers": 0, "topics": 9, "close_collaborators": 4}
