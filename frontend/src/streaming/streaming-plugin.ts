/**
 * The ProseMirror side of streaming: where each live streaming node is (mapped through
 * every transaction, so writes land at the stream's end whatever the user edits), the
 * chunk-animation decorations (view-only, never in the document), and the removal of a
 * finished stream's live node outside the undo history.
 */
import { closeHistory } from '@tiptap/pm/history'
import type { Node as ProseMirrorNode, NodeType } from '@tiptap/pm/model'
import { type EditorState, Plugin, PluginKey, type Transaction } from '@tiptap/pm/state'
import { Decoration, DecorationSet } from '@tiptap/pm/view'

import type { AnimationType } from './types'

/** The name of the streaming node type in the schema. */
export const STREAMING_NODE_NAME = 'streamingNode'

/** How long a chunk keeps its animation decoration, in milliseconds. */
export const CHUNK_ANIMATION_MS = 1200

export interface StreamingPluginState {
  /** Live (active) streaming node positions by streamId. */
  positions: ReadonlyMap<string, number>
  /** Streams whose live node is removed by the next appended transaction. */
  finishing: ReadonlySet<string>
  /** Chunk animation decorations. */
  decorations: DecorationSet
}

/** Positions in actions are given in the document after `step` steps of the transaction. */
type StreamingAction =
  | { type: 'track'; streamId: string; pos: number; step: number }
  | { type: 'finish'; streamId: string }
  | { type: 'untrack'; streamIds: string[] }
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

export const streamingPluginKey = new PluginKey<StreamingPluginState>('streaming')

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
 * Where the next chunk of a stream goes: the end of the last textblock of its live node
 * (appending an empty block of `blockType` first if the node does not end in a textblock).
 * Returns null when the stream has no live node.
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
 * Inserts a live streaming node (holding one empty streaming paragraph) at `position`, or
 * the nearest place around it where a block fits, and tracks it. Returns its position.
 */
export function insertStreamingNode(
  tr: Transaction,
  position: number,
  attrs: { streamId: string; animationType: AnimationType },
): number | null {
  const { schema } = tr.doc.type
  const nodeType = schema.nodes[STREAMING_NODE_NAME]
  const paragraph = schema.nodes.paragraph
  if (!nodeType || !paragraph) {
    return null
  }
  const node = nodeType.create(
    { streamId: attrs.streamId, isActive: true, chunkCount: 0, animationType: attrs.animationType },
    paragraph.create({ streaming: true }),
  )
  const pos = Math.min(Math.max(position, 0), tr.doc.content.size)
  tr.replaceRangeWith(pos, pos, node)
  const inserted = searchLiveNode(tr.doc, attrs.streamId)
  if (inserted === null) {
    return null
  }
  addAction(tr, { type: 'track', streamId: attrs.streamId, pos: inserted, step: tr.steps.length })
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

/** Animates the range a chunk was written to (a decoration: the document is untouched). */
export function triggerChunkAnimation(
  tr: Transaction,
  chunk: { streamId: string; from: number; to: number; animationType: AnimationType; index: number },
): void {
  if (chunk.to > chunk.from) {
    addAction(tr, { type: 'chunk', step: tr.steps.length, ...chunk })
  }
}

/** Asks the plugin to remove the stream's live node, outside the undo history. */
export function markStreamFinishing(tr: Transaction, streamId: string): void {
  addAction(tr, { type: 'finish', streamId })
}

/** The stream's raw text: its blocks' text joined by newlines, as it arrived. */
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
      style: `--streaming-chunk-index: ${action.index % 8}`,
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
  const finishing = new Set([...value.finishing].filter(streamId => positions.has(streamId)))
  let decorations = value.decorations.map(tr.mapping, tr.doc)
  const added: Decoration[] = []

  for (const action of actions) {
    if (action.type === 'track') {
      const found = locateLiveNode(tr.doc, action.streamId, tr.mapping.slice(action.step).map(action.pos, 1))
      if (found !== null) {
        positions.set(action.streamId, found)
      }
    } else if (action.type === 'finish') {
      if (positions.has(action.streamId)) {
        finishing.add(action.streamId)
      }
    } else if (action.type === 'untrack') {
      for (const streamId of action.streamIds) {
        positions.delete(streamId)
        finishing.delete(streamId)
      }
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
  return { positions, finishing, decorations }
}

/** The plugin that tracks live streams and draws chunk animations. */
export function createStreamingPlugin(): Plugin<StreamingPluginState> {
  return new Plugin<StreamingPluginState>({
    key: streamingPluginKey,
    state: {
      init: () => ({ positions: new Map(), finishing: new Set(), decorations: DecorationSet.empty }),
      apply: (tr, value) => applyActions(tr, value),
    },
    props: {
      decorations: state => streamingPluginKey.getState(state)?.decorations,
    },
    appendTransaction: (_transactions, _oldState, newState) => {
      const pluginState = streamingPluginKey.getState(newState)
      if (!pluginState || pluginState.finishing.size === 0) {
        return null
      }
      const tr = newState.tr
      const removed = [...pluginState.finishing]
      const ranges = removed
        .map(streamId => pluginState.positions.get(streamId))
        .filter((pos): pos is number => pos !== undefined)
        .sort((a, b) => b - a)
      for (const pos of ranges) {
        const node = tr.doc.nodeAt(pos)
        if (node) {
          tr.delete(pos, pos + node.nodeSize)
        }
      }
      addAction(tr, { type: 'untrack', streamIds: removed })
      tr.setMeta('addToHistory', false)
      return closeHistory(tr)
    },
  })
}
