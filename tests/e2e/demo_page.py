"""Helpers that drive the demo page: start a stream, read the editor, wait for a state."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

from playwright.sync_api import Page

STREAM_TIMEOUT_MS = 60_000

# The editor's document as JSON, and whether a streaming node is in it.
DOC_JS = "() => window.__streaming.editor.getJSON()"
HAS_STREAMING_NODE_JS = "() => JSON.stringify(window.__streaming.editor.getJSON()).includes('streamingNode')"

# What a reader sees in each textblock of the streaming node, code left out.
VISIBLE_BLOCKS_JS = """() => {
  const content = document.querySelector('[data-streaming-node] .streaming-node__content')
  if (!content) return null
  return [...content.querySelectorAll('p, h1, h2, h3, h4, h5, h6')]
    .filter(block => !block.closest('pre'))
    .map(block => {
      const copy = block.cloneNode(true)
      copy.querySelectorAll('code').forEach(code => code.replaceWith('•'))
      return { tag: block.tagName.toLowerCase(), inList: !!block.closest('li'), text: copy.textContent }
    })
}"""

# Markdown syntax that must never be visible in a rendered block (code excluded).
RAW_MARKDOWN = [
    re.compile(r"\*"),
    re.compile(r"(?:^|\W)_|_(?:$|\W)"),
    re.compile(r"`"),
    re.compile(r"^#{1,6}(?:\s|$)"),
    re.compile(r"^[-+]\s"),
    re.compile(r"\[|\]\("),
]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for_state(page: Page, state: str, timeout: int = STREAM_TIMEOUT_MS) -> None:
    page.wait_for_function(
        "state => document.querySelector('[data-testid=state]').textContent === state",
        arg=state,
        timeout=timeout,
    )


def start(page: Page, url: str, prompt: str) -> str:
    """Opens the page at ``url`` (unless it is open), starts a stream, returns its session id."""
    if page.url != url:
        page.goto(url)
    page.get_by_test_id("prompt").fill(prompt)
    page.get_by_test_id("start").click()
    page.wait_for_function(
        "() => /^[0-9a-f-]{36}$/.test(document.querySelector('[data-testid=session-id]').textContent)"
    )
    return page.get_by_test_id("session-id").inner_text()


def wait_for_review(page: Page) -> None:
    page.wait_for_selector('[data-streaming-node][data-review="pending"]', timeout=STREAM_TIMEOUT_MS)


def raw_markdown_in(blocks: list[dict[str, Any]]) -> list[str]:
    """The blocks whose visible text shows Markdown syntax."""
    return [
        f"{block['tag']}: {block['text']!r}"
        for block in blocks
        for pattern in RAW_MARKDOWN
        if pattern.search(block["text"])
    ]
