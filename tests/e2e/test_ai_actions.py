"""End to end: the model sees the document (issue 19). A paragraph selected in the demo
page, shortened from the selection menu, reviewed change by change as the rewrite streams;
accept all and reject all; a follow-up that replaces the suggestion; ghost-text
autocomplete (Tab accepts, Escape dismisses, typing on cancels its session). Debian's
Chromium against the real server and its demo provider, which does each action
deterministically. Every wait is on a condition, with a timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from tests.e2e.demo_page import (
    DOC_JS,
    HAS_STREAMING_NODE_JS,
    STREAM_TIMEOUT_MS,
    get_json,
    wait_for_review,
    wait_for_state,
)

#: The demo page's paragraph for actions (the third block): filler words, a planted typo.
PARAGRAPH_START = "Select this paragraph"
PARAGRAPH_INDEX = 2

#: The text of the action paragraph (or of the block that took its place).
PARAGRAPH_TEXT_JS = f"() => window.__streaming.editor.state.doc.child({PARAGRAPH_INDEX}).textContent"

#: What the suggestion shows, in order: common text, and each change's deleted and inserted words.
SEGMENTS_JS = """() => {
  const content = document.querySelector('[data-streaming-node] .streaming-node__content')
  if (!content) return null
  const segments = []
  const walker = document.createTreeWalker(content, NodeFilter.SHOW_TEXT)
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const element = node.parentElement
    if (element.closest('.tracked-change__controls, [data-testid=ai-caret]')) continue
    const change = element.closest('[data-change]')
    segments.push(change
      ? { kind: change.dataset.change, index: Number(change.dataset.changeIndex), text: node.textContent }
      : { kind: 'common', index: -1, text: node.textContent })
  }
  return segments
}"""

#: The stream's responses as the editor keeps them.
RESPONSES_JS = """() => {
  const manager = window.__streaming.editor.storage.streaming.streamManager
  const record = manager.get(manager.activeStreamId) ?? manager.pendingReview()
  return record ? record.responses : null
}"""

#: Puts the cursor at the end of the first paragraph (focusing now, not in a frame).
CURSOR_AT_END_JS = """() => {
  const editor = window.__streaming.editor
  const first = editor.state.doc.child(1)
  const end = editor.state.doc.child(0).nodeSize + first.nodeSize - 1
  editor.view.focus()
  editor.commands.setTextSelection(end)
}"""

FIRST_PARAGRAPH_JS = "() => window.__streaming.editor.state.doc.child(1).textContent"

#: A finished ghost text (its session complete), or a streaming one with text.
GHOST_DONE = '[data-testid=ghost][data-streaming="false"]'
GHOST_STREAMING = '[data-testid=ghost][data-streaming="true"]'


def select_paragraph(page: Page) -> None:
    """Selects the action paragraph with a triple click, as a writer would."""
    page.locator(".tiptap > p", has_text=PARAGRAPH_START).click(click_count=3)
    page.wait_for_function(
        """start => {
          const { state } = window.__streaming.editor
          const { $from, $to, empty } = state.selection
          return !empty && $from.parent === $to.parent && $from.parent.textContent.startsWith(start)
            && $from.parentOffset === 0 && $to.parentOffset === $to.parent.content.size
        }""",
        arg=PARAGRAPH_START,
    )


def run_from_menu(page: Page, action: str) -> str:
    """Picks ``action`` in the selection menu; returns the session id it started."""
    menu = page.get_by_test_id("ai-menu")
    entry = menu.locator(f'[data-action="{action}"]')
    entry.wait_for(state="visible")
    previous = page.get_by_test_id("session-id").inner_text()
    entry.click()
    page.wait_for_function(
        """previous => {
          const id = document.querySelector('[data-testid=session-id]').textContent
          return id !== previous && /^[0-9a-f-]{36}$/.test(id)
        }""",
        arg=previous,
    )
    return page.get_by_test_id("session-id").inner_text()


def chosen_text(segments: list[dict[str, Any]], decisions: dict[int, bool]) -> str:
    """The text the decisions leave: common text, and each change's inserted words where it
    was accepted (True), its deleted words where it was rejected."""
    text = ""
    for segment in segments:
        if segment["kind"] == "common" or (segment["kind"] == "insert") == decisions[segment["index"]]:
            text += segment["text"]
    return text


def decide(page: Page, index: int, accept: bool) -> None:
    controls = page.locator(f'.tracked-change__controls[data-change-index="{index}"]')
    controls.get_by_test_id("change-accept" if accept else "change-reject").click()
    controls.wait_for(state="detached")


def test_shorten_from_the_menu_is_reviewed_change_by_change(
    page: Page, server_url: str, artifacts: Path
) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=8")
    before = page.evaluate(DOC_JS)
    original = page.evaluate(PARAGRAPH_TEXT_JS)
    select_paragraph(page)
    menu = page.get_by_test_id("ai-menu")
    menu.locator('[data-action="shorten"]').wait_for(state="visible")
    for action in ("shorten", "fix", "translate", "summarize", "continue"):
        assert menu.locator(f'[data-action="{action}"]').count() == 1
    session_id = run_from_menu(page, "shorten")

    # The rewrite streams in as tracked changes against the paragraph, the AI caret ahead of it.
    page.wait_for_function(
        """() => document.querySelector('[data-change="delete"]') !== null
          && document.querySelector('[data-testid=ai-caret]') !== null
          && document.querySelector('[data-testid=state]').textContent === 'streaming'""",
        timeout=STREAM_TIMEOUT_MS,
    )
    assert page.get_by_test_id("ai-caret").inner_text() == "AI"
    page.screenshot(path=str(artifacts / "midstream-tracked-changes.png"))
    wait_for_review(page)
    assert page.get_by_test_id("ai-caret").count() == 0

    session = get_json(f"{server_url}/api/streaming/{session_id}")
    assert session["action"] == "shorten"
    assert len(session["text"]) < len(original)
    segments = page.evaluate(SEGMENTS_JS)
    changes = sorted({segment["index"] for segment in segments if segment["kind"] != "common"})
    assert len(changes) >= 2
    assert page.get_by_test_id("change-accept").count() == len(changes)
    # All accepted is the model's text; all rejected the paragraph as it was.
    assert chosen_text(segments, dict.fromkeys(changes, True)) == session["text"]
    assert chosen_text(segments, dict.fromkeys(changes, False)) == original
    page.screenshot(path=str(artifacts / "tracked-changes-review.png"))

    # Accept the first change, reject the second, then accept the rest.
    decide(page, changes[0], True)
    decide(page, changes[1], False)
    page.get_by_test_id("accept-all").click()
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    decisions = dict.fromkeys(changes, True) | {changes[1]: False}
    assert page.evaluate(PARAGRAPH_TEXT_JS) == chosen_text(segments, decisions)

    # The whole decision is one undo step.
    page.evaluate("() => window.__streaming.editor.view.focus()")
    page.keyboard.press("Control+z")
    page.wait_for_function(
        "doc => JSON.stringify(window.__streaming.editor.getJSON()) === JSON.stringify(doc)", arg=before
    )


def test_accept_all_and_reject_all(page: Page, server_url: str) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=40")
    before = page.evaluate(DOC_JS)
    original = page.evaluate(PARAGRAPH_TEXT_JS)

    select_paragraph(page)
    run_from_menu(page, "shorten")
    wait_for_review(page)
    # The suggestion's own controls stay, labelled for the whole rewrite.
    assert page.get_by_test_id("review-accept").inner_text() == "Accept all"
    assert page.get_by_test_id("review-reject").inner_text() == "Reject all"
    page.get_by_test_id("reject-all").click()
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    assert page.evaluate(DOC_JS) == before

    select_paragraph(page)
    session_id = run_from_menu(page, "fix")
    wait_for_review(page)
    fixed = get_json(f"{server_url}/api/streaming/{session_id}")["text"]
    assert fixed == original.replace(" teh ", " the ")
    # The planted typo is the one change: "teh" deleted, "the" inserted in its place.
    segments = page.evaluate(SEGMENTS_JS)
    changed = [(seg["kind"], seg["index"], seg["text"]) for seg in segments if seg["kind"] != "common"]
    index = changed[0][1] if changed else -1
    assert changed == [("delete", index, "teh"), ("insert", index, "the")]
    assert chosen_text(segments, {index: False}) == original
    assert chosen_text(segments, {index: True}) == fixed
    page.get_by_test_id("accept-all").click()
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    assert page.evaluate(PARAGRAPH_TEXT_JS) == fixed


def test_a_follow_up_replaces_the_suggestion(page: Page, server_url: str) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=40&maxTokens=60")
    select_paragraph(page)
    first = run_from_menu(page, "shorten")
    wait_for_review(page)
    first_text = get_json(f"{server_url}/api/streaming/{first}")["text"]

    box = page.get_by_test_id("follow-up")
    # An instruction the demo provider carries out on the earlier answer: a casual tone.
    box.fill("Now make it sound casual")
    box.press("Enter")
    page.wait_for_function(
        "first => document.querySelector('[data-testid=session-id]').textContent !== first", arg=first
    )
    second = page.get_by_test_id("session-id").inner_text()
    wait_for_state(page, "completed")
    wait_for_review(page)

    session = get_json(f"{server_url}/api/streaming/{second}")
    assert session["followUp"] == first
    assert session["action"] == "custom"
    assert page.evaluate(RESPONSES_JS) == [first_text, session["text"]]
    assert page.get_by_test_id("review-position").inner_text() == "2/2"
    # The suggestion shows the new answer; the earlier one is a click away.
    assert get_json(f"{server_url}/api/streaming/{first}")["state"] == "completed"
    page.get_by_test_id("review-previous").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=review-position]').textContent === '1/2'"
    )
    page.get_by_test_id("review-next").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=review-position]').textContent === '2/2'"
    )
    assert session["text"] != first_text
    page.get_by_test_id("accept-all").click()
    page.wait_for_function(f"() => !({HAS_STREAMING_NODE_JS})()")
    # The paragraph is exactly the follow-up's answer.
    assert page.evaluate(PARAGRAPH_TEXT_JS) == session["text"]


def test_ghost_text_tab_accepts_and_escape_dismisses(page: Page, server_url: str, artifacts: Path) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=40")
    page.evaluate(CURSOR_AT_END_JS)
    page.keyboard.type(" And")
    ghost = page.locator(GHOST_DONE)
    ghost.wait_for(timeout=STREAM_TIMEOUT_MS)
    suggestion = ghost.text_content() or ""
    assert suggestion.strip() != ""
    session = get_json(f"{server_url}/api/streaming/{ghost.get_attribute('data-session-id')}")
    assert session["action"] == "complete"
    assert session["state"] == "completed"
    # The ghost is no part of the document.
    assert page.evaluate(FIRST_PARAGRAPH_JS).endswith(" And")
    assert suggestion.strip() not in str(page.evaluate(DOC_JS))
    page.screenshot(path=str(artifacts / "ghost-text.png"))

    page.keyboard.press("Tab")
    page.wait_for_function(
        "text => window.__streaming.editor.state.doc.child(1).textContent.endsWith(text)",
        arg=" And" + suggestion,
    )
    assert page.locator("[data-testid=ghost]").count() == 0

    page.keyboard.type(" More")
    ghost.wait_for(timeout=STREAM_TIMEOUT_MS)
    page.keyboard.press("Escape")
    ghost.wait_for(state="detached")
    assert page.evaluate(FIRST_PARAGRAPH_JS).endswith(" And" + suggestion + " More")


def test_typing_on_cancels_the_ghost_texts_session(page: Page, server_url: str) -> None:
    page.goto(f"{server_url}/?tokensPerSecond=2")
    page.evaluate(CURSOR_AT_END_JS)
    page.keyboard.type(" Slow")
    ghost = page.locator(GHOST_STREAMING)
    page.wait_for_function(
        f"() => (document.querySelector('{GHOST_STREAMING}')?.textContent ?? '').trim() !== ''",
        timeout=STREAM_TIMEOUT_MS,
    )
    session_id = ghost.get_attribute("data-session-id")
    shown = ghost.text_content() or ""
    typed = "q" if not shown.startswith("q") else "z"

    with page.expect_response(
        lambda response: response.url.endswith(f"/api/streaming/{session_id}/cancel")
    ) as cancel:
        page.keyboard.type(typed)
    assert cancel.value.status == 200
    assert page.locator("[data-testid=ghost]").count() == 0
    assert page.evaluate(FIRST_PARAGRAPH_JS).endswith(" Slow" + typed)
    assert get_json(f"{server_url}/api/streaming/{session_id}")["state"] == "cancelled"
