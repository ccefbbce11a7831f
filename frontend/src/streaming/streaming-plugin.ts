/**
 * The ProseMirror side of streaming: where each live streaming node is (mapped through
 * every transaction, so writes land at the stream's end whatever the user edits), the step
 * that takes each live stream back out of the document, the chunk-animation decorations
 * (view-only, never in the document), and the settling of a finished stream.
 *
 * Everything a stream does while it is live stays outside the undo history. Settling a
 * stream takes two appended transactions: the first reverts the stream (the document is
 * exactly as before it, outside the history), the second inserts what stays (history: one
 * undo step). A rejected stream only takes the first.
 */
import { closeHistory } from '@tiptap/pm/history'
import { type Fragment, type Node as ProseMirrorNode, NodeRange, type NodeType, Slice } from '@tiptap/pm/model'
import { type EditorState, Plugin, PluginKey, type Transaction } from '@tiptap/pm/state'
import { ReplaceStep, type Step } from '@tiptap/pm/transform'
import { Decoration, DecorationSet } from '@tiptap/pm/view'

import {
  CHUNK_ANIMATION_MS,
  SECTION_SIZE,
  STREAMING_NODE_NAME,
  STREAMING_SECTION_NAME,
  streamingPluginKey,
} from './constants'
import type { AnimationType } from './types'

/** How a finished stream leaves the document (see the plugin's settle action). */
export type SettleMode = 'node' | 'content' | 'none'

/** A stream on its way out: the document is restored, then its content goes in as one undo step. */
export interface Settlement {
  stage: 'revert' | 'insert'
  mode: SettleMode
  content: Fragment
  attrs: Record<string, unknown>
  /** Where the replaced range is once the stream is reverted. */
  from: number
  to: number
}

export interface StreamingPluginState {
  /** Live (active) streaming node positions by streamId. */
  positions: ReadonlyMap<string, number>
  /**
   * The steps that undo each live stream's insertion (and what other plugins appended to
   * it, such as a trailing paragraph), in the order they apply, mapped through every change since.
   */
  reverts: ReadonlyMap<string, readonly Step[]>
  /** Streams being settled by the transactions appended to the current one. */
  settling: ReadonlyMap<string, Settlement>
  /** Chunk animation decorations. */
  decorations: DecorationSet
}

/** Positions in actions are given in the document after `step` steps of the transaction. */
type StreamingAction =
  | { type: 'track'; streamId: string; pos: number; step: number; revert: Step | null }
  | { type: 'settle'; streamId: string; mode: SettleMode; content: Fragment; attrs: Record<string, unknown> }
  | { type: 'reverted'; streamId: string; from: number; to: number; step: number }
  | { type: 'inserted'; streamIds: string[] }
  | {
      type: 'chunk'
      streamId: string
      from: number
      to: number
      step: number
      animationType: AnimationType
      index: number
    }

interface ChunkDecorationSpec {
  streamId: string
  createdAt: number
}

const settlePluginKey = new PluginKey('streamingSettle')

function addAction(tr: Transaction, action: StreamingAction): void {
  const actions = (tr.getMeta(streamingPluginKey) as StreamingAction[] | undefined) ?? []
  tr.setMeta(streamingPluginKey, [...actions, action])
}

function isLiveNode(node: ProseMirrorNode | null | undefined, streamId: string): node is ProseMirrorNode {
  return (
    node?.type.name === STREAMING_NODE_NAME && node.attrs.streamId === streamId && node.attrs.isActive === true
  )
}

function searchLiveNode(doc: ProseMirrorNode, streamId: string): number | null {
  let found: number | null = null
  doc.descendants((node, pos) => {
    if (found !== null) {
      return false
    }
    if (isLiveNode(node, streamId)) {
      found = pos
      return false
    }
    return true
  })
  return found
}

/** The position of a stream's live node in `doc`, checking the hint first. */
function locateLiveNode(doc: ProseMirrorNode, streamId: string, hint: number | undefined): number | null {
  if (hint !== undefined && hint >= 0 && hint < doc.content.size && isLiveNode(doc.nodeAt(hint), streamId)) {
    return hint
  }
  return searchLiveNode(doc, streamId)
}

/**
 * The position of a stream's live streaming node in the document `tr` is building.
 * `state` is the state `tr` started from (its plugin state holds the tracked positions).
 */
export function findStreamNodePosition(state: EditorState, tr: Transaction, streamId: string): number | null {
  const pluginState = streamingPluginKey.getState(state)
  const tracked = pluginState?.positions.get(streamId)
  if (tracked === undefined) {
    const pending = (tr.getMeta(streamingPluginKey) as StreamingAction[] | undefined)?.some(
      action => action.type === 'track' && action.streamId === streamId,
    )
    return pending ? searchLiveNode(tr.doc, streamId) : null
  }
  return locateLiveNode(tr.doc, streamId, tr.mapping.map(tracked, 1))
}

/**
 * Where the next chunk of a plain-text stream goes: the end of the last textblock of its
 * live node (appending an empty block of `blockType` first if the node does not end in a
 * textblock). Returns null when the stream has no live node.
 */
export function findActiveStreamPosition(
  state: EditorState,
  tr: Transaction,
  streamId: string,
  blockType: NodeType,
): number | null {
  const nodePos = findStreamNodePosition(state, tr, streamId)
  if (nodePos === null) {
    return null
  }
  const node = tr.doc.nodeAt(nodePos)
  if (!node) {
    return null
  }
  const contentEnd = nodePos + node.nodeSize - 1
  if (!node.lastChild?.isTextblock) {
    tr.insert(contentEnd, blockType.create({ streaming: true }))
    return contentEnd + 1
  }
  return contentEnd - 1
}

/**
 * Puts a live streaming node (holding one empty paragraph) in place of `from`..`to`, or
 * the nearest place around it where a block fits, and tracks it together with the step
 * that undoes the insertion. Returns its position.
 */
export function insertStreamingNode(
  tr: Transaction,
  from: number,
  to: number,
  attrs: { streamId: string; animationType: AnimationType; streaming: boolean },
): number | null {
  const { schema } = tr.doc.type
  const nodeType = schema.nodes[STREAMING_NODE_NAME]
  const paragraph = schema.nodes.paragraph
  if (!nodeType || !paragraph) {
    return null
  }
  const node = nodeType.create(
    { streamId: attrs.streamId, isActive: true, chunkCount: 0, animationType: attrs.animationType },
    paragraph.create(attrs.streaming ? { streaming: true } : null),
  )
  const size = tr.doc.content.size
  const start = Math.min(Math.max(from, 0), size)
  const end = Math.min(Math.max(to, start), size)
  const stepsBefore = tr.steps.length
  tr.replaceRangeWith(start, end, node)
  const inserted = searchLiveNode(tr.doc, attrs.streamId)
  if (inserted === null) {
    return null
  }
  const insertion = tr.steps.length === stepsBefore + 1 ? tr.steps[stepsBefore] : undefined
  const before = tr.docs[stepsBefore]
  const revert = insertion && before ? insertion.invert(before) : null
  addAction(tr, { type: 'track', streamId: attrs.streamId, pos: inserted, step: tr.steps.length, revert })
  return inserted
}

/**
 * Writes text at `pos` (inside a textblock) without touching the selection or stored
 * marks; each newline starts a new block of the same type. Returns the position after it.
 */
export function writeText(tr: Transaction, pos: number, text: string): number {
  const { schema } = tr.doc.type
  let cursor = pos
  text.split('\n').forEach((line, index) => {
    if (index > 0) {
      tr.split(cursor)
      cursor += 2
    }
    if (line) {
      tr.insert(cursor, schema.text(line))
      cursor += line.length
    }
  })
  return cursor
}

/**
 * Replaces the children of the streaming node at `nodePos` from child `fromChild` on with
 * `content`, touching only the part that differs (so the text already shown, and its
 * animations, stay). Returns the changed range in the new document, or null if nothing changed.
 */
export function replaceStreamContent(
  tr: Transaction,
  nodePos: number,
  fromChild: number,
  content: Fragment,
): { from: number; to: number } | null {
  const node = tr.doc.nodeAt(nodePos)
  if (!node) {
    return null
  }
  let offset = 0
  for (let index = 0; index < fromChild && index < node.childCount; index += 1) {
    offset += node.child(index).nodeSize
  }
  const base = nodePos + 1 + offset
  const old = node.content.cut(offset)
  const start = old.findDiffStart(content)
  if (start === null) {
    return null
  }
  const ends = old.findDiffEnd(content) ?? { a: old.size, b: content.size }
  let endOld = ends.a
  let endNew = ends.b
  if (endOld < start && old.size < content.size) {
    endNew = start + (endNew - endOld)
    endOld = start
  } else if (endNew < start) {
    endOld = start + (endOld - endNew)
    endNew = start
  }
  const holder = node.type.create(null, content)
  tr.replace(base + start, base + endOld, holder.slice(start, endNew))
  const after = tr.doc.nodeAt(nodePos)
  if (!after || !after.content.cut(offset).eq(content)) {
    // The minimal replace did not fit the structure: replace the whole tail instead.
    const current = after ?? node
    tr.replaceWith(base, nodePos + current.nodeSize - 1, content)
    return { from: base, to: base + content.size }
  }
  return { from: base + start, to: base + endNew }
}

/**
 * Folds every run of `SECTION_SIZE` committed children of one level in a live node into a
 * section of the next level (blocks are level 0, a section of blocks level 1, and so on),
 * as often as that applies: the node keeps fewer than SECTION_SIZE children per level, so
 * the work ProseMirror and the browser do on its children for every chunk stays small
 * however long the answer grows. The blocks are wrapped, not replaced, so their animations
 * keep running. Returns how many children the committed ones are now.
 */
export function foldCommittedBlocks(tr: Transaction, nodePos: number, committed: number): number {
  const sectionType = tr.doc.type.schema.nodes[STREAMING_SECTION_NAME]
  if (!sectionType) {
    return committed
  }
  const levelOf = (child: ProseMirrorNode): number =>
    child.type === sectionType ? Number(child.attrs.level) || 1 : 0
  let count = committed
  for (;;) {
    const node = tr.doc.nodeAt(nodePos)
    if (!node || count < SECTION_SIZE) {
      return count
    }
    let runStart = 0
    let start = -1
    for (let index = 1; index < count && start < 0; index += 1) {
      if (levelOf(node.child(index)) !== levelOf(node.child(runStart))) {
        runStart = index
      } else if (index - runStart + 1 === SECTION_SIZE) {
        start = runStart
      }
    }
    if (start < 0) {
      return count
    }
    let from = nodePos + 1
    for (let index = 0; index < start; index += 1) {
      from += node.child(index).nodeSize
    }
    let to = from
    for (let index = start; index < start + SECTION_SIZE; index += 1) {
      to += node.child(index).nodeSize
    }
    const $from = tr.doc.resolve(from)
    tr.wrap(new NodeRange($from, tr.doc.resolve(to), $from.depth), [
      { type: sectionType, attrs: { level: levelOf(node.child(start)) + 1 } },
    ])
    count -= SECTION_SIZE - 1
  }
}

/** Animates the range a chunk was written to (a decoration: the document is untouched). */
export function triggerChunkAnimation(
  tr: Transaction,
  chunk: { streamId: string; from: number; to: number; animationType: AnimationType; index: number },
): void {
  if (chunk.to > chunk.from) {
    addAction(tr, { type: 'chunk', step: tr.steps.length, ...chunk })
  }
}

/**
 * Asks the plugin to take the stream's live node out of the document (restoring what it
 * replaced, outside the history) and then, as one undo step, to put in its place either
 * an inactive streaming node holding `content` (`node`), the plain `content` (`content`),
 * or nothing (`none`).
 */
export function settleStream(
  tr: Transaction,
  streamId: string,
  mode: SettleMode,
  content: Fragment,
  attrs: Record<string, unknown> = {},
): void {
  addAction(tr, { type: 'settle', streamId, mode: content.size === 0 ? 'none' : mode, content, attrs })
}

/** The stream's text as its node shows it: its blocks' text joined by newlines. */
export function streamNodeText(node: ProseMirrorNode): string {
  return node.textBetween(0, node.content.size, '\n', '\n')
}

function chunkDecoration(
  action: Extract<StreamingAction, { type: 'chunk' }>,
  from: number,
  to: number,
  createdAt: number,
): Decoration {
  const spec: ChunkDecorationSpec = { streamId: action.streamId, createdAt }
  return Decoration.inline(
    from,
    to,
    {
      class: `streaming-chunk streaming-chunk--${action.animationType}`,
      // An attribute, not an inline style: the browser parses no CSS per chunk.
      'data-chunk-index': String(action.index % 8),
    },
    spec,
  )
}

function applyActions(tr: Transaction, value: StreamingPluginState): StreamingPluginState {
  const actions = (tr.getMeta(streamingPluginKey) as StreamingAction[] | undefined) ?? []
  if (!tr.docChanged && actions.length === 0) {
    return value
  }

  const positions = new Map<string, number>()
  for (const [streamId, pos] of value.positions) {
    const mapped = tr.mapping.mapResult(pos, 1)
    const found = locateLiveNode(tr.doc, streamId, mapped.deleted ? undefined : mapped.pos)
    if (found !== null) {
      positions.set(streamId, found)
    }
  }
  const reverts = new Map<string, readonly Step[]>()
  for (const [streamId, steps] of value.reverts) {
    const mapped = tr.docChanged ? steps.map(step => step.map(tr.mapping)) : steps
    if (positions.has(streamId) && mapped.every(step => step !== null)) {
      reverts.set(streamId, mapped as Step[])
    }
  }
  // What another plugin appended to a stream's start (a trailing paragraph after it) is
  // taken back out with the stream.
  const root = tr.getMeta('appendedTransaction') as Transaction | undefined
  if (root && tr.docChanged && actions.length === 0) {
    for (const action of (root.getMeta(streamingPluginKey) as StreamingAction[] | undefined) ?? []) {
      if (action.type !== 'track') {
        continue
      }
      const steps = reverts.get(action.streamId)
      if (steps) {
        const inverses = tr.steps.map((step, index) => step.invert(tr.docs[index] ?? tr.doc)).reverse()
        reverts.set(action.streamId, [...inverses, ...steps])
      }
    }
  }
  const settling = new Map<string, Settlement>()
  for (const [streamId, settlement] of value.settling) {
    settling.set(streamId, {
      ...settlement,
      from: tr.mapping.map(settlement.from, -1),
      to: tr.mapping.map(settlement.to, 1),
    })
  }
  let decorations = value.decorations.map(tr.mapping, tr.doc)
  const added: Decoration[] = []

  for (const action of actions) {
    if (action.type === 'track') {
      const mapping = tr.mapping.slice(action.step)
      const found = locateLiveNode(tr.doc, action.streamId, mapping.map(action.pos, 1))
      if (found !== null) {
        positions.set(action.streamId, found)
        const revert = action.revert?.map(mapping)
        if (revert) {
          reverts.set(action.streamId, [revert])
        }
      }
    } else if (action.type === 'settle') {
      if (positions.has(action.streamId)) {
        const { mode, content, attrs } = action
        settling.set(action.streamId, { stage: 'revert', mode, content, attrs, from: 0, to: 0 })
      }
    } else if (action.type === 'reverted') {
      positions.delete(action.streamId)
      reverts.delete(action.streamId)
      const settlement = settling.get(action.streamId)
      if (settlement?.mode === 'none') {
        settling.delete(action.streamId)
      } else if (settlement) {
        const mapping = tr.mapping.slice(action.step)
        settling.set(action.streamId, {
          ...settlement,
          stage: 'insert',
          from: mapping.map(action.from, -1),
          to: mapping.map(action.to, 1),
        })
      }
    } else if (action.type === 'inserted') {
      action.streamIds.forEach(streamId => settling.delete(streamId))
    } else {
      const mapping = tr.mapping.slice(action.step)
      const from = mapping.map(action.from, 1)
      const to = mapping.map(action.to, -1)
      if (to > from) {
        added.push(chunkDecoration(action, from, to, tr.time))
      }
    }
  }

  const expired = decorations.find(undefined, undefined, spec => {
    const { createdAt } = spec as ChunkDecorationSpec
    return createdAt < tr.time - CHUNK_ANIMATION_MS
  })
  decorations = decorations.remove(expired).add(tr.doc, added)
  return { positions, reverts, settling, decorations }
}

function settlementsAt(state: EditorState, stage: Settlement['stage']): [string, Settlement][] {
  const settling = streamingPluginKey.getState(state)?.settling
  return settling ? [...settling].filter(([, settlement]) => settlement.stage === stage) : []
}

/** First appended transaction of a settle: the streams leave, the document is as before them. */
function revertStreams(state: EditorState): Transaction | null {
  const pluginState = streamingPluginKey.getState(state)
  const settling = settlementsAt(state, 'revert')
  if (!pluginState || settling.length === 0) {
    return null
  }
  const tr = state.tr
  const byPosition = settling.sort(
    ([a], [b]) => (pluginState.positions.get(b) ?? 0) - (pluginState.positions.get(a) ?? 0),
  )
  for (const [streamId] of byPosition) {
    const steps = pluginState.reverts.get(streamId) ?? []
    const insertion = steps.at(-1)
    let reverted = insertion instanceof ReplaceStep
    for (const step of steps) {
      const mapped = reverted ? step.map(tr.mapping) : null
      reverted = mapped !== null && !tr.maybeStep(mapped).failed
      if (reverted && step === insertion && mapped instanceof ReplaceStep) {
        addAction(tr, {
          type: 'reverted',
          streamId,
          from: mapped.from,
          to: mapped.from + mapped.slice.size,
          step: tr.steps.length,
        })
      }
    }
    if (reverted) {
      continue
    }
    // No exact way back (the user edited across the stream's edges): remove the node.
    const tracked = pluginState.positions.get(streamId)
    const pos = tracked === undefined ? null : locateLiveNode(tr.doc, streamId, tr.mapping.map(tracked, 1))
    const node = pos === null ? null : tr.doc.nodeAt(pos)
    if (pos !== null && node) {
      tr.delete(pos, pos + node.nodeSize)
    }
    const at = pos ?? tr.doc.content.size
    addAction(tr, { type: 'reverted', streamId, from: at, to: at, step: tr.steps.length })
  }
  tr.setMeta('addToHistory', false)
  return closeHistory(tr)
}

/** The content as a slice for `from`..`to`: paragraphs at its edges join the text around them. */
function contentSlice(tr: Transaction, from: number, to: number, content: Fragment): Slice {
  const $from = tr.doc.resolve(from)
  const $to = tr.doc.resolve(to)
  const first = content.firstChild
  const last = content.lastChild
  const openStart = $from.parent.inlineContent && first?.type === $from.parent.type ? 1 : 0
  const openEnd = $to.parent.inlineContent && last?.type === $to.parent.type ? 1 : 0
  return new Slice(content, openStart, openEnd)
}

/** Second appended transaction of a settle: what stays goes in, as one undo step. */
function insertSettled(state: EditorState): Transaction | null {
  const settling = settlementsAt(state, 'insert')
  const nodeType = state.schema.nodes[STREAMING_NODE_NAME]
  if (settling.length === 0 || !nodeType) {
    return null
  }
  const tr = state.tr
  for (const [, settlement] of settling.sort(([, a], [, b]) => b.from - a.from)) {
    const { from, to, content } = settlement
    if (settlement.mode === 'node') {
      tr.replaceRangeWith(from, to, nodeType.create(settlement.attrs, content))
    } else {
      tr.replaceRange(from, to, contentSlice(tr, from, to, content))
    }
  }
  addAction(tr, { type: 'inserted', streamIds: settling.map(([streamId]) => streamId) })
  return tr
}

/**
 * The plugins that track live streams, draw chunk animations and settle finished streams.
 * They are two because a plugin never sees the transaction it appended itself: the second
 * appends the insertion after the first appended the revert.
 */
export function createStreamingPlugins(): Plugin[] {
  const tracker = new Plugin<StreamingPluginState>({
    key: streamingPluginKey,
    state: {
      init: () => ({
        positions: new Map(),
        reverts: new Map(),
        settling: new Map(),
        decorations: DecorationSet.empty,
      }),
      apply: (tr, value) => applyActions(tr, value),
    },
    props: {
      decorations: state => streamingPluginKey.getState(state)?.decorations,
    },
    appendTransaction: (_transactions, _oldState, newState) => revertStreams(newState),
  })
  const settler = new Plugin({
    key: settlePluginKey,
    appendTransaction: (_transactions, _oldState, newState) => insertSettled(newState),
  })
  return [tracker, settler]
}
