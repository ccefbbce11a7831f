/**
 * What the streaming commands do, as plain functions over a transaction: start a stream,
 * write its chunks (rendering Markdown as it arrives), finish it, and settle a reviewed
 * response. The extension maps each command to one of these.
 */
import { Fragment, type Node as ProseMirrorNode, type NodeType, type Schema } from '@tiptap/pm/model'
import type { EditorState, Transaction } from '@tiptap/pm/state'

import { STREAMING_NODE_NAME } from './constants'
import { blockContent } from './document-context'
import { renderStreamTail } from './incremental-markdown'
import { streamTextToFragment } from './markdown'
import { NO_DECISIONS, type StreamManager, type StreamRecord, type StreamText } from './stream-manager'
import {
  findActiveStreamPosition,
  foldCommittedBlocks,
  findStreamNodePosition,
  inlineEdgeAt,
  insertStreamingNode,
  replaceStreamContent,
  settleStream,
  triggerChunkAnimation,
  writeText,
} from './stream-document'
import type { CollaborationBinding, StreamingOptions, StreamingStorage } from './streaming-options'
import { composeContent, decisionOf, diffContent } from './tracked-changes'
import type {
  ChangeDecision,
  InlineEdge,
  InsertAt,
  StreamAck,
  StreamConfig,
  StreamFormat,
  StreamingTransport,
  StreamTarget,
} from './types'

/** What every command function gets: the transaction, whether it runs for real, this editor's streams. */
export interface CommandContext {
  state: EditorState
  tr: Transaction
  dispatch: unknown
  storage: StreamingStorage
}

/** Where a stream with this config goes in `tr.doc`: a range it replaces (empty to insert). */
function insertRange(tr: Transaction, config: StreamConfig): { from: number; to: number } {
  const at = config.position ?? config.insertAt ?? 'end'
  if (typeof at === 'number') {
    return { from: at, to: at }
  }
  if (at === 'cursor') {
    return { from: tr.selection.head, to: tr.selection.head }
  }
  if (at === 'selection') {
    return { from: tr.selection.from, to: tr.selection.to }
  }
  return { from: tr.doc.content.size, to: tr.doc.content.size }
}

/** The content of a live node that shows nothing yet. */
function placeholder(schema: Schema, format: StreamFormat): Fragment {
  const paragraph = schema.nodes.paragraph
  return paragraph ? Fragment.from(paragraph.create(format === 'text' ? { streaming: true } : null)) : Fragment.empty
}

/** Plain-text stream content: one streaming paragraph per line, as it arrived. */
function liveTextFragment(text: string, schema: Schema): Fragment {
  const paragraph = schema.nodes.paragraph
  if (!paragraph || text === '') {
    return placeholder(schema, 'text')
  }
  return Fragment.fromArray(
    text.split('\n').map(line => paragraph.create({ streaming: true }, line ? schema.text(line) : null)),
  )
}

/** Content that fills a streaming node: what `text` shows in `format`, never empty. */
function filledContent(text: string, format: StreamFormat, schema: Schema, nodeType: NodeType): Fragment {
  const content = streamTextToFragment(text, format, schema, nodeType)
  return content.childCount > 0 ? content : placeholder(schema, format)
}

/** Renders what a Markdown stream received since its last commit into its node. */
function renderMarkdownTail(
  tr: Transaction,
  nodePos: number,
  nodeType: NodeType,
  buffer: StreamText,
): { from: number; to: number } | null {
  const fromChild = buffer.committedChildren
  const range = replaceStreamContent(tr, nodePos, fromChild, renderStreamTail(buffer, tr.doc.type.schema, nodeType))
  const steps = tr.steps.length
  buffer.committedChildren = foldCommittedBlocks(tr, nodePos, buffer.committedChildren)
  if (!range) {
    return null
  }
  const folding = tr.mapping.slice(steps)
  return { from: folding.map(range.from, 1), to: folding.map(range.to, -1) }
}

/** Shows `text` as the whole content of a stream's node, without animation. */
function renderWhole(tr: Transaction, nodePos: number, record: StreamRecord, buffer: StreamText, text: string): void {
  const node = tr.doc.nodeAt(nodePos)
  if (!node) {
    return
  }
  buffer.reset(text)
  if (record.format === 'text') {
    replaceStreamContent(tr, nodePos, 0, liveTextFragment(text, tr.doc.type.schema))
  } else if (!record.finished) {
    renderMarkdownTail(tr, nodePos, node.type, buffer)
  } else {
    replaceStreamContent(tr, nodePos, 0, filledContent(text, 'markdown', tr.doc.type.schema, node.type))
  }
}

/**
 * Whether an answer that goes into the text breaks the line where it meets the text: a
 * line break before its first word (it starts a block after the text before it) or, at a
 * textblock's start, after its last word (it ends a block before the text after it).
 */
function breaksLine(text: string, edge: InlineEdge): boolean {
  const head = text.slice(0, text.length - text.trimStart().length)
  const tail = text.slice(text.trimEnd().length)
  return edge === 'start' ? tail.includes('\n') : head.includes('\n')
}

/**
 * What a finished stream's text becomes in the document, and where it joins the text.
 * An answer of one paragraph to a stream that goes into the text (StreamConfig.inline)
 * joins the textblock it was begun in, with the spaces it starts and ends with (which
 * Markdown drops: "ld, again" completes a word, " and then" continues after one); any
 * other answer goes in as blocks (`inline` null).
 */
function settledAnswer(
  record: StreamRecord,
  text: string,
  schema: Schema,
  container: NodeType,
): { content: Fragment; inline: InlineEdge | null } {
  const content = streamTextToFragment(text, record.format, schema, container)
  const paragraph = content.childCount === 1 ? content.firstChild : null
  if (!record.inline || !paragraph || paragraph.type !== schema.nodes.paragraph || breaksLine(text, record.inline)) {
    return { content, inline: null }
  }
  const shown = paragraph.textContent
  const lead = /^[ \t]+/.exec(text)?.[0] ?? ''
  const trail = /[ \t]+$/.exec(text)?.[0] ?? ''
  let inner = paragraph.content
  if (lead && !shown.startsWith(lead)) inner = Fragment.from(schema.text(lead)).append(inner)
  if (trail && !shown.endsWith(trail)) inner = inner.append(Fragment.from(schema.text(trail)))
  return { content: Fragment.from(paragraph.copy(inner)), inline: record.inline }
}

/**
 * The editor's binding to its shared document (the `collaboration` option), made on first
 * use once the editor's Yjs binding exists; null for an editor that is not collaborative.
 */
export function collaborationOf(
  storage: StreamingStorage,
  options: StreamingOptions,
  state: EditorState,
): CollaborationBinding | null {
  storage.collaboration ??= options.collaboration?.bind(state) ?? null
  return storage.collaboration
}

/**
 * Where the server writes the answer of a stream that goes `at` this place, in a
 * collaborative editor; null when the editor writes it.
 */
export function targetOf(
  context: Pick<CommandContext, 'state' | 'tr' | 'storage'>,
  options: StreamingOptions,
  at: InsertAt,
): StreamTarget | null {
  return collaborationOf(context.storage, options, context.state)?.targetAt(context.tr, at) ?? null
}

/**
 * Registers a stream and puts its live node into `tr` where its config says; a stream
 * with a `target` gets no node (the server writes its answer into the shared document).
 */
export function beginStream(
  tr: Transaction,
  storage: StreamingStorage,
  options: StreamingOptions,
  config: StreamConfig,
  target: StreamTarget | null = null,
): StreamRecord | null {
  const defaults = { ...options, transport: storage.transport }
  if (target) {
    return storage.streamManager.create(config, defaults, { target })
  }
  const { from, to } = insertRange(tr, config)
  const original = from < to ? tr.doc.textBetween(from, to, '\n', '\n') : ''
  const originalContent = config.trackChanges && from < to ? blockContent(tr.doc, from, to) : null
  const inline = config.inline && from === to ? inlineEdgeAt(tr.doc, from) : null
  const record = storage.streamManager.create(config, defaults, { original, originalContent, inline })
  const inserted = insertStreamingNode(tr, from, to, {
    streamId: record.id,
    animationType: record.animationType,
    streaming: record.format === 'text',
  })
  if (inserted === null) {
    storage.streamManager.finish(record.id)
    return null
  }
  tr.setMeta('addToHistory', false)
  return record
}

/** Appends chunks to a live stream: rendered Markdown, or plain lines; each chunk animated. */
export function appendToStream(context: CommandContext, record: StreamRecord | undefined, chunks: string[]): boolean {
  const { state, tr, dispatch, storage } = context
  if (!record || record.finished) {
    return false
  }
  if (record.target) {
    // The server writes it into the shared document: the stream only keeps its text.
    if (dispatch) {
      storage.streamManager.text(record.id).text += chunks.join('')
    }
    return true
  }
  const nodePos = findStreamNodePosition(state, tr, record.id)
  const node = nodePos === null ? null : tr.doc.nodeAt(nodePos)
  if (nodePos === null || !node) {
    return false
  }
  if (!dispatch) {
    return true
  }
  const buffer = storage.streamManager.text(record.id)
  let chunkCount = Number(node.attrs.chunkCount) || 0
  const animate = (from: number, to: number): void => {
    triggerChunkAnimation(tr, { streamId: record.id, from, to, animationType: record.animationType, index: chunkCount })
  }
  if (record.format === 'markdown') {
    buffer.text += chunks.join('')
    chunkCount += chunks.length
    const range = renderMarkdownTail(tr, nodePos, node.type, buffer)
    if (range) {
      animate(range.from, range.to)
    }
  } else {
    const paragraph = state.schema.nodes.paragraph
    let cursor = paragraph ? findActiveStreamPosition(state, tr, record.id, paragraph) : null
    for (const chunk of chunks) {
      if (cursor === null) {
        break
      }
      buffer.text += chunk
      chunkCount += 1
      const from = cursor
      cursor = writeText(tr, cursor, chunk)
      animate(from, cursor)
    }
  }
  tr.setNodeAttribute(nodePos, 'chunkCount', chunkCount)
  tr.setMeta('addToHistory', false)
  return true
}

/**
 * Writes text at an explicit position. Inside a live streaming node the text is one more
 * chunk of that stream (its node shows the rendering of the stream's text, whose positions
 * are not the text's own); elsewhere it is an ordinary edit.
 */
export function writeAt(context: CommandContext, chunk: string, position: number): boolean {
  const { tr, dispatch, storage } = context
  if (position < 0 || position > tr.doc.content.size) {
    return false
  }
  const $pos = tr.doc.resolve(position)
  for (let depth = $pos.depth; depth > 0; depth -= 1) {
    const node = $pos.node(depth)
    const record = storage.streamManager.get(node.attrs.streamId as string | null)
    if (node.type.name === STREAMING_NODE_NAME && node.attrs.isActive === true && record && !record.finished) {
      return appendToStream(context, record, [chunk])
    }
  }
  if (!$pos.parent.inlineContent) {
    return false
  }
  if (dispatch) {
    writeText(tr, position, chunk)
  }
  return true
}

/**
 * Finishes a stream. Its node shows exactly what a one-shot conversion of the whole text
 * gives; then, with review, the response waits for a decision in its live node; without,
 * it settles as an inactive streaming node in one undo step.
 */
export function finishIn(context: CommandContext, record: StreamRecord | undefined): boolean {
  const { state, tr, dispatch, storage } = context
  if (!record || record.finished) {
    return false
  }
  if (record.target) {
    return finishTargetIn(context, record)
  }
  const nodePos = findStreamNodePosition(state, tr, record.id)
  const live = nodePos === null ? null : tr.doc.nodeAt(nodePos)
  if (nodePos === null || !live) {
    return false
  }
  if (!dispatch) {
    return true
  }
  const manager = storage.streamManager
  const buffer = manager.text(record.id)
  const text = buffer.text
  if (!record.review) {
    const { content, inline } = settledAnswer(record, text, state.schema, live.type)
    if (inline) {
      settleStream(tr, record.id, 'content', content, {}, inline)
    } else {
      settleStream(tr, record.id, 'node', content, { ...live.attrs, isActive: false })
    }
    manager.finish(record.id)
    return true
  }
  const responses = text ? [...record.responses, text] : record.responses
  const shown = responses.at(-1)
  if (shown === undefined) {
    settleStream(tr, record.id, 'none', Fragment.empty)
    manager.finish(record.id, { decision: 'rejected' })
    return true
  }
  buffer.reset(shown)
  replaceStreamContent(tr, nodePos, 0, filledContent(shown, record.format, state.schema, live.type))
  tr.setMeta('addToHistory', false)
  manager.finish(record.id, { decision: 'pending', responses, responseIndex: responses.length - 1 })
  return true
}

/**
 * Finishes a stream whose answer the server wrote into the shared document: it stays
 * there; with review, it waits for a decision (an answer of no text is rejected at once).
 */
function finishTargetIn(context: CommandContext, record: StreamRecord): boolean {
  const { dispatch, storage } = context
  if (!dispatch) {
    return true
  }
  const manager = storage.streamManager
  const text = manager.text(record.id).text
  if (!record.review) {
    manager.finish(record.id)
    return true
  }
  if (!text) {
    forgetAnswer(storage, record)
    manager.finish(record.id, { decision: 'rejected' })
    return true
  }
  const responses = [...record.responses, text]
  manager.finish(record.id, { decision: 'pending', responses, responseIndex: responses.length - 1 })
  return true
}

/** Stops recording what the AI peer writes for a stream's session. */
function forgetAnswer(storage: StreamingStorage, record: StreamRecord): void {
  if (record.sessionId) {
    storage.collaboration?.forget(record.sessionId)
  }
}

/**
 * Deletes what the AI peer wrote for a stream's session from the shared document, for
 * everyone. That is a Yjs change, which the sync plugin renders in a transaction of its
 * own, so `tr` must not be dispatched after it (as Tiptap's Collaboration `undo` does).
 */
function rejectWritten(tr: Transaction, storage: StreamingStorage, record: StreamRecord): void {
  tr.setMeta('preventDispatch', true)
  if (record.sessionId) {
    storage.collaboration?.reject(record.sessionId)
  }
}

/** Keeps or rejects a reviewed answer the server wrote into the shared document. */
function decideTargetIn(context: CommandContext, record: StreamRecord, accept: boolean): boolean {
  const { tr, dispatch, storage } = context
  if (dispatch) {
    if (accept) {
      forgetAnswer(storage, record)
    } else {
      rejectWritten(tr, storage, record)
    }
    storage.streamManager.update(record.id, { decision: accept ? 'accepted' : 'rejected' })
  }
  return true
}

/** The stream a review command acts on: the given one, or the latest waiting for a decision. */
function reviewed(manager: StreamManager, streamId: string | undefined): StreamRecord | undefined {
  const record = streamId ? manager.get(streamId) : manager.pendingReview()
  return record?.decision === 'pending' ? record : undefined
}

/** A reviewed stream and its live node in the document `tr` builds. */
export function reviewedNode(
  context: CommandContext,
  streamId: string | undefined,
): { record: StreamRecord; nodePos: number; live: ProseMirrorNode } | null {
  const record = reviewed(context.storage.streamManager, streamId)
  const nodePos = record ? findStreamNodePosition(context.state, context.tr, record.id) : null
  const live = nodePos === null ? null : context.tr.doc.nodeAt(nodePos)
  return record && nodePos !== null && live ? { record, nodePos, live } : null
}

/**
 * Settles a reviewed response as the writer decided, in one undo step: its content (every
 * change accepted), nothing (every change rejected: the original is back), or, when they
 * decided tracked changes one by one, the response with the original text of every
 * rejected change put back. `undecided` is the decision on the changes still pending.
 */
export function settleReview(
  context: CommandContext,
  record: StreamRecord,
  live: ProseMirrorNode,
  undecided: ChangeDecision,
): void {
  const { state, tr, storage } = context
  const { originalContent, changeDecisions } = record
  const changes = originalContent && changeDecisions.size > 0 ? diffContent(originalContent, live.content) : []
  const outcomes = new Set(changes.map((_change, index) => decisionOf(changeDecisions, index, undecided)))
  const outcome = outcomes.size > 1 ? null : (outcomes.values().next().value ?? undecided)
  if (outcome === 'rejected') {
    settleStream(tr, record.id, 'none', Fragment.empty)
  } else if (outcome === 'accepted' || !originalContent) {
    const text = storage.streamManager.text(record.id).text
    const { content, inline } = settledAnswer(record, text, state.schema, live.type)
    settleStream(tr, record.id, 'content', content, {}, inline)
  } else {
    const content = composeContent(originalContent, live.content, changes, changeDecisions, undecided, live.type)
    settleStream(tr, record.id, 'content', content)
  }
  storage.streamManager.update(record.id, { decision: outcome === 'rejected' ? 'rejected' : 'accepted' })
}

/** Accepts or rejects a reviewed response, or its tracked changes still pending (see acceptStream and rejectStream). */
export function decideIn(context: CommandContext, streamId: string | undefined, accept: boolean): boolean {
  const record = reviewed(context.storage.streamManager, streamId)
  if (record?.target) {
    return decideTargetIn(context, record, accept)
  }
  const found = reviewedNode(context, streamId)
  if (!found) {
    return false
  }
  if (context.dispatch) {
    settleReview(context, found.record, found.live, accept ? 'accepted' : 'rejected')
  }
  return true
}

/**
 * Empties a reviewed response's node and streams a new response into it, asked for by
 * `send` through the stream's transport (a regenerate or a follow-up); false, with nothing
 * emptied, when `send` cannot send that for this stream.
 */
export function restartIn(
  context: CommandContext,
  streamId: string | undefined,
  send: (transport: StreamingTransport, record: StreamRecord) => (() => Promise<void>) | undefined,
): boolean {
  const { state, tr, dispatch, storage } = context
  const record = reviewed(storage.streamManager, streamId)
  if (record?.target) {
    return restartTargetIn(context, record, send)
  }
  const found = reviewedNode(context, streamId)
  const request = found?.record.transport ? send(found.record.transport, found.record) : undefined
  if (!found || !request) {
    return false
  }
  if (dispatch) {
    const { record, nodePos } = found
    replaceStreamContent(tr, nodePos, 0, placeholder(state.schema, record.format))
    tr.setNodeAttribute(nodePos, 'chunkCount', 0)
    tr.setMeta('addToHistory', false)
    storage.streamManager.restart(record.id, { responseIndex: record.responses.length })
    void request()
  }
  return true
}

/**
 * Deletes a reviewed answer the server wrote into the shared document (for everyone) and
 * asks, with `send`, for a new one, which the server writes in its place.
 */
function restartTargetIn(
  context: CommandContext,
  record: StreamRecord,
  send: (transport: StreamingTransport, record: StreamRecord) => (() => Promise<void>) | undefined,
): boolean {
  const { tr, dispatch, storage } = context
  const request = record.transport ? send(record.transport, record) : undefined
  if (!request) {
    return false
  }
  if (dispatch) {
    rejectWritten(tr, storage, record)
    storage.streamManager.restart(record.id, { responseIndex: record.responses.length })
    void request()
  }
  return true
}

/** Empties a reviewed response's node and streams a new response into it (see regenerateStream). */
export function regenerateIn(context: CommandContext, streamId: string | undefined): boolean {
  return restartIn(context, streamId, (transport, record) => {
    const regenerate = transport.regenerate?.bind(transport)
    return regenerate && (() => regenerate(record.id))
  })
}

/** Shows another finished response of a reviewed stream (see showStreamResponse). */
export function showResponseIn(context: CommandContext, index: number, streamId: string | undefined): boolean {
  const { state, tr, dispatch, storage } = context
  const record = reviewed(storage.streamManager, streamId)
  const text = record?.responses[index]
  const nodePos = record ? findStreamNodePosition(state, tr, record.id) : null
  if (!record || text === undefined || nodePos === null) {
    return false
  }
  if (dispatch) {
    renderWhole(tr, nodePos, record, storage.streamManager.text(record.id), text)
    tr.setMeta('addToHistory', false)
    storage.streamManager.update(record.id, { responseIndex: index, changeDecisions: NO_DECISIONS })
  }
  return true
}

/** Rebuilds a live stream from `text` (see resetStream). */
export function resetIn(context: CommandContext, record: StreamRecord | undefined, text: string): boolean {
  const { state, tr, dispatch, storage } = context
  if (record?.target && !record.finished) {
    if (dispatch) {
      storage.streamManager.text(record.id).reset(text)
    }
    return true
  }
  const nodePos = record && !record.finished ? findStreamNodePosition(state, tr, record.id) : null
  if (!record || nodePos === null) {
    return false
  }
  if (dispatch) {
    renderWhole(tr, nodePos, record, storage.streamManager.text(record.id), text)
    tr.setNodeAttribute(nodePos, 'chunkCount', 0)
    tr.setMeta('addToHistory', false)
  }
  return true
}

/** Sends a command to the server and keeps the stream's status in line with the answer. */
export function sendToServer(
  manager: StreamManager,
  record: StreamRecord,
  send: () => Promise<StreamAck>,
  revertTo: StreamRecord['status'],
): void {
  const revert = (error: string): void => {
    if (manager.get(record.id)?.finished === false) {
      manager.update(record.id, { status: revertTo, error })
    }
  }
  send().then(
    ack => {
      if (!ack.ok) {
        revert(ack.error ?? 'The server refused the command.')
      }
    },
    (error: unknown) => revert(error instanceof Error ? error.message : String(error)),
  )
}
