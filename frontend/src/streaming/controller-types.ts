/** The options a `StreamingController` (and so `useStreaming`) takes, and the state it publishes. */
import type { Editor } from '@tiptap/core'

import type { AnimationType, InsertAt, SessionState, StreamFormat, TokenProvider } from './types'
import type { StreamingWebSocketService } from './websocket-service'

export interface StreamingControllerOptions {
  editor: Editor
  onChunk?: (chunk: string) => void
  onComplete?: () => void
  onError?: (error: Error) => void
  animationType?: AnimationType
  speed?: number
  /** Prefix of the HTTP API routes; '' means relative to the page (the service's own client by default). */
  apiBaseUrl?: string
  /** The service to stream through; by default the hook makes (and owns) one for ws://localhost:3001. */
  service?: StreamingWebSocketService
  /** How the text is shown; by default the extension's `format` option. */
  format?: StreamFormat
  /** The userId sent when creating a session. */
  userId?: string
  /** Bearer token for every HTTP request (and every connect of the service the hook makes). */
  getToken?: TokenProvider
  /** Where streams go unless their config says; by default the end of the document. */
  insertAt?: InsertAt
  /** Keep finished responses as suggestions to accept, reject or regenerate. */
  review?: boolean
}

/** What a page shows of a controller's stream; a new object after every change. */
export interface StreamingControllerState {
  isStreaming: boolean
  sessionId: string | null
  /** The editor stream this controller shows. */
  streamId: string | null
  state: SessionState | null
  error: string | null
  provider: string | null
  model: string | null
  /** Tokens the response used so far, as the provider reports them; null when it reports none. */
  tokens: number | null
  /** Milliseconds from the start request to the first chunk; null before it. */
  timeToFirstToken: number | null
}

/** The state of a controller that has streamed nothing yet. */
export const INITIAL_STATE: StreamingControllerState = {
  isStreaming: false,
  sessionId: null,
  streamId: null,
  state: null,
  error: null,
  provider: null,
  model: null,
  tokens: null,
  timeToFirstToken: null,
}
