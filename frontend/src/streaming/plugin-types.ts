/**
 * The types of the streaming plugin's state and of the actions the commands hand it in a
 * transaction's meta. Types only: the plugin key (constants.ts), the document helpers
 * (stream-document.ts) and the plugin (streaming-plugin.ts) all import them from here.
 */
import type { Fragment } from '@tiptap/pm/model'
import type { Step } from '@tiptap/pm/transform'
import type { DecorationSet } from '@tiptap/pm/view'

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
export type StreamingAction =
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

export interface ChunkDecorationSpec {
  streamId: string
  createdAt: number
}
