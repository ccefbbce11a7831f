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
 *
 * The commands ask for all this through the actions of stream-document.ts, in a
 * transaction's meta; the state's and the actions' types are in plugin-types.ts.
 */
import { closeHistory } from '@tiptap/pm/history'
import { type Fragment, Slice } from '@tiptap/pm/model'
import { type EditorState, Plugin, PluginKey, type Transaction } from '@tiptap/pm/state'
import { ReplaceStep, type Step } from '@tiptap/pm/transform'
import { Decoration, DecorationSet } from '@tiptap/pm/view'

import { CHUNK_ANIMATION_MS, STREAMING_NODE_NAME, streamingPluginKey } from './constants'
import type { ChunkDecorationSpec, Settlement, StreamingAction, StreamingPluginState } from './plugin-types'
import { addAction, inlineJoinPosition, locateLiveNode } from './stream-document'

const settlePluginKey = new PluginKey('streamingSettle')

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
        const { mode, content, attrs, inline } = action
        settling.set(action.streamId, { stage: 'revert', mode, content, attrs, inline, from: 0, to: 0 })
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

function isOneTextblock(content: Fragment): boolean {
  return content.childCount === 1 && content.firstChild?.isTextblock === true
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
    const { from, to, content, inline } = settlement
    const joinAt = inline && from === to && isOneTextblock(content) ? inlineJoinPosition(tr.doc, from, inline) : null
    if (settlement.mode === 'node') {
      tr.replaceRangeWith(from, to, nodeType.create(settlement.attrs, content))
    } else if (joinAt !== null) {
      // One paragraph written at the cursor: its text goes into the textblock there.
      tr.replaceRange(joinAt, joinAt, new Slice(content, 1, 1))
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
