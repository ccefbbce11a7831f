/**
 * A small real server for the unit tests, speaking PROTOCOL.md: the HTTP routes the hook
 * uses and the Socket.IO namespace /stream/<id> with replay from the handshake's lastSeq.
 * It streams a fixed script of chunks and can drop connections or fail on cue; with
 * `version2` it also speaks the protocol's version 2 additions the client is ready for:
 * `epoch` (and `stream-reset` when a client comes back with another one) and snapshot joins.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

import { type Namespace, Server, type Socket } from 'socket.io'

import type { SessionState, StreamChunk } from '../../src/streaming'

export interface FakeServerOptions {
  /** The chunks every session streams. */
  script?: string[]
  /** Milliseconds between two chunks. */
  intervalMs?: number
  /** After emitting this seq, drop every connection of the session, once. */
  dropAfterSeq?: { seq: number; how: 'server-disconnect' | 'transport-close' }
  /** After emitting this seq, fail the session with stream-error. */
  failAfterSeq?: number
  /** Replay from lastSeq - 2 instead of lastSeq, to check the client dedupes. */
  replayOverlap?: boolean
  /** Log this seq but do not send it live, so the client sees a gap. */
  withholdSeq?: number
  /** Status of POST /api/streaming/session, to simulate a refusal. */
  sessionStatus?: number
  /** Speak PROTOCOL.md's version 2: epochs, stream-reset and snapshot joins. */
  version2?: boolean
  /** Answer 401 to HTTP requests and refuse connections without this bearer token. */
  token?: string
  /** The chunks of a session started with this body, instead of `script` (version 3 requests). */
  answer?: (body: Record<string, unknown>) => string[] | undefined
}

export interface FakeSession {
  id: string
  state: SessionState
  log: StreamChunk[]
  /** The handshake auth of every connection, in order. */
  auths: Record<string, unknown>[]
  /** What the client sent with pause-stream, resume-stream, cancel-stream (ack excluded). */
  commands: { event: string; args: unknown[] }[]
  timer: ReturnType<typeof setInterval> | null
  dropped: boolean
  /** The log's history identity (version 2). */
  epoch: string
  /** The body of its start request (version 3 adds action, context, options, followUp). */
  startBody: Record<string, unknown> | null
  /** How many times `POST /api/streaming/{id}/cancel` reached it. */
  httpCancels: number
}

export interface FakeServer {
  url: string
  wsUrl: string
  sessions: Map<string, FakeSession>
  createSession: () => FakeSession
  start: (id: string) => void
  /** Pauses a session as if another viewer asked for it. */
  pause: (id: string) => void
  /** Loses and rebuilds a session's log (new epoch, new text) and drops its viewers. */
  rebuildLog: (id: string, script: string[]) => void
  /** The Authorization header of every HTTP request, in order. */
  authorizations: (string | undefined)[]
  close: () => Promise<void>
}

const PROVIDER = { provider: 'demo', model: 'demo-model' }

/** What `GET /api/streaming/actions` lists: two built-ins and an operator's own action. */
export const ACTIONS = [
  { id: 'shorten', label: 'Make shorter', needsSelection: true, options: [], insert: 'replace' },
  { id: 'continue', label: 'Continue writing', needsSelection: false, options: [], insert: 'cursor' },
  { id: 'bulletize', label: 'As a list', needsSelection: true, options: [], insert: 'after' },
]

export async function startFakeServer(options: FakeServerOptions = {}): Promise<FakeServer> {
  const script = options.script ?? ['# Title', '\n\nHello ', 'from ', 'the ', '**fake** ', 'server.']
  const intervalMs = options.intervalMs ?? 5
  const sessions = new Map<string, FakeSession>()
  const authorizations: (string | undefined)[] = []
  const scripts = new Map<string, string[]>()
  let counter = 0

  const http = createServer((request, response) => {
    void handleHttp(request, response)
  })
  const io = new Server(http, { transports: ['websocket'] })
  const namespaces = io.of(/^\/stream\/[^/]+$/)

  const namespaceOf = (id: string): Namespace => io.of(`/stream/${id}`)

  function createSession(): FakeSession {
    counter += 1
    const session: FakeSession = {
      id: `00000000-0000-4000-8000-${String(counter).padStart(12, '0')}`,
      state: 'created',
      log: [],
      auths: [],
      commands: [],
      timer: null,
      dropped: false,
      epoch: 'epoch-1',
      startBody: null,
      httpCancels: 0,
    }
    sessions.set(session.id, session)
    return session
  }

  function setState(session: FakeSession, state: SessionState): void {
    session.state = state
    namespaceOf(session.id).emit('stream-state', {
      sessionId: session.id,
      state,
      lastSeq: session.log.length - 1,
      ...(options.version2 ? { epoch: session.epoch } : {}),
    })
  }

  function stop(session: FakeSession): void {
    if (session.timer) {
      clearInterval(session.timer)
      session.timer = null
    }
  }

  function tick(session: FakeSession): void {
    if (session.state !== 'streaming') {
      return
    }
    const nsp = namespaceOf(session.id)
    const seq = session.log.length
    const content = (scripts.get(session.id) ?? script)[seq]
    if (content === undefined) {
      stop(session)
      setState(session, 'completed')
      nsp.emit('complete', { sessionId: session.id, totalChunks: seq, finishReason: 'stop', usage: {} })
      return
    }
    const chunk: StreamChunk = { content, timestamp: Date.now(), metadata: PROVIDER, seq, sessionId: session.id }
    session.log.push(chunk)
    if (options.withholdSeq !== seq) {
      nsp.emit('chunk', chunk)
    }
    if (options.dropAfterSeq?.seq === seq && !session.dropped) {
      session.dropped = true
      for (const socket of nsp.sockets.values()) {
        if (options.dropAfterSeq.how === 'server-disconnect') {
          socket.disconnect(true)
        } else {
          socket.conn.close()
        }
      }
    }
    if (options.failAfterSeq === seq) {
      stop(session)
      session.state = 'failed'
      nsp.emit('stream-error', { sessionId: session.id, error: 'The provider failed.', code: 'provider_error' })
    }
  }

  function start(id: string): void {
    const session = sessions.get(id)
    if (!session) {
      throw new Error(`no session ${id}`)
    }
    setState(session, 'streaming')
    session.timer = setInterval(() => tick(session), intervalMs)
  }

  function pause(id: string): void {
    const session = sessions.get(id)
    if (session) {
      setState(session, 'paused')
    }
  }

  function rebuildLog(id: string, rebuilt: string[]): void {
    const session = sessions.get(id)
    if (!session) {
      return
    }
    scripts.set(id, rebuilt)
    session.epoch = `epoch-${Number(session.epoch.split('-')[1]) + 1}`
    session.log = session.log.map((chunk, seq) => ({ ...chunk, content: rebuilt[seq] ?? '' }))
    for (const socket of namespaceOf(id).sockets.values()) {
      socket.disconnect(true)
    }
  }

  namespaces.use((socket, next) => {
    const id = socket.nsp.name.slice('/stream/'.length)
    const auth = socket.handshake.auth as Record<string, unknown>
    if (options.token && auth.token !== options.token) {
      next(new Error('Unauthorized'))
      return
    }
    next(sessions.has(id) ? undefined : new Error('Session not found'))
  })

  namespaces.on('connection', (socket: Socket) => {
    const session = sessions.get(socket.nsp.name.slice('/stream/'.length))
    if (!session) {
      return
    }
    const auth = socket.handshake.auth as Record<string, unknown>
    session.auths.push(auth)
    let lastSeq = typeof auth.lastSeq === 'number' ? auth.lastSeq : -1
    const current = session.log.length - 1
    if (options.version2 && lastSeq >= 0 && (auth.epoch !== session.epoch || lastSeq > current)) {
      socket.emit('stream-reset', { sessionId: session.id, epoch: session.epoch, lastSeq: current })
      lastSeq = -1
    }
    if (options.version2 && auth.snapshot === true && lastSeq < 0) {
      socket.emit('snapshot', {
        sessionId: session.id,
        epoch: session.epoch,
        text: session.log.map(chunk => chunk.content).join(''),
        lastSeq: current,
        state: session.state,
      })
      lastSeq = current
    }
    const from = options.replayOverlap ? Math.max(0, lastSeq - 1) : lastSeq + 1
    for (const chunk of session.log.slice(from)) {
      socket.emit('chunk', chunk)
    }

    const command = (event: string, state: SessionState) => {
      socket.on(event, (...args: unknown[]) => {
        const ack = args.pop() as (answer: unknown) => void
        session.commands.push({ event, args })
        setState(session, state)
        if (event === 'cancel-stream') {
          // As the real server does: a cancelled session ends with `complete`, before the ack.
          stop(session)
          socket.nsp.emit('complete', {
            sessionId: session.id,
            totalChunks: session.log.length,
            finishReason: 'cancelled',
            usage: null,
          })
        }
        ack({ ok: true, state, lastSeq: session.log.length - 1 })
      })
    }
    command('pause-stream', 'paused')
    command('resume-stream', 'streaming')
    command('cancel-stream', 'cancelled')
  })

  async function readJson(request: IncomingMessage): Promise<Record<string, unknown>> {
    let body = ''
    for await (const part of request) {
      body += String(part)
    }
    return body ? (JSON.parse(body) as Record<string, unknown>) : {}
  }

  async function handleHttp(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const send = (status: number, payload: unknown) => {
      response.writeHead(status, { 'Content-Type': 'application/json' })
      response.end(JSON.stringify(payload))
    }
    const url = request.url ?? ''
    authorizations.push(request.headers.authorization)
    if (options.token && request.headers.authorization !== `Bearer ${options.token}`) {
      send(401, { error: 'Unauthorized' })
      return
    }
    if (request.method === 'GET' && url === '/api/streaming/actions') {
      send(200, { actions: ACTIONS })
      return
    }
    const status = /^\/api\/streaming\/([^/]+)$/.exec(url)
    if (request.method === 'GET' && status?.[1]) {
      const session = sessions.get(status[1])
      if (!session) {
        send(404, { error: 'Session not found' })
        return
      }
      send(200, {
        sessionId: session.id,
        state: session.state,
        chunks: session.log.length,
        text: session.log.map(chunk => chunk.content).join(''),
        ...PROVIDER,
        ...(options.version2 ? { epoch: session.epoch } : {}),
      })
      return
    }
    const cancel = /^\/api\/streaming\/([^/]+)\/cancel$/.exec(url)
    if (request.method === 'POST' && cancel?.[1]) {
      const session = sessions.get(cancel[1])
      if (!session) {
        send(404, { error: 'Session not found' })
        return
      }
      session.httpCancels += 1
      if (session.state === 'completed' || session.state === 'cancelled' || session.state === 'failed') {
        send(409, { error: 'The session already finished' })
        return
      }
      stop(session)
      setState(session, 'cancelled')
      namespaceOf(session.id).emit('complete', {
        sessionId: session.id,
        totalChunks: session.log.length,
        finishReason: 'cancelled',
        usage: null,
      })
      send(200, { status: 'cancelled' })
      return
    }
    if (request.method === 'POST' && url === '/api/streaming/session') {
      await readJson(request)
      if (options.sessionStatus && options.sessionStatus !== 200) {
        send(options.sessionStatus, { error: 'Too many live sessions for this user' })
        return
      }
      const session = createSession()
      send(200, { sessionId: session.id, wsEndpoint: `/ws/stream/${session.id}` })
      return
    }
    const match = /^\/api\/streaming\/([^/]+)\/start$/.exec(url)
    if (request.method === 'POST' && match?.[1]) {
      const session = sessions.get(match[1])
      if (!session) {
        send(404, { error: 'Session not found' })
        return
      }
      const body = await readJson(request)
      if (typeof body.prompt !== 'string' && typeof body.action !== 'string') {
        send(400, { error: 'prompt must be a string' })
        return
      }
      session.startBody = body
      const answer = options.answer?.(body)
      if (answer) {
        scripts.set(session.id, answer)
      }
      start(session.id)
      send(200, { status: 'started' })
      return
    }
    send(404, { error: 'Not found' })
  }

  await new Promise<void>(resolve => http.listen(0, '127.0.0.1', resolve))
  const { port } = http.address() as AddressInfo

  return {
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}`,
    sessions,
    createSession,
    start,
    pause,
    rebuildLog,
    authorizations,
    close: async () => {
      sessions.forEach(stop)
      await io.close()
    },
  }
}
