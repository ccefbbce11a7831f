/**
 * The shared document an editor shows when it is collaborative (Tiptap's Collaboration
 * extension binds it through y-tiptap's sync plugin): its Yjs fragment, the AI peers in
 * its awareness, the answers this writer has yet to review, and the `target` a start
 * request names so that the server writes the answer there as a peer. The editor's
 * `CollaborationBinding`.
 */
import type { EditorState, Transaction } from '@tiptap/pm/state'
import { type relativePositionToAbsolutePosition, ySyncPluginKey } from '@tiptap/y-tiptap'
import type { Awareness } from 'y-protocols/awareness'
import type { Doc, XmlFragment } from 'yjs'

import { anchorAfterBlock } from './collab-anchor'
import { AiAnswers } from './collab-answers'
import { AiPeers } from './collab-peers'
import type { CollaborationBinding } from './streaming-options'
import type { InsertAt, StreamTarget } from './types'

/** What the extension needs of a Yjs provider: the awareness in which the AI peer names itself. */
export interface CollaborationProvider {
  awareness: Awareness
}

/** What `streamingCollaboration()` takes. */
export interface StreamingCollaborationOptions {
  /**
   * The document's id on the server (`/collab/{documentId}`): answers of server sessions go there.
   * @example 'team-notes'
   */
  documentId: string
  /**
   * The provider connected to it (y-websocket's WebsocketProvider, or any provider with an
   * `awareness`): the AI peer names itself in its awareness, and the provider is the origin
   * of the remote updates in which the AI's writing is told apart.
   * @example new WebsocketProvider(`${wsBase}/collab`, 'team-notes', ydoc)
   */
  provider: CollaborationProvider
}

/** y-tiptap's map from Yjs types to the nodes they became (its `ProsemirrorMapping`). */
export type ProsemirrorMapping = Parameters<typeof relativePositionToAbsolutePosition>[3]

/** What the extension reads of y-tiptap's sync plugin state. */
export interface YSyncState {
  /** The bound fragment (`default` unless the Collaboration extension names another field). */
  type: XmlFragment
  doc: Doc
  /** y-tiptap's binding; its mapping turns Yjs relative positions into document positions. */
  binding: { mapping: ProsemirrorMapping }
}

/** The Yjs binding of an editor state, if the editor is collaborative. */
export function ySyncStateOf(state: EditorState): YSyncState | null {
  const sync = ySyncPluginKey.getState(state) as Partial<YSyncState> | undefined
  return sync?.type && sync.doc && sync.binding ? (sync as YSyncState) : null
}

export class SharedDocument implements CollaborationBinding {
  readonly peers: AiPeers
  readonly answers: AiAnswers

  constructor(
    readonly options: StreamingCollaborationOptions,
    readonly sync: YSyncState,
  ) {
    this.peers = new AiPeers(options.provider.awareness)
    this.answers = new AiAnswers(sync.type, this.peers, options.provider)
  }

  /**
   * The target of an answer that goes `at` the given place of the document `tr` builds:
   * after the top-level block holding it (the cursor: its head; the selection: its end),
   * or, for `end`, at the end of the shared document, wherever that is when the AI writes.
   */
  targetAt(tr: Transaction, at: InsertAt): StreamTarget {
    const target: StreamTarget = { documentId: this.options.documentId }
    if (at !== 'end') {
      const pos = typeof at === 'number' ? at : at === 'cursor' ? tr.selection.head : tr.selection.to
      target.anchor = anchorAfterBlock(this.sync.type, tr.doc, pos)
    }
    return target
  }

  follow(sessionId: string): void {
    this.answers.follow(sessionId)
  }

  reject(sessionId: string): boolean {
    return this.answers.reject(sessionId)
  }

  forget(sessionId: string): void {
    this.answers.forget(sessionId)
  }

  destroy(): void {
    this.answers.destroy()
    this.peers.destroy()
  }
}
