/**
 * The network side of streaming: one Socket.IO connection to `/stream/<sessionId>`, which
 * turns the server's events into window events and carries pause, resume and cancel back.
 * A dropped connection is reconnected with exponential backoff and resumed from the last
 * seq received (handshake `auth: {lastSeq}`), and chunks are deduplicated by seq, so a
 * drop neither loses nor doubles anything.
 */
import { io, type Socket } from 'socket.io-client'

import type {
  StreamAck,
  StreamChunk,
  StreamComplete,
  StreamError,
  StreamingEventMap,
  StreamingTransport,
  StreamState,
} from './types'

export interface StreamingWebSocketServiceOptions {
  /**
   * Where the server is; the namespace is `${baseUrl}/stream/${sessionId}`.
   * @default 'ws://localhost:3001'
   * @example window.location.origin.replace(/^http/, 'ws')
   */
  baseUrl?: string
  /**
   * Reconnect attempts after a drop before the stream is reported lost.
   * @default 5
   */
  maxReconnectAttempts?: number
  /**
   * Base of the exponential backoff: attempt n waits 2^n times this, in milliseconds.
   * @default 1000
   */
  reconnectDelay?: number
  /**
   * Connection and acknowledgement timeout, in milliseconds.
   * @default 5000
   */
  timeout?: number
  /**
   * Where the `streaming:*` events are dispatched.
   * @default window
   */
  target?: EventTarget
}

const SESSION_NOT_FOUND = 'Session not found'

export class StreamingWebSocketService implements StreamingTransport {
  private socket: Socket | null = null
  private reconnectAttempts = 0
  private maxReconnectAttempts = 5
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null
  private readonly baseUrl: string
  private readonly reconnectDelay: number
  private readonly timeout: number
  private readonly target: EventTarget
  private session: string | null = null
  private seq = -1
  private seqs: number[] = []
  private finished = false
  private pendingRequests = 0
  private closeWhenSettled = false

  constructor(options: StreamingWebSocketServiceOptions = {}) {
    this.baseUrl = (options.baseUrl ?? 'ws://localhost:3001').replace(/\/+$/, '')
    this.maxReconnectAttempts = options.maxReconnectAttempts ?? this.maxReconnectAttempts
    this.reconnectDelay = options.reconnectDelay ?? 1000
    this.timeout = options.timeout ?? 5000
    this.target = options.target ?? window
  }

  /** The session this service is connected (or reconnecting) to. */
  get sessionId(): string | null {
    return this.session
  }

  /** The highest seq received and dispatched; -1 before the first chunk. */
  get lastSeq(): number {
    return this.seq
  }

  /** Every seq dispatched for the current session, in order: each one exactly once. */
  get receivedSeqs(): readonly number[] {
    return this.seqs
  }

  get connected(): boolean {
    return this.socket?.connected ?? false
  }

  /** Connects to a session's namespace; resolves once joined, rejects if the first attempt fails. */
  async connect(sessionId: string): Promise<void> {
    this.disconnect()
    this.session = sessionId
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
      auth: callback => callback(this.seq >= 0 ? { lastSeq: this.seq } : {}),
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

  private dispatch<K extends keyof StreamingEventMap>(
    name: K,
    detail: StreamingEventMap[K] extends CustomEvent<infer D> ? D : never,
  ): void {
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
      // Emit to streaming extension
      this.dispatch('streaming:chunk', { ...data, sessionId: data.sessionId ?? sessionId })
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
