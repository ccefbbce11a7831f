/**
 * The fade-in of text an AI peer writes into a shared document, in every collaborator's
 * editor, with the chunk animation of streamed text (as Tiptap's AiInsertReveal does).
 * View only: the document is never changed.
 *
 * y-tiptap rebuilds the whole document for every remote update, so a decoration cannot
 * simply be mapped through it: each update's text is kept as a pair of Yjs relative
 * positions and turned into document positions again after every remote change.
 */
import { type EditorState, Plugin, PluginKey, type Transaction as EditorTransaction } from '@tiptap/pm/state'
import { Decoration, DecorationSet, type EditorView } from '@tiptap/pm/view'
import { relativePositionToAbsolutePosition, ySyncPluginKey } from '@tiptap/y-tiptap'
import {
  ContentType,
  createRelativePositionFromJSON,
  findIndexSS,
  isParentOf,
  Item,
  type RelativePosition,
  type Transaction,
  type XmlFragment,
} from 'yjs'

import type { SharedDocument } from './collab-document'
import { CHUNK_ANIMATION_MS } from './constants'
import type { AnimationType } from './types'

/** Text an AI peer wrote in one update, from its first inserted item to its last. */
export interface AiRevealRange {
  from: RelativePosition
  to: RelativePosition
}

/** A range the plugin fades in, and when it arrived. */
interface AiRevealRun extends AiRevealRange {
  createdAt: number
  /** Its number among the runs, for the staggered delay of the chunk animation. */
  index: number
}

/** What the plugin holds: the runs still fading in, and their decorations. */
export interface AiRevealState {
  runs: readonly AiRevealRun[]
  /** How many runs were revealed so far. */
  count: number
  decorations: DecorationSet
}

/** The key of the plugin that fades in the text an AI peer writes into a shared document. */
export const aiRevealPluginKey = new PluginKey<AiRevealState>('streamingAiReveal')

/**
 * An update from the AI peer that brings more top-level blocks than this is a document
 * sync (a collaborator joining late), not text being written: it is shown without fading.
 * Tiptap's AiInsertReveal draws the line at 2; ours may add a block and a trailing paragraph.
 */
export const MAX_REVEALED_BLOCKS = 3

/**
 * What `client` inserted into `fragment` in `transaction`, from its first inserted content
 * to its last (attributes left out: they have no place in the text; so is what it wrote
 * elsewhere in the document, such as the server's own bookkeeping), as relative positions;
 * null when it inserted no content there, or more top-level blocks than a stream writes at
 * once (a document sync).
 */
export function insertedRange(transaction: Transaction, client: number, fragment: XmlFragment): AiRevealRange | null {
  const start = transaction.beforeState.get(client) ?? 0
  const end = transaction.afterState.get(client) ?? 0
  const structs = transaction.doc.store.clients.get(client)
  if (end <= start || !structs) {
    return null
  }
  let blocks = 0
  let first: number | null = null
  let last: number | null = null
  for (let index = findIndexSS(structs, start); index < structs.length; index += 1) {
    const struct = structs[index]
    if (!struct || struct.id.clock >= end) {
      break
    }
    if (!(struct instanceof Item) || struct.parentSub !== null || !isParentOf(fragment, struct)) {
      continue
    }
    first ??= Math.max(struct.id.clock, start)
    last = Math.min(struct.id.clock + struct.length, end) - 1
    if (struct.parent === fragment && struct.content instanceof ContentType) {
      blocks += 1
    }
  }
  if (first === null || last === null || blocks > MAX_REVEALED_BLOCKS) {
    return null
  }
  return {
    from: createRelativePositionFromJSON({ item: { client, clock: first }, assoc: 0 }),
    to: createRelativePositionFromJSON({ item: { client, clock: last }, assoc: -1 }),
  }
}

/** What the plugin needs from the extension. */
export interface AiRevealHost {
  /** The editor's shared document (null: not collaborative, nothing to reveal). */
  shared: (state: EditorState) => SharedDocument | null
  animationType: () => AnimationType
}

const EMPTY: AiRevealState = { runs: [], count: 0, decorations: DecorationSet.empty }

/** The decorations of the runs, at the positions their text has in `state` now. */
function drawRuns(runs: readonly AiRevealRun[], state: EditorState, host: AiRevealHost): DecorationSet {
  const shared = host.shared(state)
  if (!shared || runs.length === 0) {
    return DecorationSet.empty
  }
  const { doc, type, binding } = shared.sync
  const animation = host.animationType()
  const found: Decoration[] = []
  for (const run of runs) {
    const a = relativePositionToAbsolutePosition(doc, type, run.from, binding.mapping)
    const b = relativePositionToAbsolutePosition(doc, type, run.to, binding.mapping)
    if (a === null || b === null) {
      continue
    }
    const from = Math.max(0, Math.min(a, b))
    const to = Math.min(state.doc.content.size, Math.max(a, b))
    if (to > from) {
      found.push(
        Decoration.inline(
          from,
          to,
          { class: `streaming-chunk streaming-chunk--${animation}`, 'data-chunk-index': String(run.index % 8) },
          { createdAt: run.createdAt },
        ),
      )
    }
  }
  return DecorationSet.create(state.doc, found)
}

function applyReveal(
  tr: EditorTransaction,
  value: AiRevealState,
  state: EditorState,
  host: AiRevealHost,
): AiRevealState {
  const added = tr.getMeta(aiRevealPluginKey) as AiRevealRange | undefined
  if (!added && !tr.docChanged) {
    return value
  }
  const live = value.runs.filter(run => run.createdAt >= tr.time - CHUNK_ANIMATION_MS)
  const runs = added ? [...live, { ...added, createdAt: tr.time, index: value.count }] : live
  const count = added ? value.count + 1 : value.count
  if (runs.length === 0) {
    return value.runs.length === 0 ? value : { ...EMPTY, count }
  }
  // A remote change rebuilt the document: the positions are found again. A local edit
  // moved the text, and mapping the decorations follows it.
  const remote = (tr.getMeta(ySyncPluginKey) as { isChangeOrigin?: boolean } | undefined)?.isChangeOrigin === true
  let decorations: DecorationSet
  if (added || remote) {
    decorations = drawRuns(runs, state, host)
  } else {
    const before = tr.time - CHUNK_ANIMATION_MS
    decorations = value.decorations.map(tr.mapping, tr.doc)
    decorations = decorations.remove(
      decorations.find(undefined, undefined, spec => (spec as { createdAt: number }).createdAt < before),
    )
  }
  return { runs, count, decorations }
}

/** Dispatches a reveal for every update of an AI peer to the editor's shared document. */
function watchAiWriting(view: EditorView, shared: SharedDocument): () => void {
  const { doc, type } = shared.sync
  const listener = (transaction: Transaction): void => {
    const writer = shared.peers.writerOf(transaction)
    const range = writer ? insertedRange(transaction, writer.client, type) : null
    if (range && !view.isDestroyed) {
      view.dispatch(view.state.tr.setMeta(aiRevealPluginKey, range))
    }
  }
  // After the sync plugin rendered the update (it observes the fragment), so the new text
  // is in the editor when its positions are looked up.
  doc.on('afterTransaction', listener)
  return () => doc.off('afterTransaction', listener)
}

/** The plugin that fades in what an AI peer writes into the editor's shared document. */
export function createAiRevealPlugin(host: AiRevealHost): Plugin<AiRevealState> {
  return new Plugin<AiRevealState>({
    key: aiRevealPluginKey,
    state: {
      init: () => EMPTY,
      apply: (tr, value, _oldState, newState) => applyReveal(tr, value, newState, host),
    },
    props: {
      decorations: state => aiRevealPluginKey.getState(state)?.decorations,
    },
    view: view => {
      const shared = host.shared(view.state)
      const stop = shared ? watchAiWriting(view, shared) : null
      return { destroy: () => stop?.() }
    },
  })
}
