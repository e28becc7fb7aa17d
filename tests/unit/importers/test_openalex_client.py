"""The client's retry, Retry-After, rate limit and error rules, on an in-memory transport,
and the checkpoint file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from importers.checkpoint import AuthorProgress, JsonFileCheckpoint
from importers.openalex_client import (
    MalformedResponse,
    OpenAlexClient,
    OpenAlexError,
    OpenAlexNotFound,
    RateLimiter,
    retry_after_seconds,
)
from importers.settings import ImporterSettings

PAGE = {"meta": {"count": 1}, "results": [{"id": "https://openalex.org/W1"}]}


def settings(**overrides: Any) -> ImporterSettings:
    values: dict[str, Any] = dict(openalex_max_attempts=3, openalex_backoff_initial_s=1.0, openalex_backoff_max_s=4.0)
    values.update(overrides)
    return ImporterSettings(**values)


class Sleeps(list):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_answering(*responses: httpx.Response, **overrides) -> tuple[OpenAlexClient, Sleeps, list[httpx.Request]]:
    queue, seen, sleeps = list(responses), [], Sleeps()

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    client = OpenAlexClient(
        settings(**overrides), base_url="http://openalex.test", pause=sleeps, transport=httpx.MockTransport(handle)
    )
    return client, sleeps, seen


async def test_retry_after_is_honoured_and_capped() -> None:
    client, sleeps, _ = client_answering(
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(429, headers={"Retry-After": "900"}),
        httpx.Response(200, json=PAGE),
        openalex_max_retry_after_s=60,
        openalex_requests_per_second=10,
    )
    page = await client.works_page("A1", 1, 50)
    assert page.count == 1 and client.retries == 2
    assert [s for s in sleeps if s >= 1] == [7.0, 60.0]


def test_retry_after_as_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now.timestamp()) == 30
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


async def test_5xx_backs_off_exponentially_then_gives_up_with_a_clear_error() -> None:
    client, sleeps, seen = client_answering(*(httpx.Response(503) for _ in range(3)), openalex_requests_per_second=10)
    with pytest.raises(OpenAlexError, match="page 1 of the works of A1: still failing after 3 attempts \\(HTTP 503\\)"):
        await client.works_page("A1", 1, 50)
    backoffs = [s for s in sleeps if s >= 0.2]  # the rest are rate-limit spacing
    assert len(seen) == 3 and len(backoffs) == 2
    assert 0.5 <= backoffs[0] <= 1.0 and 1.0 <= backoffs[1] <= 2.0  # jittered, doubling


async def test_not_found_and_client_errors_are_not_retried() -> None:
    client, _, seen = client_answering(httpx.Response(404, json={"error": "nope"}))
    with pytest.raises(OpenAlexNotFound, match="author with ORCID iD 0000-0001-6187-6610"):
        await client.author_by_orcid("0000-0001-6187-6610")
    client, _, seen = client_answering(httpx.Response(400, text="bad filter"))
    with pytest.raises(OpenAlexError, match="answered 400: bad filter"):
        await client.works_page("A1", 1, 50)
    assert len(seen) == 1


async def test_malformed_bodies_are_clear_errors() -> None:
    for body, message in (
        (b"<html>", "not JSON"),
        (json.dumps({"results": []}).encode(), "meta.count"),
        (json.dumps({"meta": {"count": 3}}).encode(), "'results'"),
    ):
        client, _, _ = client_answering(httpx.Response(200, content=body))
        with pytest.raises(MalformedResponse, match=message):
            await client.works_page("A1", 2, 50)


async def test_requests_carry_paging_mailto_and_api_key() -> None:
    client, _, seen = client_answering(
        httpx.Response(200, json=PAGE), openalex_mailto="me@example.org", openalex_api_key="k"
    )
    await client.works_page("A5017898742", 3, 25)
    assert dict(seen[0].url.params) == {
        "filter": "author.id:A5017898742",
        "page": "3",
        "per_page": "25",
        "mailto": "me@example.org",
        "api_key": "k",
    }
    assert "mailto:me@example.org" in seen[0].headers["User-Agent"]


async def test_rate_limiter_spaces_requests() -> None:
    now = [100.0]
    sleeps = Sleeps()

    async def advance(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    limiter = RateLimiter(4, clock=lambda: now[0], pause=advance)
    for _ in range(5):
        await limiter.wait()
    assert sleeps == [0.25] * 4  # the first goes at once, then 4 per second


def test_checkpoint_file_round_trip(tmp_path) -> None:
    cp = JsonFileCheckpoint(tmp_path / "deep" / "state.json")
    assert cp.load("A1") is None
    cp.save("A1", AuthorProgress(per_page=50, next_page=3, total=120, published=100, skipped={"no authors": 1}))
    cp.save("A2", AuthorProgress(per_page=50, completed=True))
    assert cp.load("A1") == AuthorProgress(
        per_page=50, next_page=3, total=120, published=100, skipped={"no authors": 1}
    )
    done = cp.load("A2")
    assert done is not None and done.completed
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["state.json"]  # no temp file left behind
