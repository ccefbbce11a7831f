/**
 * The document around an action, as the model gets it (PROTOCOL.md `context`): the
 * selected text and the text before and after it, as Markdown written by Tiptap's own
 * serializer (`@tiptap/markdown`, from the editor's extensions), each side within a
 * budget of characters, cut so that the text nearest the cursor stays.
 */
import type { AnyExtension, JSONContent } from '@tiptap/core'
import { MarkdownManager } from '@tiptap/markdown'
import { Fragment, type Node as ProseMirrorNode } from '@tiptap/pm/model'

import type { DocumentContext } from './types'

/** Writes part of a document (block content) as Markdown. */
export type FragmentSerializer = (content: Fragment) => string

/** How many characters of text before and after the cursor or selection an action sends. */
export interface ContextBudgets {
  /**
   * Characters before the cursor (or the selection); the text nearest the cursor stays.
   * @default 4000
   * @example 8000
   */
  before: number
  /**
   * Characters after the cursor (or the selection); the text nearest the cursor stays.
   * @default 1000
   * @example 0
   */
  after: number
}

/** The budgets an editor uses unless its options say otherwise. */
export const DEFAULT_CONTEXT_BUDGETS: ContextBudgets = { before: 4000, after: 1000 }

/** A serializer that writes content as Markdown the way the editor's extensions render it. */
export function markdownSerializer(extensions: AnyExtension[]): FragmentSerializer {
  const manager = new MarkdownManager({ extensions })
  return content =>
    content.size === 0 ? '' : manager.serialize({ type: 'doc', content: content.toJSON() as JSONContent[] })
}

/**
 * The content between `from` and `to` as blocks: the blocks (cut at the edges) the range
 * spans, or, for a range inside one textblock, its inline content in a paragraph.
 */
export function blockContent(doc: ProseMirrorNode, from: number, to: number): Fragment {
  if (from >= to) {
    return Fragment.empty
  }
  const { content } = doc.slice(from, to)
  const paragraph = doc.type.schema.nodes.paragraph
  if (content.firstChild?.isInline) {
    return paragraph ? Fragment.from(paragraph.create(null, content)) : Fragment.empty
  }
  return content
}

/** Drops the partial word a cut left at the start of `text`. */
function dropPartialFirstWord(text: string): string {
  const space = text.search(/\s/)
  return space >= 0 ? text.slice(space + 1) : text
}

/** Drops the partial word a cut left at the end of `text`. */
function dropPartialLastWord(text: string): string {
  const space = text.search(/\s\S*$/)
  return space >= 0 ? text.slice(0, space) : text
}

/** The end of `text` within `budget` characters, starting at a word boundary when it was cut. */
export function cutBefore(text: string, budget: number): string {
  if (budget <= 0) {
    return ''
  }
  if (text.length <= budget) {
    return text
  }
  const cut = text.slice(text.length - budget)
  return /\s/.test(text[text.length - budget - 1] ?? '') ? cut : dropPartialFirstWord(cut)
}

/** The start of `text` within `budget` characters, ending at a word boundary when it was cut. */
export function cutAfter(text: string, budget: number): string {
  if (budget <= 0) {
    return ''
  }
  if (text.length <= budget) {
    return text
  }
  const cut = text.slice(0, budget)
  return /\s/.test(text[budget] ?? '') ? cut : dropPartialLastWord(cut)
}

/**
 * Where the text before `pos` worth serializing starts: the start of the top-level block
 * holding `pos`, or of an earlier one, so that at least `budget` characters of text are in
 * between (Markdown is never shorter than the text it writes).
 */
function windowStart(doc: ProseMirrorNode, pos: number, budget: number): number {
  const $pos = doc.resolve(pos)
  let index = $pos.index(0)
  let start = $pos.depth > 0 ? $pos.before(1) : pos
  let length = doc.textBetween(start, pos, '\n\n').length
  while (length < budget && index > 0) {
    index -= 1
    const block = doc.child(index)
    start -= block.nodeSize
    length += block.textContent.length + 2
  }
  return start
}

/** Where the text after `pos` worth serializing ends (see windowStart). */
function windowEnd(doc: ProseMirrorNode, pos: number, budget: number): number {
  const $pos = doc.resolve(pos)
  let index = $pos.indexAfter(0)
  let end = $pos.depth > 0 ? $pos.after(1) : pos
  let length = doc.textBetween(pos, end, '\n\n').length
  while (length < budget && index < doc.childCount) {
    const block = doc.child(index)
    end += block.nodeSize
    length += block.textContent.length + 2
    index += 1
  }
  return end
}

/**
 * The context of an action on `from`..`to` (the selection, or the cursor when empty): the
 * selection, the text before and the text after it, as Markdown, within the budgets.
 * Empty parts are left out.
 */
export function captureContext(
  doc: ProseMirrorNode,
  from: number,
  to: number,
  budgets: ContextBudgets,
  serialize: FragmentSerializer,
): DocumentContext {
  const context: DocumentContext = { format: 'markdown' }
  if (from < to) {
    context.selection = serialize(blockContent(doc, from, to))
  }
  if (budgets.before > 0) {
    const before = cutBefore(serialize(blockContent(doc, windowStart(doc, from, budgets.before), from)), budgets.before)
    if (before) {
      context.before = before
    }
  }
  if (budgets.after > 0) {
    const after = cutAfter(serialize(blockContent(doc, to, windowEnd(doc, to, budgets.after))), budgets.after)
    if (after) {
      context.after = after
    }
  }
  return context
}
