/**
 * Types shared by the streaming extension, its node, the WebSocket service and the hook.
 * Wire payloads follow PROTOCOL.md (camelCase, as the server sends them).
 */
/** How newly arrived chunks are animated in the streaming node. */
export type AnimationType = 'wave' | 'fade' | 'slide'

/** What a stream's text is shown as: rich content parsed from Markdown, or plain paragraphs. */
export type StreamFormat = 'markdown' | 'text'

/** Where a stream stands, as the streaming node's status shows it. */
export type StreamStatus = 'streaming' | 'paused' | 'complete' | 'cancelled' | 'error'

/** What the writer decided about a reviewed response; `pending` while it waits for a decision. */
export type ReviewDecision = 'pending' | 'accepted' | 'rejected'

/**
 * Where a new stream goes: the end of the document, the cursor, in place of the selected
 * text (kept until the response is accepted, restored if it is rejected), or a position.
 */
export type InsertAt = 'end' | 'cursor' | 'selection' | number

/** Session state as the server reports it (`state` in PROTOCOL.md). */
export type SessionState = 'created' | 'streaming' | 'paused' | 'completed' | 'failed' | 'cancelled'

/** Returns the bearer token for the next request or connection; nothing means no token. */
export type TokenProvider = () => string | null | undefined | Promise<string | null | undefined>

/**
 * The configuration of one stream. The server reads the keys it knows (provider, model,
 * systemPrompt, temperature, maxTokens, tokensPerSecond, animationType, speed) and ignores
 * the rest; the editor reads sessionId, streamId, position, insertAt, review, animationType,
 * speed and format.
 */
export interface StreamConfig {
  /** The server session this stream shows, if any. */
  sessionId?: string
  /** The id of the streaming node; defaults to the sessionId, or a random id. */
  streamId?: string
  /** Document position at which the streaming node is inserted; wins over `insertAt`. */
  position?: number
  /** Where the stream goes; defaults to `'end'`. */
  insertAt?: InsertAt
  /** Keep the finished response as a suggestion to accept, reject or regenerate. */
  review?: boolean
  animationType?: AnimationType
  /** Milliseconds between two chunks of text streamed locally (streamContent, streamWithAnimation). */
  speed?: number
  /** How the text is shown; defaults to the extension's `format` option. */
  format?: StreamFormat
  provider?: 'openai' | 'anthropic' | 'demo'
  model?: string
  systemPrompt?: string
  temperature?: number
  maxTokens?: number
  tokensPerSecond?: number
}

/** Options of the `streamContent` command, which streams local text into the editor. */
export interface StreamContentOptions {
  animationType?: AnimationType
  /** Milliseconds between two chunks. */
  speed?: number
  position?: number
  insertAt?: InsertAt
  review?: boolean
  format?: StreamFormat
}

/** A server acknowledgement of pause-stream, resume-stream or cancel-stream. */
export interface StreamAck {
  ok: boolean
  state?: SessionState
  lastSeq?: number
  error?: string
}

/**
 * What the extension needs from the network: the commands that reach the server.
 * `useStreaming` hands the extension one built on `StreamingWebSocketService`; the
 * extension never imports socket.io-client.
 */
export interface StreamingTransport {
  pause(): Promise<StreamAck>
  resume(): Promise<StreamAck>
  cancel(): Promise<StreamAck>
  /** Streams a new response to the same prompt into the same node (a new server session). */
  regenerate?(): Promise<void>
}

/** `chunk` event payload, and the detail of the `streaming:chunk` event. */
export interface StreamChunk {
  content: string
  timestamp: number
  metadata: { provider?: string; model?: string; tokens?: number; [key: string]: unknown }
  seq?: number
  sessionId: string
}

/** Token counts of a finished response, as the server reports them. */
export interface StreamUsage {
  promptTokens?: number
  completionTokens?: number
  totalTokens?: number
  [key: string]: unknown
}

/** `complete` event payload, and the detail of the `streaming:complete` event. */
export interface StreamComplete {
  sessionId: string
  totalChunks?: number
  finishReason?: string
  usage?: StreamUsage | null
}

/** `stream-error` payload, and the detail of the `streaming:error` event. */
export interface StreamError {
  sessionId: string
  error: string
  code: string
}

/** `stream-state` payload, and the detail of the `streaming:state` event. */
export interface StreamState {
  sessionId: string
  state: SessionState
  lastSeq: number
  /** The session's history identity (PROTOCOL.md "Epoch"); servers before version 2 send none. */
  epoch?: string
}

/** `stream-reset` payload: the server's log changed, the text is rebuilt from seq 0. */
export interface StreamReset {
  sessionId: string
  epoch: string
  lastSeq: number
}

/** `snapshot` payload: everything logged so far, sent once to a client that joins late. */
export interface StreamSnapshot {
  sessionId: string
  epoch?: string
  text: string
  lastSeq: number
  state: SessionState
}

/** The events the service dispatches on its target, by name, with their detail. */
export interface StreamingEvents {
  'streaming:chunk': StreamChunk
  'streaming:complete': StreamComplete
  'streaming:error': StreamError
  'streaming:state': StreamState
  'streaming:reset': StreamReset
  'streaming:snapshot': StreamSnapshot
}

/** The events the service dispatches, as DOM events (the seed listens on `window`). */
export type StreamingEventMap = { [K in keyof StreamingEvents]: CustomEvent<StreamingEvents[K]> }

/** `POST /api/streaming/session` answer. */
export interface SessionCreated {
  sessionId: string
  wsEndpoint: string
}

/** `GET /api/streaming/{id}` answer. */
export interface SessionStatus {
  sessionId: string
  userId?: string
  state: SessionState
  chunks: number
  text: string
  provider?: string | null
  model?: string | null
  createdAt?: number
  usage?: StreamUsage | null
  epoch?: string
  finishReason?: string | null
  error?: string | null
}
