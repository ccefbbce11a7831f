/**
 * The types of the streaming plugin's state and of the actions the commands hand it in a
 * transaction's meta. Types only: the plugin key (constants.ts), the document helpers
 * (stream-document.ts) and the plugin (streaming-plugin.ts) all import them from here.
 */
import type { Fragment } from '@tiptap/pm/model'
import type { Step } from '@tiptap/pm/transform'
import type { DecorationSet } from '@tiptap/pm/view'

import type { StreamRecord } from './stream-manager'
import type { AnimationType, InlineEdge } from './types'

/** How a finished stream leaves the document (see the plugin's settle action). */
export type SettleMode = 'node' | 'content' | 'none'

/** A stream on its way out: the document is restored, then its content goes in as one undo step. */
export interface Settlement {
  stage: 'revert' | 'insert'
  mode: SettleMode
  content: Fragment
  attrs: Record<string, unknown>
  /** For `content` of one textblock: the textblock edge where it joins the text (see StreamConfig.inline). */
  inline: InlineEdge | null
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
  | {
      type: 'settle'
      streamId: string
      mode: SettleMode
      content: Fragment
      attrs: Record<string, unknown>
      inline: InlineEdge | null
    }
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

/** The ghost text of an autocomplete: a suggestion shown after the cursor, outside the document. */
export interface GhostText {
  /** Which completion this is (chunks of an older one are dropped). */
  id: number
  /** Where it shows: the cursor it was asked for, moved along as the writer types it. */
  pos: number
  /** What is left of it to show (and to accept). */
  text: string
  /** Its server session, once created. */
  sessionId: string | null
  /** Whether more text may still arrive. */
  streaming: boolean
}

/** What the autocomplete's transactions tell its plugin. */
export type AutocompleteAction =
  | { type: 'show'; id: number; pos: number }
  | { type: 'session'; id: number; sessionId: string }
  | { type: 'append'; id: number; text: string }
  | { type: 'end'; id: number }
  /** The first `count` characters of the ghost were written into the document at its position. */
  | { type: 'consume'; count: number }
  | { type: 'dismiss' }

/** What the tracked-changes plugin draws, and whether its diffs wait for an animation frame. */
export interface TrackedChangesState {
  set: DecorationSet
  /** The records `set` was drawn for. */
  records: readonly StreamRecord[]
  /** Whether `set` is an earlier diff's, mapped through changes no diff has seen yet. */
  stale: boolean
  /** Whether a diff ran for an answer still streaming since the last frame: the next one waits for a frame. */
  throttled: boolean
}
