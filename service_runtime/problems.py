"""Error bodies: RFC 9457 problem details, the one shape of every service's errors.

Every error a service answers is ``application/problem+json``: ``type``, ``title``,
``status``, ``detail``, ``instance``, and extension members where a client acts on more
than a sentence (``reason`` of a refusal, ``errors`` of invalid input). ``install`` puts
the exception handlers on an app and makes its OpenAPI document say so: an operation
with a body may answer 400, a secured one 401, one with input 422, and a route declares
the rest with ``problem_responses(403, 404, 409)``. New routes follow without a line of
their own for those three.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.routing import Route

PROBLEM_JSON = "application/problem+json"
_REF = "#/components/schemas/Problem"

# What each status means on these APIs, as the OpenAPI document describes it.
DESCRIPTIONS: dict[int, str] = {
    400: "The body is not valid JSON",
    401: "Missing or invalid bearer token",
    403: "The token's user may not do this",
    404: "No such resource",
    409: "The resource's state forbids this (the rule in `reason`)",
    422: "The input does not match the schema (what and where in `errors`)",
}


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path or header, then the field's path")
    msg: str
    type: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details. Extension members may be added over time."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(default="about:blank", description="URI of the problem type; about:blank: the status says it all")
    title: str = Field(description="the status's phrase, e.g. Not Found")
    status: int = Field(ge=400, le=599)
    detail: str | None = Field(default=None, description="what went wrong, for a person")
    instance: str | None = Field(default=None, description="the request's path")
    reason: str | None = Field(default=None, description="a refusal's rule, for a program (e.g. not_owner)")
    errors: list[FieldError] | None = Field(default=None, description="each invalid input (422)")


class ProblemError(HTTPException):
    """An HTTP error with a machine-readable ``reason`` (an RFC 9457 extension member)."""

    def __init__(self, status_code: int, detail: str, *, reason: str | None = None) -> None:
        super().__init__(status_code, detail)
        self.reason = reason


def problem_response(
    request: Request,
    status: int,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    title = HTTPStatus(status).phrase
    problem = Problem(
        title=title,
        status=status,
        detail=None if detail == title else detail,
        instance=request.url.path,
        **extensions,
    )
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    reason = exc.reason if isinstance(exc, ProblemError) else None
    headers = exc.headers
    if exc.status_code == 405:
        # Starlette names the methods of the first route whose path matched; a path served
        # by several routes (GET and PATCH of /authors/{id}) allows the methods of all.
        path = request.url.path
        routes = [r for r in request.app.routes if isinstance(r, Route) and r.path_regex.match(path)]
        methods = {m for r in routes for m in r.methods or ()}
        headers = {**(headers or {}), "Allow": ", ".join(sorted(methods))}
    return problem_response(request, exc.status_code, detail, headers=headers, reason=reason)


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    """422 saying what is wrong and where, never echoing the values sent: a token or secret
    sent by mistake must not come back in a response (or a proxy's log of it). A body that
    is not JSON at all is a 400: nothing in it could be checked."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(request, 400, "the body is not valid JSON")
    return problem_response(
        request,
        422,
        "the input does not match the schema",
        errors=[FieldError(loc=list(e.get("loc", ())), msg=e.get("msg", ""), type=e.get("type", "")) for e in errors],
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the statuses a route answers beyond those ``install`` adds."""
    return {s: {"model": Problem, "description": DESCRIPTIONS.get(s, HTTPStatus(s).phrase)} for s in statuses}


def _document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with every error a problem and the statuses that come
    with an operation's shape (body, security, input) added."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}), Problem=problem)
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape: not what is served
        schemas.pop(name, None)
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if "HTTPValidationError" in str(responses.get("422")):  # FastAPI's, not a route's own
                del responses["422"]
            added = {
                400: "requestBody" in operation,
                401: bool(operation.get("security")),
                422: "requestBody" in operation or bool(operation.get("parameters")),
            }
            for code, applies in added.items():
                if applies:
                    responses.setdefault(str(code), {"description": DESCRIPTIONS[code]})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400 and _is_problem(response):
                    response["content"] = {PROBLEM_JSON: {"schema": {"$ref": _REF}}}
    app.openapi_schema = doc
    return doc


def _is_problem(response: dict[str, Any]) -> bool:
    """A response declared with no body, or with ``Problem``'s (not e.g. a 503's own model)."""
    content = response.get("content")
    return not content or all(c.get("schema", {}).get("$ref") == _REF for c in content.values())


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_input)
    app.openapi = lambda: _document(app)  # type: ignore[method-assign]
