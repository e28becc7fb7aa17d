"""The web app without the services: settings, the development sign-in and its refusal in
production, the live hub, and how a page's facts are composed. (The pages over the real
services are tested in a real browser: tests/browser.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from pydantic import ValidationError

from service_runtime.auth import JwtVerifier
from services.profile.graph import GraphSlice, NeighbourPage
from services.web.app import build_app
from services.web.live import LIVE_SECTIONS, Hub, page_changes
from services.web.session import COOKIE, local_next
from services.web.settings import WebSettings
from services.web.view import fallback_graph, snapshot_of

PROD_KEY = "a-production-key-that-is-not-the-development-one"
SEED_PAGE: dict[str, Any] = {
    "author_id": "seed:quoc-v-le",
    "display_name": "Quoc V. Le",
    "trust_snapshot": {"score": 21, "band": "Emerging", "verification_level": "L1", "claimed": False},
    "record_verification_level": "L1",
    "counts": {"works": 28, "followers": 0, "topics": 2, "close_collaborators": 1},
    "topics": [{"name": "Computer vision", "count": 9}, {"name": "Speech recognition", "count": 3}],
    "close_collaborators": [{"author_id": "seed:mingxing-tan", "display_name": "Mingxing Tan", "shared_works": 7}],
}


def settings(**overrides: Any) -> WebSettings:
    return WebSettings(**{"environment": "test", "live_updates": False, **overrides})


@pytest.fixture
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(getattr(request, "param", None) or settings())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://web") as c,
    ):
        yield c


# --- settings and the development sign-in -----------------------------------------------


def test_dev_sign_in_is_on_in_development_and_off_in_production() -> None:
    assert settings().dev_sign_in_enabled
    assert not settings(environment="production", jwt_key=PROD_KEY).dev_sign_in_enabled


def test_turning_dev_sign_in_on_in_production_stops_the_app() -> None:
    with pytest.raises(ValidationError, match="development sign-in"):
        settings(environment="production", jwt_key=PROD_KEY, dev_sign_in=True)
    with pytest.raises(ValidationError, match="development JWT key"):  # the runtime's own rule
        settings(environment="production")


@pytest.mark.parametrize("client", [settings(environment="production", jwt_key=PROD_KEY)], indirect=True)
async def test_production_serves_no_sign_in(client: httpx.AsyncClient) -> None:
    page = await client.get("/sign-in")
    assert page.status_code == 404 and "development sign-in is turned off" in page.text
    minted = await client.post("/sign-in", data={"user_id": "mallory"})
    assert minted.status_code == 404 and COOKIE not in minted.cookies
    home = await client.get("/")
    assert "Development sign-in is on" not in home.text and 'href="/sign-in' not in home.text


async def test_sign_in_mints_the_services_token_with_the_orcid(client: httpx.AsyncClient) -> None:
    form = await client.get("/sign-in", params={"next": "/authors/seed:quoc-v-le"})
    assert form.status_code == 200 and "Development only" in form.text
    r = await client.post(
        "/sign-in", data={"user_id": "ada", "orcid": "0000-0002-1825-0097", "next": "/authors/seed:quoc-v-le"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/authors/seed:quoc-v-le"
    cookie = r.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    principal = JwtVerifier(settings()).verify(r.cookies[COOKIE])  # what every service checks
    assert principal.user_id == "ada" and principal.orcid == "0000-0002-1825-0097" and not principal.roles
    with pytest.raises(jwt.InvalidTokenError):
        JwtVerifier(settings(environment="production", jwt_key=PROD_KEY)).verify(r.cookies[COOKIE])


@pytest.mark.parametrize(
    ("form", "problem"),
    [
        ({"user_id": "no spaces"}, "A user id is"),
        ({"user_id": ""}, "A user id is"),
        ({"user_id": "ada", "orcid": "0000-0002-1825-0098"}, "not a valid ORCID iD"),  # wrong check digit
    ],
)
async def test_sign_in_refuses_what_is_not_an_id(client: httpx.AsyncClient, form: dict[str, str], problem: str) -> None:
    r = await client.post("/sign-in", data=form)
    assert r.status_code == 422 and problem in r.text and COOKIE not in r.cookies


async def test_sign_in_goes_back_only_to_this_site(client: httpx.AsyncClient) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        r = await client.post("/sign-in", data={"user_id": "ada", "next": target})
        assert r.status_code == 303 and r.headers["location"] == "/", target
    assert local_next("/authors/seed:quoc-v-le?claim=c1") == "/authors/seed:quoc-v-le?claim=c1"
    assert local_next(None) == "/"


async def test_actions_of_nobody_go_to_sign_in(client: httpx.AsyncClient) -> None:
    r = await client.post("/authors/seed:quoc-v-le/follow")
    assert r.status_code == 303 and urlsplit(r.headers["location"]).path == "/sign-in"
    r = await client.post("/authors/seed:quoc-v-le/claim", headers={"Accept": "application/json"})
    assert r.status_code == 401 and r.json()["sign_in"].startswith("/sign-in?next=/authors/seed:quoc-v-le")


async def test_pages_are_locked_to_this_site(client: httpx.AsyncClient) -> None:
    r = await client.get("/sign-in")
    policy = r.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


async def test_a_service_that_does_not_answer_is_said_so(client: httpx.AsyncClient) -> None:
    # Nothing listens on the default service ports here.
    r = await client.get("/authors/seed:quoc-v-le")
    assert r.status_code == 503 and "The profile service is not answering" in r.text
    r = await client.get("/authors/not%20an%20id")
    assert r.status_code == 404


async def test_ready_needs_the_front_end_files(tmp_path: Any) -> None:
    app = build_app(settings(assets_dir=tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://web") as c:
        r = await c.get("/ready")
        assert r.status_code == 503 and r.json()["assets"] is False
        assert (await c.get("/static/vendor/cytoscape.min.js")).status_code == 404
        assert (await c.get("/static/vendor/anything-else.js")).status_code == 404


# --- the graph API (the profile service's GraphSlice and NeighbourPage) -----------------------


GRAPH = {
    "author_id": "seed:quoc-v-le",
    "nodes": [
        {"id": "author:seed:quoc-v-le", "kind": "author", "label": "Quoc V. Le", "weight": 28, "close": False},
        {"id": "author:seed:mingxing-tan", "kind": "author", "label": "Mingxing Tan", "weight": 7, "close": True},
    ],
    "edges": [
        {"source": "author:seed:quoc-v-le", "target": "author:seed:mingxing-tan", "kind": "coauthor", "weight": 7}
    ],
}


COUNTS = {"coauthors": 1, "works": 0, "topics": 0, "institutions": 0}


def profile_with_graph(request: httpx.Request) -> httpx.Response:
    path = request.url.raw_path.decode()
    if path.startswith("/authors/seed:quoc-v-le/graph"):
        assert request.url.params["limit"] == "12"
        return httpx.Response(200, json=GRAPH)
    if path.startswith("/graph/nodes/author:seed:mingxing-tan/neighbours"):
        return httpx.Response(200, json={"node": GRAPH["nodes"][1], "nodes": [], "edges": [], "next_cursor": None})
    if path == "/authors/seed:quoc-v-le":
        return httpx.Response(200, json=SEED_PAGE)
    return httpx.Response(404, json={"detail": "Not Found"})


async def test_graph_comes_from_the_graph_api_when_there_is_one() -> None:
    app = build_app(settings(), backend_transport=httpx.MockTransport(profile_with_graph))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://web") as c,
    ):
        graph = (await c.get("/authors/seed:quoc-v-le/graph.json")).json()
        assert graph == {"explorer": True, **GRAPH}
        r = await c.get("/graph/neighbours", params={"node": "author:seed:mingxing-tan"})
        assert r.status_code == 200 and r.json()["next_cursor"] is None


async def test_graph_falls_back_to_the_page_without_the_graph_api() -> None:
    def profile_without_graph(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/authors/seed:quoc-v-le":
            return httpx.Response(200, json=SEED_PAGE)
        return httpx.Response(404, json={"detail": "Not Found"})

    app = build_app(settings(), backend_transport=httpx.MockTransport(profile_without_graph))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://web") as c,
    ):
        graph = (await c.get("/authors/seed:quoc-v-le/graph.json")).json()
        assert graph["explorer"] is False and graph["nodes"] == fallback_graph(SEED_PAGE)["nodes"]
        r = await c.get("/graph/neighbours", params={"node": "author:seed:mingxing-tan"})
        assert r.status_code == 404 and "no such node" in r.json()["message"]


def test_the_graph_the_tests_fake_is_what_the_profile_service_answers() -> None:
    GraphSlice.model_validate({**GRAPH, "limit": 40, "counts": COUNTS})
    neighbours = profile_with_graph(httpx.Request("GET", "http://p/graph/nodes/author:seed:mingxing-tan/neighbours"))
    NeighbourPage.model_validate(neighbours.json())


def test_fallback_graph_speaks_the_graph_api_contract() -> None:
    graph = fallback_graph(SEED_PAGE)
    GraphSlice.model_validate({**graph, "limit": 40, "counts": COUNTS})
    ids = [n["id"] for n in graph["nodes"]]
    assert ids == [
        "author:seed:quoc-v-le",
        "author:seed:mingxing-tan",
        "topic:Computer vision",
        "topic:Speech recognition",
    ]
    assert {n["kind"] for n in graph["nodes"]} == {"author", "topic"}
    assert [n["close"] for n in graph["nodes"]] == [False, True, False, False]
    assert all(e["source"] == ids[0] and e["target"] in ids for e in graph["edges"])
    assert [e["kind"] for e in graph["edges"]] == ["coauthor", "topic", "topic"]


# --- composing the page's facts ------------------------------------------------------------


def test_each_fact_comes_from_the_service_that_owns_it() -> None:
    trust = {"status": "scored", "score": 34, "band": "Established"}
    claim = {"claimed": True, "verification_level": "L2"}
    s = snapshot_of(SEED_PAGE, trust, claim, 3)
    assert (s.score, s.band, s.verification_level, s.claimed, s.followers) == (34, "Established", "L2", True, 3)
    # Unclaimed again (a revoked claim): the record's own level.
    s = snapshot_of(SEED_PAGE, trust, {"claimed": False}, 3)
    assert (s.verification_level, s.claimed) == ("L1", False)
    # Not scored yet by trust, or a service not answering: the profile page's copy.
    s = snapshot_of(SEED_PAGE, {"status": "pending"}, None, None)
    assert (s.score, s.band, s.verification_level, s.claimed, s.followers) == (21, "Emerging", "L1", False, 0)


# --- the live hub ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hub_tells_the_subscribers_of_that_author_only() -> None:
    hub = Hub()
    a, a2, b = hub.subscribe("a"), hub.subscribe("a"), hub.subscribe("b")
    hub.changed("a", ["snapshot", "follow"])
    assert a.take() == {"snapshot", "follow"} and a2.take() == {"snapshot", "follow"} and b.take() == set()
    hub.unsubscribe(a)
    hub.changed("a", ["works"])
    assert a.take() == set() and a2.take() == {"works"}
    assert hub.subscribers == 2


def test_hub_says_what_a_page_may_have_missed() -> None:
    clock = Clock()
    hub = Hub(clock=clock, remember_authors=2)
    assert hub.missed("a", since=clock.now, margin=1) == set(LIVE_SECTIONS)  # not tailing yet
    hub.started()
    clock.now += 10
    rendered = clock.now
    assert hub.missed("a", since=rendered, margin=1) == set()
    clock.now += 0.5
    hub.changed("a", ["snapshot", "follow"])
    assert hub.missed("a", since=rendered, margin=1) == {"snapshot", "follow"}
    assert hub.missed("b", since=rendered, margin=1) == set()
    clock.now += 10
    assert hub.missed("a", since=clock.now, margin=1) == set()  # changed before that page was read
    # Forgotten authors (beyond the memory) make every older page refresh everything.
    hub.changed("b", ["works"])
    hub.changed("c", ["works"])
    assert hub.missed("z", since=rendered, margin=1) == set(LIVE_SECTIONS)
    # A feed that stopped (and will start again from the end) refreshes every open page.
    sub = hub.subscribe("d")
    hub.interrupted()
    assert sub.take() == set(LIVE_SECTIONS) and hub.missed("d", since=clock.now, margin=1) == set(LIVE_SECTIONS)


async def test_changes_within_the_window_reach_the_page_as_one_event() -> None:
    hub = Hub()
    hub.started()
    web = settings(live_coalesce_s=0.05, live_keepalive_s=0.2, live_catch_up_margin_s=0)
    stream = page_changes(hub, web, "a", since=hub.clock())
    assert await anext(stream) == "retry: 2000\n\n"
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    hub.changed("a", ["snapshot", "follow"])
    hub.changed("a", ["snapshot", "works"])
    message = await asyncio.wait_for(waiting, 2)
    lines = dict(line.split(": ", 1) for line in message.strip().splitlines())
    assert lines["event"] == "change"
    assert json.loads(lines["data"]) == {"sections": ["follow", "snapshot", "works"]}
    assert float(lines["id"]) > 0
    assert await asyncio.wait_for(anext(stream), 2) == ": keepalive\n\n"
    await stream.aclose()
    assert hub.subscribers == 0


# --- the owner's own edit -------------------------------------------------------------------


async def test_the_owners_form_sets_every_field_it_shows_through_the_profile_service() -> None:
    sent: list[dict[str, Any]] = []

    def profile(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH" and request.url.path == "/authors/seed:quoc-v-le":
            sent.append(json.loads(request.content))
            return httpx.Response(202, json={"event_id": "e", "author_id": "seed:quoc-v-le"})
        return httpx.Response(403, json={"detail": "only the user who claimed this record may edit it"})

    app = build_app(settings(), backend_transport=httpx.MockTransport(profile))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://web") as c,
    ):
        await c.post("/sign-in", data={"user_id": "quoc", "next": "/"})
        form = {"affiliation": " Google ", "domains": "google.com, DeepMind.com", "description": " "}
        ajax = {"Accept": "application/json"}
        r = await c.post("/authors/seed:quoc-v-le/profile", data={**form, "open_to_collaborate": "yes"}, headers=ajax)
        assert r.status_code == 202 and r.json()["status"] == "accepted"
        r = await c.post("/authors/seed:quoc-v-le/profile", data={"affiliation": ""}, headers=ajax)
        assert sent == [
            {
                "affiliation": {"name": "Google", "domains": ["google.com", "deepmind.com"]},
                "description": None,
                "open_to_collaborate": True,
            },
            {"affiliation": None, "description": None, "open_to_collaborate": False},
        ]
        # Anyone else is told why, and nothing is pretended.
        r = await c.post("/authors/seed:other/profile", data=form, headers=ajax)
        assert r.status_code == 403 and r.json()["message"] == "only the user who claimed this record may edit it"
