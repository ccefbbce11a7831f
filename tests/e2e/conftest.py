"""Fixtures of the browser tests: the real server (``python -m server``, demo provider) serving
``frontend/dist``, Debian's Chromium (never a downloaded browser), and a page that fails its
test on an uncaught error or a failed request (a 404 in the console)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Response, sync_playwright

from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "frontend" / "dist" / "index.html"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
STARTUP_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    if not DIST.exists():
        pytest.fail(f"{DIST} is missing: run `npm run build` in frontend/ first")
    with ServerProcess({"DEMO_TOKENS_PER_SECOND": "40"}, STARTUP_TIMEOUT) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1100, "height": 1400})
    yield context
    context.close()


def watch_page(page: Page, problems: list[str]) -> Page:
    """Records uncaught errors and failed requests of ``page`` into ``problems``."""
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))

    def on_response(response: Response) -> None:
        if response.status >= 400:
            problems.append(f"{response.status} {response.url}")

    page.on("response", on_response)
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url} {request.failure}"))
    return page


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    problems: list[str] = []
    yield watch_page(context.new_page(), problems)
    assert problems == [], f"errors on the page: {problems}"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
