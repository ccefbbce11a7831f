/**
 * The streaming extension's options and storage, apart from the extension so that the
 * command functions (commands.ts) can take them without importing the extension.
 */
import type { StreamManager } from './stream-manager'
import type { AnimationType, StreamFormat, StreamingTransport } from './types'

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
}

export interface StreamingStorage {
  /** This editor's streams. */
  streamManager: StreamManager
  /** The transport given to streams started from now on. */
  transport: StreamingTransport | null
}
