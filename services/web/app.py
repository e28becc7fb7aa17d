"""Composition root of the web app: pages over the services' HTTP APIs, the development
sign-in, live updates, and the pinned front-end libraries it serves itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from service_runtime.auth import JwtVerifier
from service_runtime.logging import configure_logging, get_logger
from service_runtime.service import Health
from services.web.backends import Backends, Unavailable
from services.web.live import ChangeFeed, Hub
from services.web.routes import dev_identity, router, wants_json
from services.web.session import signed_in
from services.web.settings import WebSettings

log = get_logger(__name__)
HERE = Path(__file__).resolve().parent
# The files of the pinned npm packages the pages load, by the name they are served under.
VENDOR_FILES = {"cytoscape.min.js": Path("cytoscape/dist/cytoscape.min.js")}
# Scripts, styles, data and images only from this site: no CDN, no inline script. The one
# inline style allowed (by its hash) is the rule cytoscape.js adds to the page's head:
# ".__________cytoscape_container { position: relative; }".
CYTOSCAPE_STYLE_HASH = "sha256-pgvDUBa4IjFA2yuSJ2cqcyxmNYJMborsd0ORcRv9vw8="
CONTENT_SECURITY_POLICY = (
    f"default-src 'self'; script-src 'self'; style-src 'self' '{CYTOSCAPE_STYLE_HASH}'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def missing_assets(settings: WebSettings) -> list[str]:
    return [
        str(settings.assets_dir / rel) for rel in VENDOR_FILES.values() if not (settings.assets_dir / rel).is_file()
    ]


def build_app(settings: WebSettings | None = None, *, backend_transport: Any = None) -> FastAPI:
    settings = settings or WebSettings()
    configure_logging(settings.service_name, settings.log_level)
    hub = Hub()
    feed = ChangeFeed(settings, hub) if settings.live_updates else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.backends = Backends(settings, transport=backend_transport)
        task = asyncio.create_task(feed.run()) if feed else None
        if missing := missing_assets(settings):
            log.error("web_assets_missing", missing=missing, hint="run `make web-assets` (npm ci)")
        log.info("web_started", port=settings.http_port, dev_sign_in=settings.dev_sign_in_enabled)
        try:
            yield
        finally:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await app.state.backends.aclose()

    app = FastAPI(
        title="bzpeer web",
        description="Researcher profile pages, rendered on the server from the services' HTTP APIs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.hub = hub
    app.state.feed = feed
    app.state.jwt_verifier = JwtVerifier(settings)
    templates = Jinja2Templates(directory=HERE / "templates")
    app.state.templates = templates

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    def error_page(request: Request, status: int, message: str) -> Response:
        if wants_json(request) or request.url.path.endswith(".json"):
            return JSONResponse({"status": "error", "message": message}, status_code=status)
        return templates.TemplateResponse(
            request,
            "error.html",
            {
                "user": signed_in(request),
                "dev_sign_in": settings.dev_sign_in_enabled,
                "path": request.url.path,
                "status": status,
                "message": message,
            },
            status_code=status,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        default = "There is no such page." if exc.status_code == 404 else "That did not work."
        message = exc.detail if isinstance(exc.detail, str) and exc.detail not in ("Not Found", "") else default
        return error_page(request, exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        path_error = any(e.get("loc", ("",))[0] == "path" for e in exc.errors())
        if path_error:
            return error_page(request, 404, "There is no such page.")
        return error_page(request, 422, "Some of what was sent is not valid: go back and check the form.")

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> Response:
        return error_page(request, 503, f"The {exc.service} service is not answering right now. Try again in a moment.")

    @app.get("/health", tags=["operations"], summary="Liveness: the process is up")
    async def health() -> Health:
        return Health(service=settings.service_name, pid=os.getpid())

    @app.get("/ready", tags=["operations"], summary="Readiness: live updates tailing, front-end files installed")
    async def ready(response: Response) -> dict[str, Any]:
        live = feed is None or feed.ready.is_set()
        assets = not missing_assets(settings)
        if not (live and assets):
            response.status_code = 503
        return {
            "status": "ready" if live and assets else "not ready",
            "live_updates": "off" if feed is None else ("tailing" if live else "starting"),
            "assets": assets,
            "live_subscribers": hub.subscribers,
        }

    @app.get("/static/vendor/{name}", include_in_schema=False)
    async def vendor(name: str) -> Response:
        rel = VENDOR_FILES.get(name)
        path = settings.assets_dir / rel if rel else None
        if path is None or not path.is_file():
            return Response("not installed: run `make web-assets`", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"})

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)
    if settings.dev_sign_in_enabled:
        app.include_router(dev_identity)
    else:

        @app.api_route("/sign-in", methods=["GET", "POST"], include_in_schema=False)
        async def no_dev_sign_in(request: Request) -> Response:
            return error_page(request, 404, "The development sign-in is turned off here.")

    return app


def main() -> None:
    settings = WebSettings()
    # Event streams stay open: give them a short grace at shutdown, then close them.
    uvicorn.run(
        build_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=2,
    )
