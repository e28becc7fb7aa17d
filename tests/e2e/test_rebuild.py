"""Every service's projection, rebuilt from the topics (offset 0, publishing nothing), equals
the live one after the seed story has run through the whole system."""

from __future__ import annotations

from functools import partial

from bzpeer_cli.services import SERVICE_NAMES, build
from contracts.events.collab import InvitationRequested
from contracts.events.profile import ProfileEditRequested
from service_runtime.publishing import EventPublisher
from service_runtime.replay import compare_databases, rebuild
from services.profile.seed import load_seed
from tests.conftest import Namespace, eventually
from tests.system import System


async def test_each_projection_rebuilt_from_the_log_equals_the_live_one(ns: Namespace, webapp: EventPublisher) -> None:
    system = System(ns)
    async with system.running():
        await load_seed(webapp)
        async with system.story(webapp) as story:
            await story.play()
        # The researcher inviting their own record: the collab service refuses it (a
        # decision of its own that its rebuild reads back). An accepted invitation would
        # notify its owner, and the follow service's inbox does not take other services'
        # notifications yet: its rebuild (which reads notifications.events whole) would
        # hold one its live copy does not.
        invitation = InvitationRequested(
            invitation_id="inv-e2e", author_id=story.author_id, user_id=story.researcher, message="Shall we?"
        )
        await webapp.publish([webapp.outgoing(invitation)])
        # The owner's own edit (applied) and a stranger's command (refused): the profile's
        # rebuild reads the applied one back from profile.events.
        stranger = ProfileEditRequested(
            author_id=story.author_id, user_id=story.impostor, edited=["description"], description="Not mine."
        )
        await webapp.publish([webapp.outgoing(stranger)])
        async with system.http("profile") as profile:
            edit = {"open_to_collaborate": True, "affiliation": {"name": "Demo Lab", "domains": ["demo.example"]}}
            r = await profile.patch(f"/authors/{story.author_id}", json=edit, headers=system.token(story.researcher))
            assert r.status_code == 202, r.text
            await eventually(
                lambda: profile.get(f"/authors/{story.author_id}"),
                until=lambda r: r.json()["affiliation"] is not None,
                what="the owner's edit applied",
                interval=0.5,
            )
        async with system.http("collab") as collab:
            refused = await eventually(
                lambda: collab.get("/invitations/inv-e2e", headers=system.token(story.researcher)),
                until=lambda r: r.status_code == 200,
                what="the invitation refused",
                interval=0.5,
            )
            assert refused.json()["reason"] == "self_invitation", refused.json()
    differences: dict[str, list[str]] = {}
    for name in SERVICE_NAMES:
        live = system.settings[name]
        rebuilt_db = live.database_name + "_rebuilt"
        ns.databases.append(rebuilt_db)
        result = await rebuild(partial(build, name), live, database=rebuilt_db)
        assert result.projection.collections, f"{name} declares no projection"
        differences[name] = await compare_databases(
            live.mongodb_uri, live.database_name, rebuilt_db, result.projection, limit=8
        )
    assert differences == {name: [] for name in SERVICE_NAMES}
