/**
 * Where the server's AI peer puts an answer in a shared document: after a top-level block,
 * named by a Yjs relative position that keeps its meaning whatever the others type
 * meanwhile (research note §1.3). The client computes it, because only Yjs itself can make
 * a relative position into an XmlFragment; the server decodes it with pycrdt's StickyIndex.
 */
import type { Node as ProseMirrorNode } from '@tiptap/pm/model'
import { createRelativePositionFromTypeIndex, encodeRelativePosition, type XmlFragment } from 'yjs'

function toBase64(bytes: Uint8Array): string {
  let binary = ''
  for (const byte of bytes) {
    binary += String.fromCharCode(byte)
  }
  return btoa(binary)
}

/**
 * The anchor of an answer that goes after the top-level block holding `pos` (for a
 * position between two top-level blocks, after the one before it): base64 of
 * `Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(fragment, i + 1, -1))`,
 * i being that block's index. Associated to the left, it sticks to block i: blocks
 * inserted above it or text typed into it do not move it.
 */
export function anchorAfterBlock(fragment: XmlFragment, doc: ProseMirrorNode, pos: number): string {
  const $pos = doc.resolve(Math.min(Math.max(pos, 0), doc.content.size))
  const end = $pos.depth === 0 ? $pos.index(0) : $pos.index(0) + 1
  return toBase64(encodeRelativePosition(createRelativePositionFromTypeIndex(fragment, end, -1)))
}
