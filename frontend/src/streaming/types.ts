/**
 * Types shared by the streaming extension, its node, the WebSocket service and the hook.
 * Wire payloads follow PROTOCOL.md (camelCase, as the server sends them).
 */

/** How newly arrived chunks are animated in the streaming node. */
export type AnimationType = 'wave' | 'fade' | 'slide'

/** What a finished stream's text becomes: rich content parsed from Markdown, or plain paragraphs. */
export type StreamFormat = 'markdown' | 'text'

/** Where a stream stands, as the streaming node's status shows it. */
export type StreamStatus = 'streaming' | 'paused' | 'complete' | 'cancelled' | 'error'

/** Session state as the server reports it (`state` in PROTOCOL.md). */
export type SessionState = 'created' | 'streaming' | 'paused' | 'completed' | 'failed' | 'cancelled'

/**
 * The configuration of one stream. The server reads the keys it knows (provider, model,
 * systemPrompt, temperature, maxTokens, tokensPerSecond, animationType, speed) and ignores
 * the rest; the editor reads sessionId, streamId, position, animationType, speed and format.
 */
export interface StreamConfig {
  /** The server session this stream shows, if any. */
  sessionId?: string
  /** The id of the streaming node; defaults to the sessionId, or a random id. */
  streamId?: string
  /** Document position at which the streaming node is inserted; defaults to the end of the document. */
  position?: number
  animationType?: AnimationType
  /** Milliseconds between two chunks of text streamed locally (streamContent, streamWithAnimation). */
  speed?: number
  /** What the text becomes when the stream finishes; defaults to the extension's `format` option. */
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
 * `StreamingWebSocketService` implements it; the extension never imports socket.io-client.
 */
export interface StreamingTransport {
  pause(): Promise<StreamAck>
  resume(): Promise<StreamAck>
  cancel(): Promise<StreamAck>
}

/** `chunk` event payload, and the detail of the `streaming:chunk` window event. */
export interface StreamChunk {
  content: string
  timestamp: number
  metadata: { provider?: string; model?: string; tokens?: number; [key: string]: unknown }
  seq?: number
  sessionId: string
}

/** `complete` event payload, and the detail of the `streaming:complete` window event. */
export interface StreamComplete {
  sessionId: string
  totalChunks?: number
  finishReason?: string
  usage?: Record<string, unknown> | null
}

/** `stream-error` payload, and the detail of the `streaming:error` window event. */
export interface StreamError {
  sessionId: string
  error: string
  code: string
}

/** `stream-state` payload, and the detail of the `streaming:state` window event. */
export interface StreamState {
  sessionId: string
  state: SessionState
  lastSeq: number
}

/** The window events the service dispatches, by name. */
export interface StreamingEventMap {
  'streaming:chunk': CustomEvent<StreamChunk>
  'streaming:complete': CustomEvent<StreamComplete>
  'streaming:error': CustomEvent<StreamError>
  'streaming:state': CustomEvent<StreamState>
}
