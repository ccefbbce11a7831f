"""The demo page with access control on: a token minted by ``python -m server.devtoken``
in ``?token=``; the page acts as its subject on every request and connection, and a page
without a token is refused. Debian's Chromium against a real server process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.e2e.conftest import STARTUP_TIMEOUT
from tests.e2e.demo_page import start, wait_for_state
from tests.server_process import ROOT, ServerProcess

SECRET = "dev-secret-for-the-browser-test-0123456789"


@pytest.fixture(scope="module")
def secured_url() -> Iterator[str]:
    with ServerProcess(
        {"AUTH_JWT_SECRET": SECRET, "DEMO_TOKENS_PER_SECOND": "200"}, STARTUP_TIMEOUT
    ) as server:
        yield server.url


def dev_token(sub: str) -> str:
    minted = subprocess.run(
        [sys.executable, "-m", "server.devtoken", "--sub", sub],
        cwd=ROOT,
        env={"AUTH_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return minted.stdout.strip()


def test_the_demo_streams_with_a_token(page: Page, secured_url: str) -> None:
    start(page, f"{secured_url}/?maxTokens=40&token={dev_token('alice')}", "Explain streaming")
    wait_for_state(page, "completed")
    assert page.get_by_test_id("tokens").inner_text() == "40"


def test_without_a_token_the_server_refuses(context: BrowserContext, secured_url: str) -> None:
    page = context.new_page()  # not the fixture that fails on any 4xx: a 401 is expected
    page.goto(secured_url)
    with page.expect_response(lambda r: r.url.endswith("/api/streaming/session")) as answer:
        page.get_by_test_id("prompt").fill("Explain streaming")
        page.get_by_test_id("start").click()
    assert answer.value.status == 401
