"""The services' HTTP APIs, as the web app uses them: reads for the pages, and the writes
that carry a user's commands (with the user's own token). No domain logic here: each
method is one documented call, and answers what the service answered."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

from service_runtime.logging import get_logger
from services.web.settings import WebSettings

log = get_logger(__name__)


class Unavailable(Exception):
    """The service could not be reached, or failed (5xx): the page says so."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe=":@")


class Backends:
    def __init__(self, settings: WebSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.urls = {
            "profile": settings.profile_url,
            "claims": settings.claims_url,
            "trust": settings.trust_url,
            "follow": settings.follow_url,
            "collab": settings.collab_url,
        }
        # One client (one connection pool) for all of them.
        self.client = httpx.AsyncClient(timeout=settings.backend_timeout_s, transport=transport)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = self.urls[service].rstrip("/") + path
        try:
            r = await self.client.request(method, url, params=query, json=json, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("backend_unreachable", backend=service, path=path, error=repr(exc))
            raise Unavailable(service, "unreachable") from None
        if r.status_code >= 500:
            log.warning("backend_failed", backend=service, path=path, status=r.status_code)
            raise Unavailable(service, f"answered {r.status_code}")
        try:
            body = r.json() if r.content else None
        except ValueError:
            body = r.text
        return Reply(r.status_code, body)

    # --- profile ----------------------------------------------------------------------

    async def author_page(self, author_id: str) -> dict[str, Any] | None:
        r = await self.call("profile", "GET", f"/authors/{_quote(author_id)}")
        return r.body if r.ok else None

    async def works(self, author_id: str, cursor: str | None, limit: int) -> Reply:
        return await self.call(
            "profile", "GET", f"/authors/{_quote(author_id)}/works", params={"cursor": cursor, "limit": limit}
        )

    async def search(self, query: str, limit: int = 20) -> Reply:
        return await self.call("profile", "GET", "/authors", params={"q": query, "limit": limit})

    async def graph(self, author_id: str, limit: int) -> Reply:
        return await self.call("profile", "GET", f"/authors/{_quote(author_id)}/graph", params={"limit": limit})

    async def neighbours(self, node_id: str, cursor: str | None, limit: int) -> Reply:
        return await self.call(
            "profile",
            "GET",
            f"/graph/nodes/{_quote(node_id)}/neighbours",
            params={"cursor": cursor, "limit": limit},
        )

    # --- trust, claims, follow: the facts each of them owns -----------------------------

    async def trust(self, author_id: str) -> dict[str, Any] | None:
        r = await self.call("trust", "GET", f"/trust/{_quote(author_id)}")
        return r.body if r.ok else None

    async def claim_status(self, author_id: str) -> dict[str, Any] | None:
        r = await self.call("claims", "GET", f"/authors/{_quote(author_id)}/claim")
        return r.body if r.ok else None

    async def follower_count(self, author_id: str) -> int | None:
        r = await self.call("follow", "GET", f"/authors/{_quote(author_id)}/followers", params={"limit": 1})
        return int(r.body["follower_count"]) if r.ok else None

    async def following(self, user_id: str) -> set[str]:
        r = await self.call("follow", "GET", f"/users/{_quote(user_id)}/following")
        return {f["author_id"] for f in r.body["following"]} if r.ok else set()

    # --- a user's commands and own reads (with the user's token) ------------------------

    async def follow(self, token: str, author_id: str) -> Reply:
        return await self.call("follow", "POST", "/follows", token=token, json={"author_id": author_id})

    async def unfollow(self, token: str, author_id: str) -> Reply:
        return await self.call("follow", "DELETE", f"/follows/{_quote(author_id)}", token=token)

    async def request_claim(self, token: str, author_id: str, evidence: dict[str, Any]) -> Reply:
        return await self.call(
            "claims", "POST", "/claims", token=token, json={"author_id": author_id, "evidence": evidence}
        )

    async def own_claim(self, token: str, claim_id: str) -> dict[str, Any] | None:
        r = await self.call("claims", "GET", f"/claims/{_quote(claim_id)}", token=token)
        return r.body if r.ok else None

    async def notifications(
        self, token: str, user_id: str, cursor: str | None = None, *, unread: bool = False, limit: int | None = None
    ) -> Reply:
        params = {"cursor": cursor, "unread": "true" if unread else None, "limit": limit}
        return await self.call("follow", "GET", f"/users/{_quote(user_id)}/notifications", token=token, params=params)

    async def mark_read(self, token: str, user_id: str, notification_ids: list[str] | None) -> Reply:
        body = {"notification_ids": notification_ids} if notification_ids else {}
        return await self.call("follow", "POST", f"/users/{_quote(user_id)}/notifications/read", token=token, json=body)

    async def editable(self, token: str, author_id: str) -> bool:
        """Whether the signed-in user owns the record (the profile service knows owners)."""
        r = await self.call("profile", "GET", f"/authors/{_quote(author_id)}/editable", token=token)
        return bool(r.ok and isinstance(r.body, dict) and r.body.get("editable"))

    async def edit_profile(self, token: str, author_id: str, edit: dict[str, Any]) -> Reply:
        return await self.call("profile", "PATCH", f"/authors/{_quote(author_id)}", token=token, json=edit)

    async def invite(self, token: str, author_id: str, message: str) -> Reply:
        return await self.call(
            "collab", "POST", "/invitations", token=token, json={"author_id": author_id, "message": message}
        )

    async def invitations(self, token: str, user_id: str) -> Reply:
        return await self.call("collab", "GET", f"/users/{_quote(user_id)}/invitations", token=token)
