"""Browser tests: Debian's Chromium driven by Playwright for Python (the system browser,
never one Playwright downloads), against the whole system started for the module: the
four services and the web app as OS processes in a fresh namespace of the real broker
and store, with the seed loaded.

Screenshots (and the accessibility reports) go to the test's own output folder: pytest's
``tmp_path``, or ``$BZPEER_BROWSER_OUTPUT/<test name>`` when that is set (CI keeps it).
What the tests need and ``make test`` installs: ``chromium`` (apt-get, ``make
browser-deps``) and the pinned npm packages (``npm ci``, ``make web-assets``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Error, Page, async_playwright, expect

from services.profile.seed import SEED_AUTHOR_ID
from services.web.settings import DEFAULT_ASSETS_DIR
from tests.conftest import Namespace, drop_namespace
from tests.web_system import WebSystem

# Headless, and nothing that reaches out of the machine on its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
]
AXE = DEFAULT_ASSETS_DIR / "axe-core" / "axe.min.js"
CYTOSCAPE = DEFAULT_ASSETS_DIR / "cytoscape" / "dist" / "cytoscape.min.js"
# Long enough for a command to travel through Kafka, a service, and back over SSE on a
# busy two-core machine; a person would wait that long too.
LIVE_TIMEOUT_MS = 45_000
expect.set_options(timeout=10_000)


def chromium_executable() -> str:
    path = os.environ.get("BZPEER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is not installed: `make browser-deps` installs it (apt-get install chromium)")
    return path


@pytest.fixture(scope="session")
def web_assets() -> None:
    missing = [str(p) for p in (AXE, CYTOSCAPE) if not p.is_file()]
    if missing:
        pytest.fail(f"front-end packages not installed ({', '.join(missing)}): run `make web-assets` (npm ci)")


@pytest.fixture(scope="module")
async def web_system(infra: dict[str, str], kafka_ready: None, web_assets: None) -> AsyncIterator[WebSystem]:
    ns = Namespace(infra)
    system = WebSystem(ns)
    try:
        await system.start()
        await system.publish_seed()
        await system.wait_page(SEED_AUTHOR_ID, score=21)
        yield system
    finally:
        await system.stop()
        await drop_namespace(ns)


@pytest.fixture(scope="module")
async def browser(web_assets: None) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            await b.close()


class Person:
    """One browser context: a person with their own cookies, and what went wrong on
    their pages (console errors, script errors)."""

    def __init__(self, context: BrowserContext, base_url: str) -> None:
        self.context = context
        self.base_url = base_url
        self.problems: list[str] = []

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text} ({message.location.get('url')})")

    def _page_error(self, error: Error) -> None:
        self.problems.append(f"page error: {error}")

    async def open(self, path: str) -> Page:
        page = await self.context.new_page()
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        await page.goto(self.base_url + path)
        return page

    async def sign_in(self, user_id: str, *, orcid: str | None = None, then: str = "/") -> Page:
        """Through the development sign-in form, as a person would."""
        page = await self.open(f"/sign-in?next={then}")
        await expect(page.get_by_text("Development only")).to_be_visible()
        await page.get_by_label("User id").fill(user_id)
        if orcid:
            await page.get_by_label("ORCID iD (optional)").fill(orcid)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(re.compile(re.escape(self.base_url + then) + r"$"))
        await expect(page.get_by_test_id("signed-in-user")).to_have_text(user_id)
        return page


@pytest.fixture
async def people(browser: Browser, web_system: WebSystem) -> AsyncIterator[Callable[..., Awaitable[Person]]]:
    contexts: list[Person] = []

    async def person(*, bypass_csp: bool = False) -> Person:
        # bypass_csp: only to inject axe-core into the page (the site's policy allows no
        # script but its own); every other test runs under the policy.
        ctx = await browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=bypass_csp)
        p = Person(ctx, web_system.web_url)
        contexts.append(p)
        return p

    yield person
    for p in contexts:
        await p.context.close()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    root = os.environ.get("BZPEER_BROWSER_OUTPUT")
    folder = Path(root) / re.sub(r"[^\w.-]+", "_", request.node.name) if root else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def screenshot(output_dir: Path) -> Callable[..., Awaitable[Path]]:
    async def take(page: Page, name: str, *, full_page: bool = True) -> Path:
        path = output_dir / f"{name}.png"
        await page.screenshot(path=str(path), full_page=full_page)
        return path

    return take
