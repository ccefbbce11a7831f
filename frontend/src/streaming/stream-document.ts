/**
 * A stream's node in the document a transaction builds, for the streaming commands: where a
 * stream's live node is, inserting it, writing and replacing its content, folding its
 * committed blocks, and the actions (track, chunk animation, settle) that the streaming
 * plugin (streaming-plugin.ts) carries out when the transaction applies.
 */
import { type Fragment, type Node as ProseMirrorNode, NodeRange, type NodeType } from '@tiptap/pm/model'
import type { EditorState, Transaction } from '@tiptap/pm/state'

import { SECTION_SIZE, STREAMING_NODE_NAME, STREAMING_SECTION_NAME, streamingPluginKey } from './constants'
import type { SettleMode, StreamingAction } from './plugin-types'
import type { AnimationType, InlineEdge } from './types'

export function addAction(tr: Transaction, action: StreamingAction): void {
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
export function locateLiveNode(doc: ProseMirrorNode, streamId: string, hint: number | undefined): number | null {
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
 * or nothing (`none`). With `inline`, `content` of one textblock joins the textblock at
 * that edge of the restored range instead of going in as a block.
 */
export function settleStream(
  tr: Transaction,
  streamId: string,
  mode: SettleMode,
  content: Fragment,
  attrs: Record<string, unknown> = {},
  inline: InlineEdge | null = null,
): void {
  addAction(tr, { type: 'settle', streamId, mode: content.size === 0 ? 'none' : mode, content, attrs, inline })
}

/**
 * Where a stream that goes into the text at `pos` stands in its textblock (see
 * StreamConfig.inline): null when `pos` is not in a textblock with text.
 */
export function inlineEdgeAt(doc: ProseMirrorNode, pos: number): InlineEdge | null {
  const $pos = doc.resolve(pos)
  const { parent, parentOffset } = $pos
  // An empty textblock has no text to join: the answer fills it as blocks.
  if (!parent.inlineContent || parent.content.size === 0) {
    return null
  }
  if (parentOffset > 0 && parentOffset < parent.content.size) {
    return 'inside'
  }
  return parentOffset === 0 ? 'start' : 'end'
}

/**
 * The position in `doc` where content of one textblock settled at `pos` (the restored
 * range of a stream begun at `edge` of a textblock) joins the text: `pos` itself when it
 * is in a textblock; else the end of the textblock that ends right before it (`end`) or
 * the start of the one that starts right after it (`start`). Null when there is none.
 */
export function inlineJoinPosition(doc: ProseMirrorNode, pos: number, edge: InlineEdge): number | null {
  const $pos = doc.resolve(pos)
  if ($pos.parent.inlineContent) {
    return pos
  }
  if (edge === 'end') {
    let at = pos
    let node = $pos.nodeBefore
    while (node && !node.isTextblock && !node.isLeaf) {
      at -= 1
      node = node.lastChild
    }
    return node?.isTextblock ? at - 1 : null
  }
  if (edge === 'start') {
    let at = pos
    let node = $pos.nodeAfter
    while (node && !node.isTextblock && !node.isLeaf) {
      at += 1
      node = node.firstChild
    }
    return node?.isTextblock ? at + 1 : null
  }
  return null
}

/** The stream's text as its node shows it: its blocks' text joined by newlines. */
export function streamNodeText(node: ProseMirrorNode): string {
  return node.textBetween(0, node.content.size, '\n', '\n')
}
