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
 * Where a stream that goes into the text was begun in its textblock: inside it, at its
 * start or at its end (the live node then stands before or after the textblock, and an
 * answer of one paragraph joins it there when it settles).
 */
export type InlineEdge = 'inside' | 'start' | 'end'

/** What the writer decided about one tracked change of a reviewed rewrite. */
export type ChangeDecision = 'accepted' | 'rejected'

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
 * the rest; the editor reads sessionId, streamId, position, insertAt, review, trackChanges,
 * inline, animationType, speed and format.
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
  /**
   * Show the response as word-level tracked changes against the text it replaces, each
   * accepted or rejected on its own (a rewrite of the selection; implies review).
   */
  trackChanges?: boolean
  /**
   * The answer goes into the text at the insertion point (an action at the cursor): an
   * answer of one paragraph settles inline there, its leading whitespace kept, rather
   * than as a block of its own; an answer of several blocks still goes in as blocks.
   */
  inline?: boolean
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
  /**
   * Streams a new response to the same prompt into the same node (a new server session):
   * the node of `streamId` when given (the editor gives the stream it emptied for it).
   * Called while the command runs, as runAction.
   */
  regenerate?(streamId?: string): Promise<void>
  /**
   * Starts the server session of an action the editor began; its answer streams into
   * `request.streamId`. Called while the command runs: the editor must not be changed before it returns.
   */
  runAction?(request: ActionRequest): Promise<void>
  /**
   * Streams the answer to an instruction about the last answer into the same node (a
   * follow-up session, whose `followUp` is that stream's latest session): the node of
   * `streamId` when given (the editor gives the stream it emptied for it). Called while
   * the command runs, as runAction.
   */
  followUp?(instruction: string, streamId?: string): Promise<void>
  /** Starts a `complete` session for ghost text; its text goes to `sink` until the handle cancels it. */
  complete?(request: CompletionRequest, sink: CompletionSink): CompletionHandle
}

/** Where an action's answer goes by default: in place of the selection, at the cursor, after the selection. */
export type ActionInsert = 'replace' | 'cursor' | 'after'

/** An action the server offers (`GET /api/streaming/actions`), to build a menu from. */
export interface ActionDefinition {
  id: string
  label: string
  /** The action works on the selected text, and is refused without one. */
  needsSelection: boolean
  /** The options it takes: `language`, `tone`. */
  options: string[]
  insert: ActionInsert
}

/**
 * The document around the action (PROTOCOL.md `context`): the selected text and the text
 * before and after it, as Markdown unless `format` says `text`.
 */
export interface DocumentContext {
  selection?: string
  before?: string
  after?: string
  document?: string
  format?: StreamFormat
}

/** An action's options (PROTOCOL.md `options`). */
export interface ActionOptions {
  /** The language to translate into; required by `translate`. */
  language?: string
  /** The tone to write in, for `tone`. */
  tone?: string
}

/**
 * A collaborative document the server writes an answer into, as a peer (PROTOCOL.md
 * "Collaborative documents (Yjs)"): every collaborator sees the answer arrive through Yjs.
 */
export interface StreamTarget {
  /** The document's id: the `/collab/{documentId}` the editor's provider is connected to. */
  documentId: string
  /**
   * Where the answer's blocks go: base64 of a Yjs relative position in the `default`
   * fragment, after the top-level block it names; the end of the document without one.
   */
  anchor?: string
}

/** The body of `POST /api/streaming/{id}/start`: a prompt, or an action on the document, or a follow-up. */
export interface StartRequest {
  /** The instruction: required by `custom`, an extra instruction for the other actions. */
  prompt?: string
  action?: string
  context?: DocumentContext
  options?: ActionOptions
  /** The earlier session whose request and answer the model gets as the conversation so far. */
  followUp?: string
  /** The collaborative document the server writes the answer into (the editor does not write it). */
  target?: StreamTarget
}

/** What `runAction` takes besides the action's id. */
export interface RunActionOptions extends ActionOptions {
  /** The instruction (required by `custom`) or an extra instruction. */
  prompt?: string
  /** Where the answer goes, instead of the action's own `insert`. */
  insert?: ActionInsert
  /** Keep the answer as a suggestion to accept or reject; true unless given. */
  review?: boolean
  /** The server settings of the session (provider, model, maxTokens...). */
  config?: StreamConfig
}

/** What the editor hands the transport when an action starts: the stream it began and the start body. */
export interface ActionRequest {
  streamId: string
  start: StartRequest
  config?: StreamConfig
}

/** A ghost-text request: the text around the cursor and the session's server settings. */
export interface CompletionRequest {
  context: DocumentContext
  config?: StreamConfig
}

/** Where a completion session's events go. */
export interface CompletionSink {
  /** The session was created (its id, for cancelling and for tests). */
  session(sessionId: string): void
  chunk(text: string): void
  /** The session ended: completed, failed or cancelled. */
  end(): void
}

/** A running completion. */
export interface CompletionHandle {
  /** Stops the completion; a session still streaming is cancelled on the server. */
  cancel(): void
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
  /** The action the session was started with, when it was (version 3). */
  action?: string | null
  followUp?: string | null
}
