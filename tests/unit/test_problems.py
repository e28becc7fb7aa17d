"""Error bodies and their documentation (service_runtime.problems), on a small app: what a
route gets without a line of its own, and what a client reads."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Query

from service_runtime.auth import CurrentUser, JwtVerifier, mint_token
from service_runtime.problems import PROBLEM_JSON, ProblemError, install, problem_responses
from service_runtime.requests import RequestBody
from service_runtime.settings import RuntimeSettings

SETTINGS = RuntimeSettings()


class Note(RequestBody):
    text: str
    pinned: bool = False


def app() -> FastAPI:
    api = FastAPI()
    api.state.jwt_verifier = JwtVerifier(SETTINGS)
    install(api)

    @api.get("/plain")
    async def plain() -> dict[str, str]:
        return {}

    @api.get("/search")
    async def search(q: Annotated[str, Query(min_length=1)]) -> dict[str, str]:
        return {"q": q}

    @api.post("/notes/{note_id}", status_code=202, responses=problem_responses(403, 409))
    async def write(note_id: str, note: Note, user: CurrentUser) -> dict[str, str]:
        if note.text == "taken":
            raise ProblemError(409, "that note is taken", reason="taken")
        return {"note_id": note_id}

    return api


def test_the_document_adds_400_401_422_by_shape_and_every_error_is_a_problem() -> None:
    doc = app().openapi()
    responses = {path: set(ops[next(iter(ops))]["responses"]) for path, ops in doc["paths"].items()}
    assert responses == {
        "/plain": {"200"},
        "/search": {"200", "422"},  # input
        "/notes/{note_id}": {"202", "400", "401", "403", "409", "422"},  # a body, secured, and its own
    }
    write = doc["paths"]["/notes/{note_id}"]["post"]["responses"]
    for status in ("400", "401", "403", "409", "422"):
        assert write[status]["content"] == {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and {"type", "title", "status", "detail", "instance"} <= set(
        schemas["Problem"]["properties"]
    )
    assert schemas["Note"]["additionalProperties"] is False


@pytest.mark.parametrize(
    "headers,body,status,expect",
    [
        ({}, {"text": "hi"}, 401, {"title": "Unauthorized", "detail": "missing or invalid bearer token"}),
        ("token", b'{"text": ', 400, {"title": "Bad Request", "detail": "the body is not valid JSON"}),
        ("token", {"text": "taken"}, 409, {"title": "Conflict", "reason": "taken", "detail": "that note is taken"}),
        ("token", {"text": "hi", "pinned": "yes"}, 422, {"title": "Unprocessable Entity"}),  # strict: no coercion
        ("token", {"text": "hi", "token": "s3cret"}, 422, {"title": "Unprocessable Entity"}),  # unknown field
    ],
)
async def test_errors_are_problems(headers: object, body: object, status: int, expect: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {mint_token(SETTINGS, 'alice')}"} if headers == "token" else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app()), base_url="http://t") as http:
        if isinstance(body, bytes):
            r = await http.post("/notes/n1", content=body, headers={**auth, "content-type": "application/json"})
        else:
            r = await http.post("/notes/n1", json=body, headers=auth)
    assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM_JSON)
    problem = r.json()
    assert problem["type"] == "about:blank" and problem["status"] == status and problem["instance"] == "/notes/n1"
    assert {k: problem[k] for k in expect} == expect
    assert "s3cret" not in r.text and "yes" not in r.text, "the input is never echoed"
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


async def test_unknown_paths_and_methods_are_problems_too() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app()), base_url="http://t") as http:
        missing = await http.get("/nowhere")
        wrong = await http.delete("/plain")
    assert (missing.status_code, missing.json()) == (
        404,
        {"type": "about:blank", "title": "Not Found", "status": 404, "instance": "/nowhere"},
    )
    assert (wrong.status_code, wrong.headers["allow"], wrong.json()["title"]) == (405, "GET", "Method Not Allowed")
