"""End to end: the demo page in Debian's Chromium against the real server (demo provider).

The server runs as ``python -m server`` and serves ``frontend/dist`` (build it first with
``npm run build`` in ``frontend/``); the fixtures are in ``conftest.py``. Every wait is on a
condition, with a timeout.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
STREAM_TIMEOUT_MS = 60_000

# The raw text of the page's streaming node: its blocks joined by newlines.
STREAM_TEXT_JS = """() => {
  const editor = window.__streaming && window.__streaming.editor
  if (!editor) return null
  let text = null
  editor.state.doc.descendants(node => {
    if (text === null && node.type.name === 'streamingNode') {
      text = node.textBetween(0, node.content.size, '\\n', '\\n')
    }
    return text === null
  })
  return text
}"""


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def stream_text(page: Page) -> str | None:
    text: str | None = page.evaluate(STREAM_TEXT_JS)
    return text


def wait_for_state(page: Page, state: str, timeout: int = STREAM_TIMEOUT_MS) -> None:
    page.wait_for_function(
        "state => document.querySelector('[data-testid=state]').textContent === state",
        arg=state,
        timeout=timeout,
    )


def wait_for_text_longer_than(page: Page, length: int, timeout: int = STREAM_TIMEOUT_MS) -> None:
    page.wait_for_function(
        f"length => (({STREAM_TEXT_JS})() || '').length > length", arg=length, timeout=timeout
    )


#: Where the editor's caret is: in the first heading, at its end.
CARET_JS = """(() => {
  const editor = window.__streaming.editor
  const { $from, empty } = editor.state.selection
  const inHeading = editor.view.hasFocus() && empty && $from.parent.type.name === 'heading'
  return { inHeading, atEnd: inHeading && $from.parentOffset === $from.parent.content.size }
})()"""


def start(page: Page, url: str, prompt: str) -> str:
    page.goto(url)
    page.get_by_test_id("prompt").fill(prompt)
    page.get_by_test_id("start").click()
    page.wait_for_function(
        "() => /^[0-9a-f-]{36}$/.test(document.querySelector('[data-testid=session-id]').textContent)"
    )
    return page.get_by_test_id("session-id").inner_text()


def received_seqs(page: Page) -> list[int]:
    seqs: list[int] = page.evaluate("() => [...window.__streaming.service.receivedSeqs]")
    return seqs


def unmarkdown(text: str) -> str:
    """Markdown source reduced to the words a reader sees, for comparison with rendered text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^\s*(#{1,6}|[-*+]|\d+\.)\s+", "", text, flags=re.MULTILINE)
    text = re.sub(r"(\*\*|__|\*|_|`)", "", text)
    return " ".join(text.split())


def test_stream_pause_resume_complete_and_undo(page: Page, server_url: str) -> None:
    session_id = start(
        page, f"{server_url}/?tokensPerSecond=20&maxTokens=160", "Explain streaming into rich text editors"
    )

    # Text flows into the editor, and the page names the provider and model.
    wait_for_text_longer_than(page, 20)
    page.wait_for_function("() => document.querySelector('[data-testid=provider]').textContent === 'demo'")
    assert page.get_by_test_id("model").inner_text() not in ("", "—")

    # The user types in the first heading while the answer streams at the end.
    heading = page.locator(".tiptap > h1").first
    # The editor takes the click's caret on its own schedule: press End once the caret is
    # in the heading, and type once it is at its end (a starved browser may take a while).
    heading.click()
    page.wait_for_function(f"() => {CARET_JS}.inHeading")
    page.keyboard.press("End")
    page.wait_for_function(f"() => {CARET_JS}.atEnd")
    page.keyboard.type(" (edited)")
    wait_for_text_longer_than(page, len(stream_text(page) or ""))
    assert heading.inner_text() == "Streaming into Tiptap (edited)"

    # Pause: the server confirms, and the text stops growing.
    page.get_by_test_id("pause").click()
    wait_for_state(page, "paused")
    assert _get_json(f"{server_url}/api/streaming/{session_id}")["state"] == "paused"
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stream-status]').textContent === 'Paused'"
    )
    paused_text = stream_text(page)
    paused_seqs = received_seqs(page)
    with pytest.raises(PlaywrightTimeoutError):
        # At 20 tokens/s, 1.5 s would bring about 30 more tokens if the pause did not hold.
        page.wait_for_function(f"text => ({STREAM_TEXT_JS})() !== text", arg=paused_text, timeout=1500)
    assert received_seqs(page) == paused_seqs
    assert _get_json(f"{server_url}/api/streaming/{session_id}")["chunks"] == len(paused_seqs)

    # Resume, and let it complete.
    page.get_by_test_id("resume").click()
    wait_for_state(page, "streaming")
    wait_for_text_longer_than(page, len(paused_text or ""))
    wait_for_state(page, "completed")

    session = _get_json(f"{server_url}/api/streaming/{session_id}")
    assert session["state"] == "completed"
    assert session["provider"] == "demo"
    seqs = received_seqs(page)
    assert seqs == list(range(session["chunks"]))

    # The Markdown became rich content, with the same words as the session's text.
    node = page.locator(f'[data-streaming-node][data-stream-id="{session_id}"]')
    assert node.get_attribute("data-status") == "complete"
    assert node.locator("h1").count() == 1
    assert node.locator("ul > li").count() >= 1
    assert node.locator("strong").count() >= 1
    assert unmarkdown(stream_text(page) or "") == unmarkdown(session["text"])
    page.evaluate("() => window.getSelection().removeAllRanges()")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-finished.png"), full_page=True)

    # The whole answer is one undo step; the user's own edit is the one before it.
    page.locator(".tiptap > p").first.click()
    page.keyboard.press("Control+z")
    page.wait_for_function(f"() => ({STREAM_TEXT_JS})() === null")
    assert heading.inner_text() == "Streaming into Tiptap (edited)"
    page.keyboard.press("Control+z")
    page.wait_for_function(
        "() => document.querySelector('.tiptap > h1').textContent === 'Streaming into Tiptap'"
    )


def test_dropped_connection_loses_and_doubles_nothing(page: Page, server_url: str) -> None:
    session_id = start(
        page, f"{server_url}/?tokensPerSecond=30&maxTokens=160&format=text", "Describe lossless reconnects"
    )
    page.wait_for_function("() => window.__streaming.service.receivedSeqs.length >= 10")

    # Close the socket's engine, as a network drop would.
    still_connected = page.evaluate(
        "() => { const service = window.__streaming.service; service.socket.io.engine.close(); return service.connected }"
    )
    assert still_connected is False
    dropped_at = len(received_seqs(page))
    page.wait_for_function("() => window.__streaming.service.connected", timeout=STREAM_TIMEOUT_MS)
    wait_for_state(page, "completed")

    session = _get_json(f"{server_url}/api/streaming/{session_id}")
    seqs = received_seqs(page)
    assert seqs == list(range(session["chunks"]))
    assert len(seqs) > dropped_at
    # Plain-text mode keeps the text exactly as it arrived.
    assert stream_text(page) == session["text"]


def test_stop_cancels_the_session(page: Page, server_url: str) -> None:
    session_id = start(page, f"{server_url}/?tokensPerSecond=20&maxTokens=400", "Stop me")
    wait_for_text_longer_than(page, 10)
    page.get_by_test_id("stop").click()
    wait_for_state(page, "cancelled")
    assert _get_json(f"{server_url}/api/streaming/{session_id}")["state"] == "cancelled"
    node = page.locator(f'[data-streaming-node][data-stream-id="{session_id}"]')
    assert node.get_attribute("data-status") == "cancelled"
    assert page.get_by_test_id("start").is_enabled()
