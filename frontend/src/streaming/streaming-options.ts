/**
 * The streaming extension's options and storage, apart from the extension so that the
 * command functions (commands.ts) can take them without importing the extension.
 */
import type { EditorState, Plugin, Transaction } from '@tiptap/pm/state'

import type { ContextBudgets, FragmentSerializer } from './document-context'
import type { StreamManager } from './stream-manager'
import type {
  ActionDefinition,
  AnimationType,
  InsertAt,
  StreamConfig,
  StreamFormat,
  StreamingTransport,
  StreamTarget,
} from './types'

/**
 * An editor's binding to the shared document it shows (made by the `collaboration` option
 * once the editor's Yjs binding exists): where an answer goes, and what the AI peer wrote
 * for the sessions this writer reviews.
 */
export interface CollaborationBinding {
  /** The target of an answer that goes `at` this place of the document `tr` builds. */
  targetAt(tr: Transaction, at: InsertAt): StreamTarget
  /** Starts recording what the AI peer writes for a session (called before it starts). */
  follow(sessionId: string): void
  /** Deletes what the AI peer wrote for a session, for everyone; false when nothing was recorded. */
  reject(sessionId: string): boolean
  /** Stops recording a session (its answer was kept). */
  forget(sessionId: string): void
  destroy(): void
}

/** What the collaboration's plugins get from the extension. */
export interface CollaborationPluginContext {
  /** The editor's binding (null while the editor has none). */
  binding: (state: EditorState) => CollaborationBinding | null
  /** The animation of streamed text, which the AI's text fades in with. */
  animationType: () => AnimationType
}

/**
 * The `collaboration` option: a shared document the server writes answers into, made by
 * `streamingCollaboration({documentId, provider})` from `tiptap-streaming/collab` (the part
 * of the package that needs Yjs).
 */
export interface StreamingCollaboration {
  /** The document's id on the server (`/collab/{documentId}`). */
  readonly documentId: string
  /** The binding of an editor in `state`; null when the editor has no Collaboration extension. */
  bind(state: EditorState): CollaborationBinding | null
  /** The plugins it adds to the editor (the fade-in of the AI peer's text). */
  plugins(context: CollaborationPluginContext): Plugin[]
}

/** Ghost-text autocomplete: when the writer stops typing at the end of a text block, a `complete` session. */
export interface AutocompleteOptions {
  /**
   * Milliseconds the cursor rests at the end of a text block, after typing, before a completion starts.
   * @default 300
   * @example 150
   */
  debounceMs?: number
  /**
   * The server settings of completion sessions (provider, model, maxTokens...).
   * @default {}
   * @example { maxTokens: 24 }
   */
  config?: StreamConfig
}

export interface StreamingOptions {
  /**
   * The transport that carries pause, resume, cancel and regenerate to the server; streams
   * started with a `sessionId` use it. The hook sets it on `editor.storage.streaming.transport`.
   * @default null
   * @example { pause: () => service.pause(), resume: () => service.resume(), cancel: () => service.cancel() }
   */
  transport: StreamingTransport | null
  /**
   * The animation of newly arrived chunks when a stream's config names none.
   * @default 'wave'
   * @example 'fade'
   */
  animationType: AnimationType
  /**
   * How a stream's text is shown when its config names no format: Markdown rendered as it
   * arrives, or the plain text as it arrived.
   * @default 'markdown'
   * @example 'text'
   */
  format: StreamFormat
  /**
   * Milliseconds between two chunks of locally streamed text (streamContent, streamWithAnimation).
   * @default 50
   * @example 20
   */
  speed: number
  /**
   * Whether a finished response waits for acceptStream / rejectStream when its config does not say.
   * @default false
   * @example true
   */
  review: boolean
  /**
   * How much of the text before and after the cursor (or the selection) an action sends, in characters.
   * @default { before: 4000, after: 1000 }
   * @example { before: 12000, after: 2000 }
   */
  context: ContextBudgets
  /**
   * Ghost-text autocomplete at the end of a text block: Tab accepts, Mod-ArrowRight accepts a
   * word, Escape dismisses; off when false.
   * @default false
   * @example { debounceMs: 300 }
   */
  autocomplete: false | AutocompleteOptions
  /**
   * The name on the caret that marks where an answer's text arrives.
   * @default 'AI'
   * @example 'Assistant'
   */
  assistantName: string
  /**
   * Collaborative documents: the editor shows a shared Yjs document (Tiptap's Collaboration
   * extension), and the server writes the answers of server sessions into it as a peer,
   * for every collaborator, instead of this editor writing them. Text from the AI peer
   * fades in; rejecting a reviewed answer deletes what the AI wrote, for everyone.
   * @default null
   * @example streamingCollaboration({ documentId: 'team-notes', provider })
   */
  collaboration: StreamingCollaboration | null
}

export interface StreamingStorage {
  /** This editor's streams. */
  streamManager: StreamManager
  /** The transport given to streams started from now on (and to actions and autocomplete). */
  transport: StreamingTransport | null
  /** The actions the server lists (the hook's `loadActions`); the built-in ones are known without it. */
  actions: readonly ActionDefinition[]
  /** Writes document content as Markdown, made from this editor's extensions on first use. */
  serializer: FragmentSerializer | null
  /** The binding to the shared document, with the `collaboration` option, once the editor's Yjs binding exists. */
  collaboration: CollaborationBinding | null
}
