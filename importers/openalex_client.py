"""A polite OpenAlex HTTP client: rate limit, retries with backoff, Retry-After, paging.

Paging is basic ``page``/``per_page`` (not ``cursor=*``): a page number is a checkpoint a
person can read and resume from, the real recordings page this way, and since OpenAlex
began asking for API keys (2026) cursor paging without one is reported to be refused
(401). The cost: basic paging reaches only the first 10,000 works of a list; the importer
reports such an import as truncated.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from importers.settings import ImporterSettings
from service_runtime.logging import get_logger

log = get_logger(__name__)
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
Pause = Callable[[float], Awaitable[None]]


class OpenAlexError(Exception):
    """OpenAlex could not give a usable answer (after retries, where retrying made sense)."""


class OpenAlexNotFound(OpenAlexError):
    pass


class MalformedResponse(OpenAlexError):
    """A 200 whose body is not the JSON we asked for (not JSON, no ``results``, ...)."""


@dataclass(frozen=True, slots=True)
class WorksPage:
    page: int
    per_page: int
    count: int  # meta.count: works of the whole list, not of this page
    results: list[Any]


class RateLimiter:
    """Spaces request starts at least 1/rate seconds apart (shared by every request)."""

    def __init__(
        self, per_second: float, clock: Callable[[], float] = time.monotonic, pause: Pause = asyncio.sleep
    ) -> None:
        self.interval = 1.0 / per_second
        self._clock, self._pause = clock, pause
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._next > now:
                await self._pause(self._next - now)
                now = self._next
            self._next = now + self.interval


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OpenAlexClient:
    def __init__(
        self,
        settings: ImporterSettings,
        *,
        base_url: str | None = None,
        pause: Pause = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._pause = pause
        self.limiter = RateLimiter(settings.openalex_requests_per_second, pause=pause)
        self.requests_made = 0
        self.retries = 0
        agent = "bzpeer-importer/0.1" + (f" (mailto:{settings.openalex_mailto})" if settings.openalex_mailto else "")
        self._http = httpx.AsyncClient(
            base_url=(base_url or settings.openalex_base_url).rstrip("/"),
            timeout=settings.openalex_timeout_s,
            headers={"User-Agent": agent, "Accept": "application/json"},
            transport=transport,
        )

    async def __aenter__(self) -> OpenAlexClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    # --- endpoints ---------------------------------------------------------------------

    async def author_by_id(self, openalex_id: str) -> dict[str, Any]:
        return await self._get_object(f"/authors/{openalex_id}", what=f"author {openalex_id}")

    async def author_by_orcid(self, orcid: str) -> dict[str, Any]:
        return await self._get_object(
            f"/authors/https://orcid.org/{quote(orcid)}", what=f"author with ORCID iD {orcid}"
        )

    async def works_page(self, author_key: str, page: int, per_page: int) -> WorksPage:
        what = f"page {page} of the works of {author_key}"
        body = await self._get_json(
            "/works", {"filter": f"author.id:{author_key}", "page": page, "per_page": per_page}, what=what
        )
        results = body.get("results") if isinstance(body, dict) else None
        meta = body.get("meta") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise MalformedResponse(f"{what}: the response has no 'results' list")
        count = meta.get("count") if isinstance(meta, dict) else None
        if not isinstance(count, int) or count < 0:
            raise MalformedResponse(f"{what}: the response has no 'meta.count'")
        return WorksPage(page=page, per_page=per_page, count=count, results=results)

    # --- plumbing ----------------------------------------------------------------------

    async def _get_object(self, path: str, *, what: str) -> dict[str, Any]:
        body = await self._get_json(path, {}, what=what)
        if not isinstance(body, dict) or "id" not in body:
            raise MalformedResponse(f"{what}: the response is not an OpenAlex object")
        return body

    async def _get_json(self, path: str, params: dict[str, Any], *, what: str) -> Any:
        response = await self._get(path, params, what=what)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedResponse(f"{what}: the response is not JSON ({exc})") from exc

    async def _get(self, path: str, params: dict[str, Any], *, what: str) -> httpx.Response:
        s = self.settings
        params = dict(params)
        if s.openalex_mailto:
            params["mailto"] = s.openalex_mailto
        if s.openalex_api_key:
            params["api_key"] = s.openalex_api_key
        backoff = s.openalex_backoff_initial_s
        for attempt in range(1, s.openalex_max_attempts + 1):
            await self.limiter.wait()
            self.requests_made += 1
            try:
                response = await self._http.get(path, params=params)
            except httpx.TransportError as exc:  # refused, reset, timed out: worth another try
                problem, delay = f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code == 200:
                    return response
                if response.status_code == 404:
                    raise OpenAlexNotFound(f"{what}: OpenAlex has no such record (404)")
                if response.status_code not in RETRYABLE_STATUS:
                    raise OpenAlexError(f"{what}: OpenAlex answered {response.status_code}: {response.text[:200]}")
                problem = f"HTTP {response.status_code}"
                delay = retry_after_seconds(response.headers.get("Retry-After"))
                if delay is not None:
                    delay = min(delay, s.openalex_max_retry_after_s)
            if attempt == s.openalex_max_attempts:
                raise OpenAlexError(f"{what}: still failing after {attempt} attempts ({problem})")
            if delay is None:  # exponential backoff with jitter, so clients don't retry in step
                delay = random.uniform(backoff / 2, backoff)
                backoff = min(backoff * 2, s.openalex_backoff_max_s)
            self.retries += 1
            log.warning("openalex_retry", what=what, problem=problem, attempt=attempt, retry_in_s=round(delay, 3))
            await self._pause(delay)
        raise AssertionError("unreachable")
