/**
 * Markdown that is still arriving. marked's lexer splits the text not yet committed into
 * top-level blocks: every block before the last one is complete (nothing appended later
 * can change how it renders), the last one is open. The open block is written out as it
 * would read if the model stopped here, with its unfinished syntax closed (`**bo` becomes
 * `**bo**`) or held back (a lone `-` or `##` at the end of the text), so that rendering it
 * never shows Markdown syntax outside code. marked does all the parsing; this module only
 * closes what the text left open.
 */
import { Fragment, type NodeType, type Schema } from '@tiptap/pm/model'
import type { Token } from 'marked'

import { markdown, markdownToFragment } from './markdown'
import type { StreamText } from './stream-manager'

export interface OpenMarkdown {
  /** The raw text of the blocks that are now complete, from the start of the given text. */
  complete: string
  /** The open block(s) at the end, as they arrived. */
  open: string
  /** The open block(s) with their unfinished syntax closed or held back: render this. */
  closed: string
}

/** A last line that is still only block syntax: a list marker, a setext or fence start, a rule. */
const PENDING_BLOCK_LINE = /^ {0,3}(?:[-=*_+~`]+|\d{1,9}[.)]?)[ \t]*$/
/** The block syntax at the start of a line: quote markers, a heading's #s, a list marker. */
const BLOCK_PREFIX = /^ {0,3}(?:> ?)*(?:#{1,6}(?=[ \t]|$)|[-*+](?=[ \t])|\d{1,9}[.)](?=[ \t]))?[ \t]*(?:\[[ xX]\][ \t]+)?/
/** Where the last item of a list starts. */
const LIST_ITEM_START = /^[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)/gm
/** An unfinished link or image at the end: `[text`, `[text]`, `[text](http://ex`. */
const OPEN_LINK = /!?\[([^\][]*)(?:\](?:\([^()\s]*)?)?$/
const WORD_CHARACTER = /[\p{L}\p{N}]/u
const WHITESPACE = /\s/

/**
 * Splits `text` (the part of a stream not yet committed) into the complete blocks at its
 * start and the open block(s) at its end.
 */
export function splitOpenMarkdown(text: string): OpenMarkdown {
  const tokens = markdown.lexer(text)
  let last = tokens.length - 1
  while (last >= 0 && tokens[last]?.type === 'space') {
    last -= 1
  }
  const lastToken = tokens[last]
  if (!lastToken) {
    return { complete: '', open: text, closed: '' }
  }
  let completeLength = 0
  let total = 0
  tokens.forEach((token, index) => {
    if (index < last) {
      completeLength += token.raw.length
    }
    total += token.raw.length
  })
  // The lexer's raw texts add up to its input unless it rewrote it (carriage returns):
  // then nothing is taken as complete, and the whole text is rendered as open.
  if (total !== text.length) {
    completeLength = 0
  }
  const open = text.slice(completeLength)
  return { complete: text.slice(0, completeLength), open, closed: closeOpenBlock(open, lastToken) }
}

/** The open block(s) written so that they render with no unfinished Markdown syntax showing. */
export function closeOpenBlock(open: string, lastToken: Token): string {
  if (lastToken.type === 'code') {
    // An unclosed fence renders as code up to the end of the text, which is what it is.
    return open
  }
  let text = open.replace(/\s+$/, '')
  const lineStart = text.lastIndexOf('\n') + 1
  if (PENDING_BLOCK_LINE.test(text.slice(lineStart))) {
    text = text.slice(0, lineStart).replace(/\s+$/, '')
  }
  let segmentStart = 0
  if (lastToken.type === 'list') {
    for (const match of text.matchAll(LIST_ITEM_START)) {
      segmentStart = match.index
    }
  }
  const segment = text.slice(segmentStart)
  const prefix = BLOCK_PREFIX.exec(segment)?.[0] ?? ''
  return text.slice(0, segmentStart) + prefix + closeInline(segment.slice(prefix.length))
}

/** The end of the backtick run of `length` at or after `from`, or -1. */
function findBacktickRun(text: string, length: number, from: number): number {
  for (let index = from; index < text.length; ) {
    if (text[index] !== '`') {
      index += 1
      continue
    }
    let end = index
    while (text[end] === '`') {
      end += 1
    }
    if (end - index === length) {
      return index
    }
    index = end
  }
  return -1
}

/** Where an unclosed code span starts in `text` and its backtick run, if there is one. */
function findOpenCodeSpan(text: string): { start: number; run: string } | null {
  for (let index = 0; index < text.length; ) {
    const char = text[index]
    if (char === '\\') {
      index += 2
    } else if (char === '`') {
      let end = index
      while (text[end] === '`') {
        end += 1
      }
      const close = findBacktickRun(text, end - index, end)
      if (close < 0) {
        return { start: index, run: text.slice(index, end) }
      }
      index = close + (end - index)
    } else {
      index += 1
    }
  }
  return null
}

/**
 * The delimiter runs (`*`, `_`, `~~`) still open at the end of `text`, innermost last,
 * following CommonMark's flanking rules closely enough for model output.
 */
function openDelimiters(text: string): string[] {
  const stack: string[] = []
  for (let index = 0; index < text.length; ) {
    const char = text[index] ?? ''
    if (char === '\\') {
      index += 2
      continue
    }
    if (char === '`') {
      let end = index
      while (text[end] === '`') {
        end += 1
      }
      const close = findBacktickRun(text, end - index, end)
      index = close < 0 ? text.length : close + (end - index)
      continue
    }
    if (char !== '*' && char !== '_' && char !== '~') {
      index += 1
      continue
    }
    let end = index
    while (text[end] === char) {
      end += 1
    }
    const run = text.slice(index, end)
    const before = text[index - 1] ?? ' '
    const after = text[end] ?? ' '
    index = end
    if (char === '~' && run.length < 2) {
      continue
    }
    const intraword = char === '_'
    const canOpen = !WHITESPACE.test(after) && !(intraword && WORD_CHARACTER.test(before))
    const canClose = !WHITESPACE.test(before) && !(intraword && WORD_CHARACTER.test(after))
    const top = stack.at(-1)
    if (canClose && top !== undefined && top[0] === char) {
      stack.pop()
    } else if (canOpen) {
      stack.push(run)
    }
  }
  return stack
}

/** A dangling escape or delimiter run at the very end opens nothing yet: it is held back. */
function withoutDanglingDelimiters(text: string): string {
  return text.replace(/(?:\\|[*_~`]+)$/, '')
}

/** Inline Markdown with its unfinished constructs closed or held back. */
export function closeInline(text: string): string {
  let closed = withoutDanglingDelimiters(text)
  const code = findOpenCodeSpan(closed)
  if (code) {
    const delimiters = openDelimiters(closed.slice(0, code.start))
    return closed + code.run + delimiters.reverse().join('')
  }
  // An unfinished link shows its text, plain, until its target is complete.
  closed = withoutDanglingDelimiters(closed.replace(OPEN_LINK, '$1'))
  return closed + openDelimiters(closed).reverse().join('')
}

/**
 * Renders the part of a Markdown stream's text not committed yet, and commits what became
 * complete: returns the content that replaces the node's children from
 * `buffer.committedChildren` (as it was before the call) on. Blocks that became complete
 * are rendered for good, the open block at the end as far as it goes; never empty when
 * nothing is committed yet. The work depends on the open block only, not on the answer.
 */
export function renderStreamTail(buffer: StreamText, schema: Schema, container: NodeType): Fragment {
  const { complete, closed } = splitOpenMarkdown(buffer.text.slice(buffer.committedLength))
  const committed = complete ? markdownToFragment(complete, schema, container) : Fragment.empty
  let tail = committed.append(markdownToFragment(closed, schema, container))
  const paragraph = schema.nodes.paragraph
  if (buffer.committedChildren + tail.childCount === 0 && paragraph) {
    tail = Fragment.from(paragraph.create())
  }
  buffer.committedLength += complete.length
  buffer.committedChildren += committed.childCount
  return tail
}
