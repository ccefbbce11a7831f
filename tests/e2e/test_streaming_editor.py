"""End to end: rich text while the answer streams, review (accept, reject, regenerate), a
rewrite of the selection, and two tabs on one session; Debian's Chromium against the real
server and its demo provider. Every wait is on a condition, with a timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Page

from tests.e2e.conftest import watch_page
from tests.e2e.demo_page import (
    DOC_JS,
    HAS_STREAMING_NODE_JS,
    STREAM_TIMEOUT_MS,
    VISIBLE_BLOCKS_JS,
    get_json,
    raw_markdown_in,
    start,
    wait_for_review,
    wait_for_state,
)

PROMPT = "Explain how AI text streams into a rich text editor"
SAME_DOC_JS = "doc => JSON.stringify(window.__streaming.editor.getJSON()) === JSON.stringify(doc)"

# Records what the streaming node shows after every change of the editor's DOM.
SAMPLE_JS = f"""() => {{
  window.__samples = []
  const visible = {VISIBLE_BLOCKS_JS}
  const observer = new MutationObserver(() => {{
    const blocks = visible()
    if (blocks) window.__samples.push({{ blocks, state: document.querySelector('[data-testid=state]').textContent }})
  }})
  observer.observe(document.querySelector('.tiptap'), {{ subtree: true, childList: true, characterData: true }})
}}"""


def test_markdown_is_rendered_while_it_streams(page: Page, server_url: str, artifacts: Path) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=40&maxTokens=240")
    page.evaluate(SAMPLE_JS)
    session_id = start(page, page.url, PROMPT)

    # Mid-stream: a heading and the first list items are real nodes before the end.
    node = page.locator(f'[data-streaming-node][data-stream-id="{session_id}"]')
    node.locator("h1").wait_for(timeout=STREAM_TIMEOUT_MS)
    page.screenshot(path=str(artifacts / "midstream-heading.png"))
    node.locator("li strong").first.wait_for(timeout=STREAM_TIMEOUT_MS)
    assert page.get_by_test_id("state").inner_text() == "streaming"
    page.screenshot(path=str(artifacts / "midstream-list.png"))
    node.locator("a[href='https://tiptap.dev']").wait_for(timeout=STREAM_TIMEOUT_MS)
    page.screenshot(path=str(artifacts / "midstream-link.png"))
    wait_for_state(page, "completed")

    samples: list[dict[str, Any]] = page.evaluate("() => window.__samples")
    streaming = [sample for sample in samples if sample["state"] != "completed"]
    assert len(streaming) > 50
    problems = [problem for sample in samples for problem in raw_markdown_in(sample["blocks"])]
    assert problems == []
    assert any(
        any(block["tag"] == "h2" for block in sample["blocks"])
        and any(block["inList"] for block in sample["blocks"])
        for sample in streaming
    )
    # The page shows the provider, the model, the tokens used and the time to first token.
    assert page.get_by_test_id("provider").inner_text() == "demo"
    assert page.get_by_test_id("model").inner_text() == "demo"
    assert page.get_by_test_id("tokens").inner_text() == "240"
    assert page.get_by_test_id("ttft").inner_text().endswith(" ms")
    assert page.get_by_test_id("announcer").inner_text() == "Stream complete."


def test_accept_keeps_plain_content_as_one_undo_step(page: Page, server_url: str) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=200&maxTokens=60&review=1")
    before = page.evaluate(DOC_JS)
    start(page, page.url, PROMPT)
    wait_for_review(page)
    assert page.get_by_test_id("announcer").inner_text().startswith("Suggestion ready")
    # The suggestion is not in the undo history yet: undo leaves it alone.
    page.locator(".tiptap > p").first.click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")

    html = page.evaluate("() => window.__streaming.editor.getHTML()")
    assert "<h1>How ai text streams into a rich text</h1>" in html
    assert "data-streaming" not in html
    assert page.get_by_test_id("announcer").inner_text() == "Suggestion accepted."
    page.keyboard.press("Control+z")
    page.wait_for_function(SAME_DOC_JS, arg=before)


def test_reject_restores_the_document_exactly(page: Page, server_url: str) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=200&maxTokens=60&review=1")
    before = page.evaluate(DOC_JS)
    start(page, page.url, PROMPT)
    wait_for_review(page)
    page.locator(".tiptap > p").first.click()
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    assert page.evaluate(DOC_JS) == before

    # And with the node view's own button.
    start(page, page.url, PROMPT)
    wait_for_review(page)
    page.get_by_test_id("review-reject").click()
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    assert page.evaluate(DOC_JS) == before


def test_regenerate_streams_a_new_session_and_responses_can_be_flipped(page: Page, server_url: str) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=200&maxTokens=40&review=1")
    first_session = start(page, page.url, PROMPT)
    wait_for_review(page)
    first_text = page.locator("[data-streaming-node] .streaming-node__content").inner_text()

    page.get_by_test_id("review-regenerate").click()
    page.wait_for_function(
        "first => document.querySelector('[data-testid=session-id]').textContent !== first", arg=first_session
    )
    second_session = page.get_by_test_id("session-id").inner_text()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=review-position]')?.textContent === '2/2'"
    )
    assert get_json(f"{server_url}/api/streaming/{second_session}")["state"] == "completed"

    page.get_by_test_id("review-previous").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=review-position]').textContent === '1/2'"
    )
    assert page.locator("[data-streaming-node] .streaming-node__content").inner_text() == first_text
    page.get_by_test_id("response").select_option("1")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=review-position]').textContent === '2/2'"
    )

    page.get_by_test_id("accept").click()
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    assert page.locator(".tiptap > h1").nth(1).inner_text() == "How ai text streams into a rich text"


SELECT_JS = """text => {
  const editor = window.__streaming.editor
  let range = null
  editor.state.doc.descendants((node, pos) => {
    if (range === null && node.isText && node.text.includes(text)) {
      const from = pos + node.text.indexOf(text)
      range = { from, to: from + text.length }
    }
  })
  // view.focus() focuses now; Tiptap's focus command waits for an animation frame, and a
  // focus that lands later would take the prompt's typing into the editor.
  editor.view.focus()
  editor.commands.setTextSelection(range)
}"""


def test_rewrite_of_a_selection(page: Page, server_url: str, artifacts: Path) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=30&maxTokens=40&review=1&insertAt=selection")
    before = page.evaluate(DOC_JS)
    page.evaluate(SELECT_JS, "already has some text")
    start(page, page.url, "Rewrite this")

    original = page.get_by_test_id("stream-original")
    original.wait_for(timeout=STREAM_TIMEOUT_MS)
    assert original.inner_text() == "already has some text"
    page.locator("[data-streaming-node] .streaming-node__content h1").wait_for(timeout=STREAM_TIMEOUT_MS)
    page.screenshot(path=str(artifacts / "midstream-rewrite.png"))
    wait_for_review(page)

    # Rejected: the selected text is back, the paragraph whole again.
    page.get_by_test_id("reject").click()
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    assert page.evaluate(DOC_JS) == before

    # Accepted: the response stands where the selection was, the rest of the paragraph kept.
    page.evaluate(SELECT_JS, "already has some text")
    start(page, page.url, "Rewrite this")
    wait_for_review(page)
    page.get_by_test_id("accept").click()
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    text = page.locator(".tiptap").inner_text()
    assert "already has some text" not in text
    assert "This document" in text
    assert "Type a prompt below" in text
    assert "Here is a short overview" in text or "offline demo provider" in text or "Rewrite this" in text
    page.locator(".tiptap > h1").first.click()
    page.keyboard.press("Control+z")
    page.wait_for_function(SAME_DOC_JS, arg=before)


def test_two_tabs_watch_one_session_and_pause_together(
    page: Page, context: BrowserContext, server_url: str, artifacts: Path
) -> None:
    session_id = start(page, f"{server_url}/?tokensPerSecond=20&maxTokens=400", PROMPT)
    page.locator("[data-streaming-node] h1").wait_for(timeout=STREAM_TIMEOUT_MS)

    problems: list[str] = []
    second = watch_page(context.new_page(), problems)
    second.goto(f"{server_url}/?session={session_id}")
    wait_for_state(second, "streaming")
    second.locator("[data-streaming-node] li").first.wait_for(timeout=STREAM_TIMEOUT_MS)
    second.screenshot(path=str(artifacts / "midstream-second-tab.png"))

    # Pause from the second tab: both tabs (and the server) are paused.
    second.get_by_test_id("pause").click()
    wait_for_state(second, "paused")
    wait_for_state(page, "paused")
    assert get_json(f"{server_url}/api/streaming/{session_id}")["state"] == "paused"
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stream-status]').textContent === 'Paused'"
    )

    # Resume from the first: both stream on, to the same end.
    page.get_by_test_id("resume").click()
    wait_for_state(page, "streaming")
    wait_for_state(second, "streaming")
    page.get_by_test_id("stop").click()
    wait_for_state(page, "cancelled")
    wait_for_state(second, "cancelled")
    text = get_json(f"{server_url}/api/streaming/{session_id}")["text"]
    first_view = page.locator("[data-streaming-node] .streaming-node__content").inner_text()
    second_view = second.locator("[data-streaming-node] .streaming-node__content").inner_text()
    assert first_view == second_view
    assert len(text) > len(first_view) / 2
    assert problems == []


def tab_to(page: Page, test_id: str, limit: int = 40) -> None:
    """Moves the focus with Tab alone until the element with ``test_id`` has it."""
    for _ in range(limit):
        if page.evaluate("() => document.activeElement?.dataset?.testid") == test_id:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{test_id} cannot be reached with Tab")


def test_the_page_is_usable_by_keyboard_alone(page: Page, server_url: str) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=40&maxTokens=120&review=1")
    tab_to(page, "prompt")
    page.keyboard.press("Control+a")
    page.keyboard.type("Explain keyboard navigation")
    tab_to(page, "start")
    page.keyboard.press("Enter")
    wait_for_state(page, "streaming")
    tab_to(page, "pause")
    page.keyboard.press("Enter")
    wait_for_state(page, "paused")
    assert page.get_by_test_id("announcer").inner_text() == "Stream paused."
    tab_to(page, "resume")
    page.keyboard.press("Enter")
    wait_for_state(page, "streaming")
    wait_for_review(page)
    tab_to(page, "accept")
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    assert "Explain keyboard navigation" not in page.locator(".tiptap").inner_text()
    assert page.locator(".tiptap h1").nth(1).inner_text() == "Keyboard navigation"
