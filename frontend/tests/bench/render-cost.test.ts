/**
 * Per-chunk rendering cost of a 20,000-token answer (`npm run bench:render`): the answer
 * streams one token per chunk into an editor rendered by React with the streaming node's
 * own node view (jsdom), the clock advancing 25 ms per
 * chunk (40 tokens/s) so that chunk animations expire as they do in a browser. Prints the
 * mean cost of a chunk at the start, the middle and the end of the answer; the cost of a
 * chunk must not grow with the answer's length.
 */
import { afterAll, beforeAll, expect, it, vi } from 'vitest'

import { DEMO_TOKENS } from '../unit/answers'
import { renderEditor } from '../unit/helpers'

const TOKENS = 20_000
const WINDOW = 1_000

function answerTokens(): string[] {
  const tokens: string[] = []
  for (let part = 1; tokens.length < TOKENS; part += 1) {
    const section = part === 1 ? DEMO_TOKENS : ['\n\n##', ` Part ${part}`, '\n\n', ...DEMO_TOKENS.slice(1)]
    tokens.push(...section)
  }
  return tokens.slice(0, TOKENS)
}

// Chunks reach the node view from outside React's act(), as they do in a browser.
beforeAll(() => {
  Object.assign(globalThis, { IS_REACT_ACT_ENVIRONMENT: false })
})
afterAll(() => {
  Object.assign(globalThis, { IS_REACT_ACT_ENVIRONMENT: true })
  vi.restoreAllMocks()
})

it(`renders each chunk of a ${TOKENS}-token answer at a cost that does not grow with its length`, async () => {
  const { editor, unmount } = await renderEditor('<p>Before</p>')
  editor.commands.startStream({ sessionId: 'bench' })
  let now = Date.now()
  vi.spyOn(Date, 'now').mockImplementation(() => now)

  const costs: number[] = []
  for (const token of answerTokens()) {
    now += 25
    const started = performance.now()
    editor.commands.writeChunk(token)
    costs.push(performance.now() - started)
  }
  const mean = (from: number) => costs.slice(from, from + WINDOW).reduce((a, b) => a + b, 0) / WINDOW
  const first = mean(0)
  const second = mean(WINDOW)
  const middle = mean(TOKENS / 2 - WINDOW / 2)
  const last = mean(TOKENS - WINDOW)
  const text = editor.state.doc.child(1).textContent.length
  console.log(
    `per-chunk rendering cost, ${TOKENS} tokens (${text} characters shown): ` +
      `chunks 1-${WINDOW} ${first.toFixed(3)} ms, ${WINDOW + 1}-${2 * WINDOW} ${second.toFixed(3)} ms, ` +
      `middle ${WINDOW} ${middle.toFixed(3)} ms, last ${WINDOW} ${last.toFixed(3)} ms`,
  )
  await unmount()
  expect(last).toBeLessThan(Math.max(first, second) * 2)
}, 600_000)
