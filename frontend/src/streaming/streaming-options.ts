/**
 * The streaming extension's options and storage, apart from the extension so that the
 * command functions (commands.ts) can take them without importing the extension.
 */
import type { ContextBudgets, FragmentSerializer } from './document-context'
import type { StreamManager } from './stream-manager'
import type { ActionDefinition, AnimationType, StreamConfig, StreamFormat, StreamingTransport } from './types'

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
}
