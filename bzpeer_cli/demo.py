"""The seed story as the web app plays it: commands and works go through Kafka only
(``webapp.follows``, ``webapp.claims``, ``publications.ingested``; the collaboration
steps through the collab service's HTTP writes, which publish to ``webapp.collab``); what
users see is read back over HTTP from the services, and a snapshot of the page is printed
after each step.

Each run plays on a fresh demo copy of the seed record (its own author id, marked as a
copy, with ORCID's fictional example iD so an ORCID-matching claim can be shown), so the
seed page itself stays as ``make up`` loaded it. ``make demo`` runs it against the running
system; tests/e2e runs the very same story against the services in a test namespace.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from contracts.events.claims import ClaimRequested, Evidence
from contracts.events.follows import FollowRequested
from contracts.events.publications import ExternalIds, Work, WorkAuthor, WorkIngested
from service_runtime.publishing import EventPublisher
from services.profile.seed import DEMO_ORCID, load_seed

T = TypeVar("T")
TokenFactory = Callable[[str, list[str]], str]
# How the researcher opens their claimed record to collaboration (the owner's own edit);
# returns False when it cannot be done here.
OpenRecord = Callable[["Story"], Awaitable[bool]]


class StoryStepFailed(AssertionError):
    pass


@dataclass
class Snapshot:
    step: str
    page: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        t, c = self.page["trust_snapshot"], self.page["counts"]
        trust = f"Trust {t['score']} - {t['band']}" if t["score"] is not None else "Trust (not scored yet)"
        claimed = "Claimed author" if t["claimed"] else "Unclaimed author"
        unlocked = (
            "direct collaboration unlocked" if self.page["direct_collaboration_unlocked"] else "collaboration locked"
        )
        extra = "".join(f", {k}: {v}" for k, v in self.extra.items())
        return (
            f"[{self.step}] {trust} | Verification {t['verification_level']} | {claimed} | {c['works']} works, "
            f"{c['followers']} followers, {c['topics']} topics, {c['close_collaborators']} close collaborators | "
            f"{unlocked}{extra}"
        )


@dataclass
class Story:
    publisher: EventPublisher  # producer name "webapp": what the web app and importers publish
    http: dict[str, httpx.AsyncClient]  # "profile", "claims", "trust", "follow", "collab" clients
    token: TokenFactory
    author_id: str = field(default_factory=lambda: f"demo:{uuid.uuid4().hex[:12]}")
    follower: str = field(default_factory=lambda: f"user-{uuid.uuid4().hex[:8]}")
    researcher: str = field(default_factory=lambda: f"user-{uuid.uuid4().hex[:8]}")
    impostor: str = field(default_factory=lambda: f"user-{uuid.uuid4().hex[:8]}")
    colleague: str = field(default_factory=lambda: f"user-{uuid.uuid4().hex[:8]}")
    timeout_s: float = 60.0
    out: Callable[[str], None] = print
    snapshots: list[Snapshot] = field(default_factory=list)
    invitation_id: str | None = None  # the colleague's invitation, once ``collaborate`` played

    async def play(self) -> list[Snapshot]:
        self.out(f"demo copy of the seed record: {self.author_id}")
        await load_seed(self.publisher, author_id=self.author_id, demo_copy=True)
        seed = await self._page_until("seed page", lambda p: p["counts"]["works"] == 28)
        self._snap("1 seed page", seed)

        await self.publisher.publish(
            [self.publisher.outgoing(FollowRequested(user_id=self.follower, author_id=self.author_id))]
        )
        followed = await self._page_until("follower counted", lambda p: p["counts"]["followers"] == 1)
        self._snap(f"2 {self.follower} follows", followed)

        claim_id = f"claim-{uuid.uuid4().hex[:12]}"
        await self.publisher.publish(
            [
                self.publisher.outgoing(
                    ClaimRequested(
                        claim_id=claim_id,
                        author_id=self.author_id,
                        user_id=self.researcher,
                        evidence=Evidence(orcid=DEMO_ORCID, orcid_authenticated=True),
                    )
                )
            ]
        )
        claimed = await self._page_until(
            "claim approved and trust up",
            lambda p: (
                p["trust_snapshot"]["claimed"]
                and p["trust_snapshot"]["verification_level"] == "L2"
                and (_score(p) or 0) > (_score(seed) or 0)
            ),
        )
        self._snap(f"3 {self.researcher} claims with matching ORCID", claimed)

        await self.publisher.publish(
            [self.publisher.outgoing(WorkIngested(author_id=self.author_id, source="demo", work=self.new_preprint()))]
        )
        newer = await self._page_until(
            "new preprint counted and trust recomputed",
            lambda p: p["counts"]["works"] == 29 and (_score(p) or 0) > (_score(claimed) or 0),
        )
        # One notification per source event: the claim and the preprint (and a band-up, when
        # the claim and the new work lift the researcher past a band threshold).
        notes = await self._until(
            "follower notified of the claim and the preprint",
            self.notifications,
            lambda n: (
                [x["kind"] for x in n].count("new_work") == 1 and [x["kind"] for x in n].count("claim_approved") == 1
            ),
        )
        self._snap(
            "4 a new 2024 preprint arrives", newer, notifications=", ".join(f"{n['kind']}: {n['title']}" for n in notes)
        )

        rival_claim = f"claim-{uuid.uuid4().hex[:12]}"
        await self.publisher.publish(
            [
                self.publisher.outgoing(
                    ClaimRequested(
                        claim_id=rival_claim,
                        author_id=self.author_id,
                        user_id=self.impostor,
                        evidence=Evidence(orcid=DEMO_ORCID, orcid_authenticated=True),
                    )
                )
            ]
        )
        rejected = await self._until(
            "second claim rejected",
            lambda: self.claim(rival_claim, self.impostor),
            lambda c: c is not None and c["status"] == "rejected",
        )
        assert rejected is not None
        final = await self._page_until("page unchanged", lambda p: p["trust_snapshot"]["claimed"])
        self._snap(f"5 {self.impostor} claims the same record", final, second_claim=f"rejected ({rejected['reason']})")
        return self.snapshots

    async def collaborate(self, open_record: OpenRecord) -> list[Snapshot]:
        """After ``play``: the record is open to collaboration (the seed record is; else the
        researcher opens it with ``open_record``), a colleague invites the researcher, the
        researcher accepts, and they exchange a message each."""
        path = f"/authors/{self.author_id}/collaboration"
        status = await self._found("the claim known to the collab service", path, None, lambda v: bool(v["claimed"]))
        step = "6 the record is open to collaboration"
        if not status["open_to_collaborate"]:
            if not await open_record(self):
                self.out("the owner's own edit is not available: the collaboration steps are skipped")
                return self.snapshots
            await self._found("record open to collaboration", path, None, lambda v: bool(v["accepts_invitations"]))
            step = f"6 {self.researcher} opens the record to collaboration"
        page = await self._page_until("page unchanged", lambda p: p["trust_snapshot"]["claimed"])
        self._snap(step, page)

        r = await self.http["collab"].post(
            "/invitations",
            json={"author_id": self.author_id, "message": "Your sequence-to-sequence work fits our project: talk?"},
            headers=self._auth(self.colleague),
        )
        r.raise_for_status()
        invitation_id = r.json()["invitation_id"]
        invited = await self._invitation_until(invitation_id, self.colleague, "pending")
        self._snap(f"7 {self.colleague} invites {self.researcher}", page, invitation=invited["status"])

        r = await self.http["collab"].post(f"/invitations/{invitation_id}/accept", headers=self._auth(self.researcher))
        r.raise_for_status()
        accepted = await self._invitation_until(invitation_id, self.researcher, "accepted")
        self._snap(f"8 {self.researcher} accepts", page, invitation=accepted["status"])

        for user, text in ((self.colleague, "Great! Shall we meet next week?"), (self.researcher, "Yes, Tuesday.")):
            r = await self.http["collab"].post(
                f"/invitations/{invitation_id}/messages", json={"text": text}, headers=self._auth(user)
            )
            r.raise_for_status()
        thread = await self._found(
            "both messages in the thread",
            f"/invitations/{invitation_id}",
            self.researcher,
            lambda v: v["message_count"] == 2,
        )
        self._snap(
            "9 they exchange a message each",
            page,
            invitation=thread["status"],
            thread=" / ".join(f"{m['user_id']}: {m['text']}" for m in thread["thread"]),
        )
        self.invitation_id = invitation_id
        return self.snapshots

    async def _invitation_until(self, invitation_id: str, user: str, status: str) -> dict[str, Any]:
        return await self._found(
            f"invitation {status}", f"/invitations/{invitation_id}", user, lambda v: v["status"] == status
        )

    async def _found(
        self, what: str, path: str, user: str | None, ok: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """The collab service's answer at ``path`` (as ``user``) once it satisfies ``ok``."""

        async def probe() -> dict[str, Any] | None:
            r = await self.http["collab"].get(path, headers=self._auth(user) if user else None)
            return r.json() if r.status_code == 200 else None

        found = await self._until(what, probe, lambda v: v is not None and ok(v))
        assert found is not None
        return found

    def new_preprint(self) -> Work:
        suffix = self.author_id.split(":", 1)[1]
        return Work(
            work_id=f"{self.author_id}:new-preprint-2024",
            type="preprint",
            year=2024,
            venue="arXiv",
            title=f"A 2024 preprint of the demo copy {suffix}",
            abstract="A new work published during the demo, to show ingestion, trust and notifications.",
            external_ids=ExternalIds(),
            topics=["Language models"],
            authors=[WorkAuthor(author_id=self.author_id, display_name="Quoc V. Le (demo copy)")],
        )

    async def page(self) -> dict[str, Any] | None:
        r = await self.http["profile"].get(f"/authors/{self.author_id}")
        return r.json() if r.status_code == 200 else None

    async def notifications(self) -> list[dict[str, Any]]:
        r = await self.http["follow"].get(f"/users/{self.follower}/notifications", headers=self._auth(self.follower))
        r.raise_for_status()
        return [n for n in r.json()["notifications"] if n["author_id"] == self.author_id]

    async def claim(self, claim_id: str, user: str) -> dict[str, Any] | None:
        r = await self.http["claims"].get(f"/claims/{claim_id}", headers=self._auth(user))
        return r.json() if r.status_code == 200 else None

    def _auth(self, user: str, *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, list(roles))}"}

    def _snap(self, step: str, page: dict[str, Any], **extra: Any) -> None:
        snap = Snapshot(step, page, extra)
        self.snapshots.append(snap)
        self.out(snap.line())

    async def settled_page(self) -> dict[str, Any] | None:
        """The page once trust has scored the author's current inputs and the profile shows
        that score (scores coalesce over a short window, so a page read mid-burst may show
        an intermediate one)."""
        page = await self.page()
        if page is None:
            return None
        r = await self.http["trust"].get(f"/trust/{self.author_id}")
        trust = r.json() if r.status_code == 200 else {}
        self._last_seen = {
            "page_trust": page["trust_snapshot"],
            "works": page["counts"]["works"],
            "trust_service": {k: trust.get(k) for k in ("status", "score", "verification_level", "recomputing")},
        }
        scored_works = next((c["signal"] for c in trust.get("components", []) if c["name"] == "works"), None)
        settled = (
            trust.get("status") == "scored"
            and not trust.get("recomputing")
            and trust.get("score") == _score(page)
            and scored_works == page["counts"]["works"]
            and trust.get("verification_level") == page["trust_snapshot"]["verification_level"]
        )
        return page if settled else None

    async def _page_until(self, what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        page = await self._until(what, self.settled_page, lambda p: p is not None and ok(p))
        assert page is not None
        return page

    async def _until(self, what: str, probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            value = await probe()
            if ok(value):
                return value
            if loop.time() > deadline:
                seen = value if value is not None else getattr(self, "_last_seen", None)
                raise StoryStepFailed(f"{what}: not seen within {self.timeout_s:.0f}s; last: {seen!r}"[:2000])
            await asyncio.sleep(0.1)


async def open_by_owner_edit(story: Story) -> bool:
    """The researcher's own edit of their claimed record on the profile service
    (``PATCH /authors/{id}``, answered 202); False where the profile service has none."""
    r = await story.http["profile"].patch(
        f"/authors/{story.author_id}", json={"open_to_collaborate": True}, headers=story._auth(story.researcher)
    )
    return r.status_code == 202


def _score(page: dict[str, Any]) -> int | None:
    return page["trust_snapshot"]["score"]
