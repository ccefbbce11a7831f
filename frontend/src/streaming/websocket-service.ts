/**
 * The network side of streaming: one Socket.IO connection to `/stream/<sessionId>`, which
 * turns the server's events into `streaming:*` events on its target (`on()` subscribes to
 * them) and carries pause, resume and cancel back; the session HTTP routes are its
 * `sessions` client. A dropped connection is reconnected with exponential backoff and
 * resumed from the last seq received (handshake `auth: {lastSeq, epoch}`), and chunks are
 * deduplicated by seq, so a drop neither loses nor doubles anything. A late joiner asks for
 * a `snapshot`; a `stream-reset` (the server's log changed) starts the text over.
 */
import { io, type Socket } from 'socket.io-client'

import { DEFAULT_SERVER_URL } from './constants'
import { StreamingSessionClient } from './session-client'
import type {
  StreamAck,
  StreamChunk,
  StreamComplete,
  StreamError,
  StreamingEvents,
  StreamingTransport,
  StreamReset,
  StreamSnapshot,
  StreamState,
  TokenProvider,
} from './types'

export interface StreamingWebSocketServiceOptions {
  /**
   * Where the server is; the namespace is `${baseUrl}/stream/${sessionId}`.
   * @default 'ws://localhost:3001'
   * @example window.location.origin.replace(/^http/, 'ws')
   */
  baseUrl?: string
  /**
   * Prefix of the HTTP API routes used by `sessions`; '' means relative to the page.
   * @default ''
   * @example 'https://api.example.com'
   */
  apiBaseUrl?: string
  /**
   * Reconnect attempts after a drop before the stream is reported lost.
   * @default 5
   * @example 10
   */
  maxReconnectAttempts?: number
  /**
   * Base of the exponential backoff: attempt n waits 2^n times this, in milliseconds.
   * @default 1000
   * @example 250
   */
  reconnectDelay?: number
  /**
   * Connection and acknowledgement timeout, in milliseconds.
   * @default 5000
   * @example 10000
   */
  timeout?: number
  /**
   * Where the `streaming:*` events are dispatched.
   * @default window
   * @example new EventTarget()
   */
  target?: EventTarget
  /**
   * Called for every HTTP request and every (re)connect; its token goes in the
   * Authorization header and in the handshake's `auth.token`.
   * @default undefined (no token)
   * @example () => auth.currentToken()
   */
  getToken?: TokenProvider
}

/** How to join a session. */
export interface ConnectOptions {
  /**
   * Ask for one `snapshot` of everything logged so far instead of a chunk-by-chunk replay
   * (a late joiner). A server that does not know snapshots replays the chunks instead.
   */
  snapshot?: boolean
  /** The session's epoch if already known (from `GET /api/streaming/{id}`). */
  epoch?: string | null
}

const SESSION_NOT_FOUND = 'Session not found'

export class StreamingWebSocketService implements StreamingTransport {
  /** The session HTTP routes (create, start, get, cancel), with the same token provider. */
  readonly sessions: StreamingSessionClient
  private socket: Socket | null = null
  private reconnectAttempts = 0
  private maxReconnectAttempts = 5
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null
  private readonly baseUrl: string
  private readonly reconnectDelay: number
  private readonly timeout: number
  private readonly target: EventTarget
  private readonly getToken: TokenProvider | undefined
  private session: string | null = null
  private currentEpoch: string | null = null
  private wantsSnapshot = false
  private seq = -1
  private seqs: number[] = []
  private finished = false
  private pendingRequests = 0
  private closeWhenSettled = false
  private readonly options: StreamingWebSocketServiceOptions

  constructor(options: StreamingWebSocketServiceOptions = {}) {
    this.options = options
    this.baseUrl = (options.baseUrl ?? DEFAULT_SERVER_URL).replace(/\/+$/, '')
    this.maxReconnectAttempts = options.maxReconnectAttempts ?? this.maxReconnectAttempts
    this.reconnectDelay = options.reconnectDelay ?? 1000
    this.timeout = options.timeout ?? 5000
    this.target = options.target ?? (typeof window === 'undefined' ? new EventTarget() : window)
    this.getToken = options.getToken
    this.sessions = new StreamingSessionClient({ baseUrl: options.apiBaseUrl, getToken: options.getToken })
  }

  /** The session this service is connected (or reconnecting) to. */
  get sessionId(): string | null {
    return this.session
  }

  /** The highest seq received and dispatched (or covered by a snapshot); -1 before the first chunk. */
  get lastSeq(): number {
    return this.seq
  }

  /** The session's epoch as the server last reported it; null until it reports one. */
  get epoch(): string | null {
    return this.currentEpoch
  }

  /** Every seq dispatched for the current session, in order: each one exactly once. */
  get receivedSeqs(): readonly number[] {
    return this.seqs
  }

  get connected(): boolean {
    return this.socket?.connected ?? false
  }

  /**
   * Calls `handler` with the detail of every `event` this service dispatches, until the
   * returned function is called.
   * @example const off = service.on('streaming:chunk', chunk => console.log(chunk.content))
   */
  on<K extends keyof StreamingEvents>(event: K, handler: (detail: StreamingEvents[K]) => void): () => void {
    const listener = (dispatched: Event): void => {
      if (dispatched instanceof CustomEvent) {
        handler(dispatched.detail)
      }
    }
    this.target.addEventListener(event, listener)
    return () => this.target.removeEventListener(event, listener)
  }

  /** Connects to a session's namespace; resolves once joined, rejects if the first attempt fails. */
  async connect(sessionId: string, options: ConnectOptions = {}): Promise<void> {
    this.disconnect()
    this.session = sessionId
    this.currentEpoch = options.epoch ?? null
    this.wantsSnapshot = options.snapshot === true
    this.seq = -1
    this.seqs = []
    this.finished = false
    this.closeWhenSettled = false
    this.reconnectAttempts = 0

    // Reconnection is ours (handleReconnect), not the manager's: it also follows a
    // server-initiated disconnect, and the auth callback sends the current lastSeq each time.
    const socket = io(`${this.baseUrl}/stream/${encodeURIComponent(sessionId)}`, {
      transports: ['websocket'],
      timeout: this.timeout,
      reconnection: false,
      forceNew: true,
      auth: callback => {
        void this.handshakeAuth().then(callback)
      },
    })
    this.socket = socket

    this.setupEventHandlers(socket)

    await new Promise<void>((resolve, reject) => {
      const onConnect = (): void => {
        socket.off('connect_error', onError)
        resolve()
      }
      const onError = (error: Error): void => {
        socket.off('connect', onConnect)
        this.disconnect()
        reject(error)
      }
      socket.once('connect', onConnect)
      socket.once('connect_error', onError)
    })
  }

  /**
   * A new service for the same server, with the same options, that dispatches its events on
   * its own target: for a second stream at the same time (an autocomplete beside an answer).
   * @example const completions = service.spawn()
   */
  spawn(): StreamingWebSocketService {
    return new StreamingWebSocketService({ ...this.options, target: new EventTarget() })
  }

  /** Closes the connection for good; no reconnect follows. */
  disconnect(): void {
    if (this.reconnectTimer !== null) {
      clearTimeout(this.reconnectTimer)
      this.reconnectTimer = null
    }
    const socket = this.socket
    this.socket = null
    if (socket) {
      socket.removeAllListeners()
      socket.disconnect()
    }
  }

  pause(): Promise<StreamAck> {
    return this.request('pause-stream')
  }

  resume(): Promise<StreamAck> {
    return this.request('resume-stream')
  }

  async cancel(): Promise<StreamAck> {
    const socket = this.socket
    const ack = await this.request('cancel-stream')
    if (ack.ok && socket) {
      this.finish(socket)
    }
    return ack
  }

  /** What the handshake carries: where to resume (or a snapshot request) and the token. */
  private async handshakeAuth(): Promise<Record<string, unknown>> {
    const auth: Record<string, unknown> = {}
    if (this.seq >= 0) {
      auth.lastSeq = this.seq
      if (this.currentEpoch !== null) {
        auth.epoch = this.currentEpoch
      }
    } else if (this.wantsSnapshot) {
      auth.snapshot = true
    }
    try {
      const token = await this.getToken?.()
      if (token) {
        auth.token = token
      }
    } catch {
      // No token: the server answers Unauthorized, which connect() reports.
    }
    return auth
  }

  private async request(event: 'pause-stream' | 'resume-stream' | 'cancel-stream'): Promise<StreamAck> {
    const socket = this.socket
    if (!socket) {
      throw new Error('Not connected to a streaming session.')
    }
    this.pendingRequests += 1
    try {
      return (await socket.timeout(this.timeout).emitWithAck(event)) as StreamAck
    } finally {
      this.pendingRequests -= 1
      if (this.closeWhenSettled && this.pendingRequests === 0 && this.socket === socket) {
        this.disconnect()
      }
    }
  }

  private dispatch<K extends keyof StreamingEvents>(name: K, detail: StreamingEvents[K]): void {
    this.target.dispatchEvent(new CustomEvent(name, { detail }))
  }

  /**
   * Ends the stream on this side: later disconnects are not reconnected, and the socket
   * closes once no acknowledgement is awaited (a cancel's ack may follow its `complete`).
   */
  private finish(socket: Socket): void {
    this.finished = true
    if (this.pendingRequests > 0) {
      this.closeWhenSettled = true
    } else if (this.socket === socket) {
      this.disconnect()
    }
  }

  private setupEventHandlers(socket: Socket): void {
    const sessionId = this.session ?? ''
    let joined = false

    socket.on('connect', () => {
      joined = true
      this.reconnectAttempts = 0
    })

    socket.on('chunk', (data: StreamChunk) => {
      if (typeof data.seq === 'number') {
        if (data.seq <= this.seq) {
          return
        }
        if (data.seq > this.seq + 1) {
          // A gap: reconnect, and the server replays everything after lastSeq.
          socket.disconnect()
          this.handleReconnect()
          return
        }
        this.seq = data.seq
        this.seqs.push(data.seq)
      }
      this.dispatch('streaming:chunk', { ...data, sessionId: data.sessionId ?? sessionId })
    })

    socket.on('snapshot', (data: StreamSnapshot) => {
      this.seq = Math.max(this.seq, data.lastSeq)
      if (data.epoch) {
        this.currentEpoch = data.epoch
      }
      this.dispatch('streaming:snapshot', { ...data, sessionId: data.sessionId ?? sessionId })
    })

    socket.on('stream-reset', (data: StreamReset) => {
      // The server replays the whole log from seq 0 next.
      this.seq = -1
      this.seqs = []
      this.currentEpoch = data.epoch
      this.dispatch('streaming:reset', { ...data, sessionId: data.sessionId ?? sessionId })
    })

    socket.on('complete', (data: StreamComplete | undefined) => {
      this.dispatch('streaming:complete', { ...data, sessionId: data?.sessionId ?? sessionId })
      this.finish(socket)
    })

    socket.on('stream-error', (data: StreamError) => {
      this.dispatch('streaming:error', { ...data, sessionId: data.sessionId ?? sessionId })
      this.finish(socket)
    })

    socket.on('stream-state', (data: StreamState) => {
      if (data.epoch) {
        this.currentEpoch = data.epoch
      }
      this.dispatch('streaming:state', { ...data, sessionId: data.sessionId ?? sessionId })
      if (data.state === 'cancelled') {
        // Over: no reconnect. The socket stays open for the `complete` that follows.
        this.finished = true
      }
    })

    socket.on('connect_error', (error: Error) => {
      if (!joined) {
        // The first attempt: connect() rejects, nothing to resume.
        return
      }
      if (error.message === SESSION_NOT_FOUND) {
        this.dispatch('streaming:error', { sessionId, error: error.message, code: 'session_not_found' })
        this.finish(socket)
        return
      }
      this.handleReconnect()
    })

    socket.on('disconnect', reason => {
      if (reason !== 'io client disconnect' && !this.finished) {
        this.handleReconnect()
      }
    })
  }

  private handleReconnect(): void {
    const socket = this.socket
    if (!socket || this.reconnectTimer !== null) {
      return
    }
    if (this.reconnectAttempts < this.maxReconnectAttempts) {
      this.reconnectAttempts++
      const delay = Math.pow(2, this.reconnectAttempts) * this.reconnectDelay

      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = null
        if (this.socket === socket) {
          socket.connect()
        }
      }, delay)
      return
    }
    this.dispatch('streaming:error', {
      sessionId: this.session ?? '',
      error: `Connection lost after ${this.maxReconnectAttempts} reconnect attempts.`,
      code: 'connection_lost',
    })
    this.finish(socket)
  }
}
