"""End to end: the collaborative demo page (``/?doc=<id>``) in Debian's Chromium against the
real server (demo provider, documents in memory).

Each person has a browser context of their own, so two tabs share nothing but the server
(no BroadcastChannel between them): they see each other's typing through ``/collab``; one
asks the AI and closes its tab mid-answer, and the other still sees the whole answer
arrive, formatted, written by the server's AI peer. Every wait is on a condition, with a
timeout.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.e2e.conftest import DIST, STARTUP_TIMEOUT, watch_page
from tests.e2e.demo_page import STREAM_TIMEOUT_MS, get_json, start
from tests.server_process import ServerProcess

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# The editor's whole document as text: blocks joined by newlines.
DOC_TEXT_JS = """() => {
  const editor = window.__streaming && window.__streaming.editor
  return editor ? editor.state.doc.textBetween(0, editor.state.doc.content.size, '\\n', '\\n') : null
}"""

# Whether the document's text, reduced to its words, holds `expected` (reduced alike).
HOLDS_ANSWER_JS = """expected => {
  const editor = window.__streaming.editor
  const text = editor.state.doc.textBetween(0, editor.state.doc.content.size, ' ', ' ')
  const words = text.replace(/\\[([^\\]]*)\\]\\([^)]*\\)/g, '$1').replace(/(\\*\\*|__|\\*|_|`)/g, '')
  return words.split(/\\s+/).filter(Boolean).join(' ').includes(expected)
}"""


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    if not DIST.exists():
        pytest.fail(f"{DIST} is missing: run `npm run build` in frontend/ first")
    env = {"COLLAB_STORE": "memory"}
    with ServerProcess(env, STARTUP_TIMEOUT) as server:
        yield server.url


def unmarkdown(text: str) -> str:
    """Markdown source reduced to the words a reader sees, for comparison with rendered text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^\s*(#{1,6}|[-*+]|\d+\.)\s+", "", text, flags=re.MULTILINE)
    text = re.sub(r"(\*\*|__|\*|_|`)", "", text)
    return " ".join(text.split())


def doc_text(page: Page) -> str:
    text: str | None = page.evaluate(DOC_TEXT_JS)
    assert text is not None
    return text


def open_document(context: BrowserContext, url: str, problems: list[str]) -> Page:
    """Opens the page on the shared document and waits until it is in sync with the server."""
    page = watch_page(context.new_page(), problems)
    page.goto(url)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=collab-status]')?.textContent === 'synced'",
        timeout=STREAM_TIMEOUT_MS,
    )
    return page


def type_at_end(page: Page, text: str, new_paragraph: bool = False) -> None:
    """Types at the end of the document, in a paragraph of its own if asked."""
    page.locator(".tiptap").click()
    page.keyboard.press("Control+End")
    page.wait_for_function(
        "() => { const e = window.__streaming.editor; return e.view.hasFocus() && "
        "e.state.selection.empty && e.state.selection.from === e.state.doc.content.size - 1 }"
    )
    if new_paragraph:
        page.keyboard.press("Enter")
    page.keyboard.type(text)


def wait_for_text(page: Page, text: str) -> None:
    page.wait_for_function(f"text => ({DOC_TEXT_JS})().includes(text)", arg=text, timeout=STREAM_TIMEOUT_MS)


def test_two_tabs_share_the_document_and_the_answer_outlives_the_tab_that_asked(
    browser: Browser, server_url: str
) -> None:
    document_id = f"e2e-{uuid.uuid4().hex[:12]}"
    url = f"{server_url}/?doc={document_id}&tokensPerSecond=10&maxTokens=160"
    problems: list[str] = []
    contexts = [browser.new_context(viewport={"width": 1100, "height": 1400}) for _ in range(3)]
    alice_context, bob_context, carol_context = contexts
    try:
        alice = open_document(alice_context, f"{url}&name=Alice", problems)
        bob = open_document(bob_context, f"{url}&name=Bob", problems)

        # Each sees the other, and the other's typing.
        for page, other in ((alice, "Bob"), (bob, "Alice")):
            page.wait_for_function(
                "name => [...document.querySelectorAll('[data-testid=people] li')]"
                ".some(li => li.textContent.startsWith(name))",
                arg=other,
                timeout=STREAM_TIMEOUT_MS,
            )
        type_at_end(alice, "Notes from Alice")
        wait_for_text(bob, "Notes from Alice")
        type_at_end(bob, "Bob was here", new_paragraph=True)
        wait_for_text(alice, "Bob was here")

        # Alice asks the AI; the server writes the answer into the document as a peer.
        session_id = start(alice, alice.url, "Explain collaborative editing")
        typed = len(doc_text(bob))
        bob.wait_for_function(
            f"length => ({DOC_TEXT_JS})().length > length + 20", arg=typed, timeout=STREAM_TIMEOUT_MS
        )
        # Bob sees the AI in the document, and its text fading in as it arrives.
        bob.wait_for_selector("[data-testid=people] li[data-ai=true]", timeout=STREAM_TIMEOUT_MS)
        bob.wait_for_selector(".tiptap .streaming-chunk", timeout=STREAM_TIMEOUT_MS)

        # Alice closes her tab mid-answer.
        assert get_json(f"{server_url}/api/streaming/{session_id}")["state"] == "streaming"
        alice_context.close()

        # Bob still gets the whole answer, formatted, as plain document content: the AI
        # leaves the document once it wrote the end of it.
        bob.wait_for_selector(
            "[data-testid=people] li[data-ai=true]", state="detached", timeout=STREAM_TIMEOUT_MS
        )
        session = get_json(f"{server_url}/api/streaming/{session_id}")
        assert session["state"] == "completed"
        answer = unmarkdown(session["text"])
        bob.wait_for_function(HOLDS_ANSWER_JS, arg=answer, timeout=STREAM_TIMEOUT_MS)
        text = doc_text(bob)
        assert text.startswith("Notes from Alice\nBob was here\n")
        assert answer in unmarkdown(text)
        editor = bob.locator(".tiptap")
        assert editor.locator("h1").count() >= 1
        assert editor.locator("ul > li").count() >= 1
        assert editor.locator("strong").count() >= 1
        assert "streamingNode" not in bob.evaluate(
            "() => JSON.stringify(window.__streaming.editor.getJSON())"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        bob.screenshot(path=str(ARTIFACTS / "collab-demo-answer.png"), full_page=True)

        # Someone who opens the document after the end sees the same document.
        carol = open_document(carol_context, f"{url}&name=Carol", problems)
        assert doc_text(carol) == text
    finally:
        for context in contexts:
            context.close()
    assert problems == [], f"errors on the pages: {problems}"
