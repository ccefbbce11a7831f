"""Per-chunk rendering cost of a 20,000-token answer in Chromium: the demo provider's
answer streams one token per chunk into the demo page's editor (the real React node view,
the real DOM), the page's clock advancing 25 ms a chunk (40 tokens/s) so that chunk
animations expire as they do live. The cost of a chunk must not grow with the answer."""

from __future__ import annotations

from playwright.sync_api import Page

from providers.demo import demo_tokens

TOKENS = 20_000
WINDOW = 1_000

MEASURE_JS = """async ({ tokens, WINDOW }) => {
  const editor = window.__streaming.editor
  // Chunks arrive as separate tasks, as socket messages do: React renders in between.
  const channel = new MessageChannel()
  const nextTask = () => new Promise(resolve => {
    channel.port1.onmessage = resolve
    channel.port2.postMessage(null)
  })
  const realNow = Date.now
  let now = realNow()
  Date.now = () => now
  editor.commands.startStream({ streamId: 'bench' })
  const costs = []
  for (const token of tokens) {
    await nextTask()
    now += 25
    const started = performance.now()
    editor.commands.streamToNode('bench', token)
    costs.push(performance.now() - started)
  }
  Date.now = realNow
  const mean = from => costs.slice(from, from + WINDOW).reduce((a, b) => a + b, 0) / WINDOW
  return {
    first: mean(0),
    second: mean(WINDOW),
    middle: mean(tokens.length / 2 - WINDOW / 2),
    last: mean(tokens.length - WINDOW),
    total: costs.reduce((a, b) => a + b, 0),
    blocks: document.querySelectorAll('[data-stream-id=bench] :is(p, h1, h2, li)').length,
  }
}"""


def test_chunk_cost_does_not_grow_with_the_answer(page: Page, server_url: str) -> None:
    tokens = list(demo_tokens("Explain how AI text streams into a rich text editor", TOKENS))
    assert len(tokens) == TOKENS
    page.goto(server_url)
    page.wait_for_function("() => window.__streaming && window.__streaming.editor")
    cost = page.evaluate(MEASURE_JS, {"tokens": tokens, "WINDOW": WINDOW})
    print(
        f"\nChromium, per-chunk rendering cost of a {TOKENS}-token answer ({cost['blocks']} blocks): "
        f"chunks 1-{WINDOW} {cost['first']:.3f} ms, {WINDOW + 1}-{2 * WINDOW} {cost['second']:.3f} ms, "
        f"middle {cost['middle']:.3f} ms, last {WINDOW} {cost['last']:.3f} ms "
        f"(all {TOKENS}: {cost['total'] / 1000:.1f} s)"
    )
    assert cost["blocks"] > 1000
    assert cost["last"] < 2 * max(cost["second"], 0.2)
