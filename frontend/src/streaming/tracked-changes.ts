/**
 * A rewrite as tracked changes: the word-level differences between the blocks a stream
 * replaces (the original) and the blocks its response became (the revision), computed by
 * jsdiff over their text, with each change located in both documents; and the content that
 * results from accepting some changes and rejecting others. Pure functions: the plugin that
 * draws the changes and the commands that decide them call them.
 */
import { type Fragment, type Node as ProseMirrorNode, type NodeType } from '@tiptap/pm/model'
import { Transform } from '@tiptap/pm/transform'
import { type ChangeObject, diffWords, diffWordsWithSpace } from 'diff'

import type { ChangeDecision } from './types'

/**
 * One change: the original's `deleted` text (at `fromA`..`toA`) replaced by the revision's
 * `inserted` text (at `fromB`..`toB`). Positions are offsets into the content of each side
 * (0 is before its first block); one side is empty for a pure insertion or deletion.
 */
export interface TrackedChange {
  fromA: number
  toA: number
  fromB: number
  toB: number
  deleted: string
  inserted: string
}

/** Content's text (textblocks joined by newlines) and where each character is in the content. */
export interface PositionedText {
  text: string
  /** The position before each character (for a block separator: the end of the block before it). */
  starts: number[]
  /** The position after each character (for a block separator: the start of the block after it). */
  ends: number[]
  /** Where the text starts and ends: the inside of the first and last textblocks. */
  start: number
  end: number
}

/** Milliseconds a diff may take before it gives up (the change is then the whole differing range). */
const DIFF_TIMEOUT_MS = 100

/** The text of `content` with the position of every character. */
export function positionedText(content: Fragment): PositionedText {
  let text = ''
  const starts: number[] = []
  const ends: number[] = []
  let start: number | null = null
  let blockEnd: number | null = null
  content.descendants((node, pos) => {
    if (node.isTextblock) {
      if (blockEnd !== null) {
        text += '\n'
        starts.push(blockEnd)
        ends.push(pos + 1)
      }
      start ??= pos + 1
      blockEnd = pos + 1 + node.content.size
      return true
    }
    if (node.isText && node.text) {
      for (let index = 0; index < node.text.length; index += 1) {
        starts.push(pos + index)
        ends.push(pos + index + 1)
      }
      text += node.text
    } else if (node.isInline && node.isLeaf) {
      text += node.type.spec.linebreakReplacement ? '\n' : '\uFFFC'
      starts.push(pos)
      ends.push(pos + node.nodeSize)
    }
    return true
  })
  return { text, starts, ends, start: start ?? 0, end: blockEnd ?? content.size }
}

/** The content range of the text range `from`..`to` (offsets into `positioned.text`). */
function rangeOf(positioned: PositionedText, from: number, to: number): { from: number; to: number } {
  const length = positioned.text.length
  const start = from < length ? (positioned.starts[from] ?? positioned.end) : positioned.end
  if (to <= from) {
    return { from: start, to: start }
  }
  return { from: start, to: positioned.ends[to - 1] ?? positioned.end }
}

/** Whether the parts spell `oldText` (without the added ones) and `newText` (without the removed ones). */
function spells(parts: ChangeObject<string>[], oldText: string, newText: string): boolean {
  const old = parts.filter(part => !part.added).map(part => part.value)
  const revised = parts.filter(part => !part.removed).map(part => part.value)
  return old.join('') === oldText && revised.join('') === newText
}

/** Word-level diff parts that spell both texts exactly, or null if the diff gave up. */
function diffParts(oldText: string, newText: string): ChangeObject<string>[] | null {
  const words = diffWords(oldText, newText, { timeout: DIFF_TIMEOUT_MS })
  if (words && spells(words, oldText, newText)) {
    return words
  }
  // diffWords may fold differences in whitespace into common parts; this one keeps them.
  const spaced = diffWordsWithSpace(oldText, newText, { timeout: DIFF_TIMEOUT_MS })
  return spaced && spells(spaced, oldText, newText) ? spaced : null
}

/** The one change from the first differing character to the last: what a diff that gave up leaves. */
function wholeChange(oldText: string, newText: string): [number, number, number, number] | null {
  let start = 0
  while (start < oldText.length && start < newText.length && oldText[start] === newText[start]) {
    start += 1
  }
  if (start === oldText.length && start === newText.length) {
    return null
  }
  let endA = oldText.length
  let endB = newText.length
  while (endA > start && endB > start && oldText[endA - 1] === newText[endB - 1]) {
    endA -= 1
    endB -= 1
  }
  return [start, endA, start, endB]
}

/** Text offsets of each change: runs of removed and added parts between common ones. */
function changedOffsets(oldText: string, newText: string): [number, number, number, number][] {
  const parts = diffParts(oldText, newText)
  if (!parts) {
    const whole = wholeChange(oldText, newText)
    return whole ? [whole] : []
  }
  const found: [number, number, number, number][] = []
  let a = 0
  let b = 0
  let open: [number, number, number, number] | null = null
  for (const part of parts) {
    const length = part.value.length
    if (!part.added && !part.removed) {
      open = null
      a += length
      b += length
      continue
    }
    if (!open) {
      open = [a, a, b, b]
      found.push(open)
    }
    if (part.removed) {
      a += length
      open[1] = a
    } else {
      b += length
      open[3] = b
    }
  }
  return found
}

/** The last diff of each revised content: the plugin that draws it and the commands that decide it share it. */
const diffs = new WeakMap<Fragment, { original: Fragment; changes: readonly TrackedChange[] }>()

/** The word-level changes that turn `original` into `revised`, in document order. */
export function diffContent(original: Fragment, revised: Fragment): readonly TrackedChange[] {
  const known = diffs.get(revised)
  if (known?.original === original) {
    return known.changes
  }
  const changes = computeChanges(original, revised)
  diffs.set(revised, { original, changes })
  return changes
}

function computeChanges(original: Fragment, revised: Fragment): TrackedChange[] {
  const a = positionedText(original)
  const b = positionedText(revised)
  return changedOffsets(a.text, b.text).map(([fromA, toA, fromB, toB]) => {
    const inA = rangeOf(a, fromA, toA)
    const inB = rangeOf(b, fromB, toB)
    return {
      fromA: inA.from,
      toA: inA.to,
      fromB: inB.from,
      toB: inB.to,
      deleted: a.text.slice(fromA, toA),
      inserted: b.text.slice(fromB, toB),
    }
  })
}

/** The decision on change `index`: the writer's own, or `undecided` for a change still pending. */
export function decisionOf(
  decisions: ReadonlyMap<number, ChangeDecision>,
  index: number,
  undecided: ChangeDecision,
): ChangeDecision {
  return decisions.get(index) ?? undecided
}

/**
 * The content the writer's decisions leave: the revision, with every rejected change's
 * text put back as it was in the original (formatting included). Changes without a
 * decision count as `undecided`. `container` is a node type that holds the blocks.
 */
export function composeContent(
  original: Fragment,
  revised: Fragment,
  changes: readonly TrackedChange[],
  decisions: ReadonlyMap<number, ChangeDecision>,
  undecided: ChangeDecision,
  container: NodeType,
): Fragment {
  const originalNode: ProseMirrorNode = container.create(null, original)
  const transform = new Transform(container.create(null, revised))
  for (let index = changes.length - 1; index >= 0; index -= 1) {
    const change = changes[index]
    if (change && decisionOf(decisions, index, undecided) === 'rejected') {
      transform.replace(change.fromB, change.toB, originalNode.slice(change.fromA, change.toA))
    }
  }
  return transform.doc.content
}
