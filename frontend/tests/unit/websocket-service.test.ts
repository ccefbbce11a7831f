// @vitest-environment node
import { afterEach, describe, expect, it, vi } from 'vitest'

import type {
  StreamChunk,
  StreamComplete,
  StreamError,
  StreamReset,
  StreamSnapshot,
  StreamState,
} from '../../src/streaming'
import { StreamingWebSocketService } from '../../src/streaming'
import { type FakeServer, type FakeServerOptions, startFakeServer } from './fake-server'

const SCRIPT = Array.from({ length: 30 }, (_, index) => `chunk-${index} `)

let server: FakeServer | null = null
let services: StreamingWebSocketService[] = []

afterEach(async () => {
  services.forEach(service => service.disconnect())
  services = []
  await server?.close()
  server = null
})

interface Recorder {
  target: EventTarget
  chunks: StreamChunk[]
  states: StreamState[]
  errors: StreamError[]
  completed: Promise<StreamComplete>
  failed: Promise<StreamError>
}

function record(): Recorder {
  const target = new EventTarget()
  const recorder = { target, chunks: [], states: [], errors: [] } as unknown as Recorder
  target.addEventListener('streaming:chunk', event => recorder.chunks.push((event as CustomEvent<StreamChunk>).detail))
  target.addEventListener('streaming:state', event => recorder.states.push((event as CustomEvent<StreamState>).detail))
  recorder.completed = new Promise(resolve =>
    target.addEventListener('streaming:complete', event => resolve((event as CustomEvent<StreamComplete>).detail)),
  )
  recorder.failed = new Promise(resolve =>
    target.addEventListener('streaming:error', event => {
      const detail = (event as CustomEvent<StreamError>).detail
      recorder.errors.push(detail)
      resolve(detail)
    }),
  )
  return recorder
}

async function setup(options: FakeServerOptions, recorder: Recorder) {
  server = await startFakeServer({ script: SCRIPT, ...options })
  const service = new StreamingWebSocketService({ baseUrl: server.wsUrl, target: recorder.target, reconnectDelay: 10 })
  services.push(service)
  const session = server.createSession()
  await service.connect(session.id)
  return { server, service, session }
}

function expectEachSeqOnce(recorder: Recorder, service: StreamingWebSocketService): void {
  const expected = SCRIPT.map((_, index) => index)
  expect(recorder.chunks.map(chunk => chunk.seq)).toEqual(expected)
  expect(service.receivedSeqs).toEqual(expected)
  expect(recorder.chunks.map(chunk => chunk.content).join('')).toBe(SCRIPT.join(''))
}

describe('StreamingWebSocketService', () => {
  it('joins /stream/<id> and dispatches chunk, state and complete events for its session', async () => {
    const recorder = record()
    const { server, service, session } = await setup({}, recorder)
    server.start(session.id)

    const complete = await recorder.completed
    expect(complete).toMatchObject({ sessionId: session.id, totalChunks: SCRIPT.length })
    expectEachSeqOnce(recorder, service)
    expect(recorder.chunks.every(chunk => chunk.sessionId === session.id)).toBe(true)
    expect(recorder.chunks[0]?.metadata).toMatchObject({ provider: 'demo', model: 'demo-model' })
    expect(recorder.states.map(state => state.state)).toContain('streaming')
    expect(session.auths).toEqual([{}])
  })

  it.each(['server-disconnect', 'transport-close'] as const)(
    'resumes from lastSeq after a %s mid-stream: nothing lost, nothing doubled',
    async how => {
      const recorder = record()
      const { server, service, session } = await setup({ dropAfterSeq: { seq: 9, how } }, recorder)
      server.start(session.id)

      await recorder.completed
      expectEachSeqOnce(recorder, service)
      expect(session.auths).toHaveLength(2)
      expect(session.auths[0]).toEqual({})
      expect(session.auths[1]?.lastSeq).toBeGreaterThanOrEqual(8)
      expect(session.auths[1]?.lastSeq).toBeLessThanOrEqual(9)
    },
  )

  it('drops chunks the server sends twice', async () => {
    const recorder = record()
    const { server, service, session } = await setup(
      { dropAfterSeq: { seq: 5, how: 'server-disconnect' }, replayOverlap: true },
      recorder,
    )
    server.start(session.id)

    await recorder.completed
    expectEachSeqOnce(recorder, service)
  })

  it('reconnects with lastSeq when a seq is missing, to have it replayed', async () => {
    const recorder = record()
    const { server, service, session } = await setup({ withholdSeq: 12 }, recorder)
    server.start(session.id)

    await recorder.completed
    expectEachSeqOnce(recorder, service)
    expect(session.auths[1]).toEqual({ lastSeq: 11 })
  })

  it('sends pause-stream, resume-stream and cancel-stream with no argument and returns the ack', async () => {
    const recorder = record()
    const { server, service, session } = await setup({ intervalMs: 20 }, recorder)
    server.start(session.id)

    await expect(service.pause()).resolves.toMatchObject({ ok: true, state: 'paused' })
    await expect(service.resume()).resolves.toMatchObject({ ok: true, state: 'streaming' })
    await expect(service.cancel()).resolves.toMatchObject({ ok: true, state: 'cancelled' })
    expect(session.commands).toEqual([
      { event: 'pause-stream', args: [] },
      { event: 'resume-stream', args: [] },
      { event: 'cancel-stream', args: [] },
    ])
  })

  it('rejects connect for an unknown session', async () => {
    server = await startFakeServer()
    const service = new StreamingWebSocketService({ baseUrl: server.wsUrl, target: new EventTarget() })
    services.push(service)
    await expect(service.connect('no-such-session')).rejects.toThrow('Session not found')
  })

  it('reports the stream lost after maxReconnectAttempts failed reconnects', async () => {
    const recorder = record()
    server = await startFakeServer({ script: SCRIPT, intervalMs: 20 })
    const service = new StreamingWebSocketService({
      baseUrl: server.wsUrl,
      target: recorder.target,
      reconnectDelay: 5,
      maxReconnectAttempts: 2,
      timeout: 500,
    })
    services.push(service)
    const session = server.createSession()
    await service.connect(session.id)
    server.start(session.id)
    await server.close()
    server = null

    const error = await recorder.failed
    expect(error).toMatchObject({ sessionId: session.id, code: 'connection_lost' })
    expect(service.connected).toBe(false)
  })

  it('passes a provider failure on as streaming:error', async () => {
    const recorder = record()
    const { server, session } = await setup({ failAfterSeq: 3 }, recorder)
    server.start(session.id)

    const error = await recorder.failed
    expect(error).toEqual({ sessionId: session.id, error: 'The provider failed.', code: 'provider_error' })
    expect(recorder.chunks).toHaveLength(4)
  })
})

describe('StreamingWebSocketService.on', () => {
  it('hands each handler the typed detail of its own target’s events until unsubscribed', async () => {
    server = await startFakeServer({ script: SCRIPT })
    const one = new StreamingWebSocketService({ baseUrl: server.wsUrl, target: new EventTarget() })
    const two = new StreamingWebSocketService({ baseUrl: server.wsUrl, target: new EventTarget() })
    services.push(one, two)
    const heardByOne: string[] = []
    const heardByTwo: string[] = []
    const offOne = one.on('streaming:chunk', chunk => heardByOne.push(chunk.content))
    two.on('streaming:chunk', chunk => heardByTwo.push(chunk.content))
    const done = new Promise<StreamComplete>(resolve => one.on('streaming:complete', resolve))

    const session = server.createSession()
    await one.connect(session.id)
    server.start(session.id)
    await done
    expect(heardByOne.join('')).toBe(SCRIPT.join(''))
    expect(heardByTwo).toEqual([])

    offOne()
    const again = server.createSession()
    const doneAgain = new Promise<StreamComplete>(resolve => one.on('streaming:complete', resolve))
    await one.connect(again.id)
    server.start(again.id)
    await doneAgain
    expect(heardByOne.join('')).toBe(SCRIPT.join(''))
  })
})

describe('StreamingWebSocketService with the version 2 protocol', () => {
  async function connected(options: FakeServerOptions) {
    server = await startFakeServer({ script: SCRIPT, version2: true, ...options })
    const recorder = record()
    const service = new StreamingWebSocketService({ baseUrl: server.wsUrl, target: recorder.target, reconnectDelay: 10 })
    services.push(service)
    const resets: StreamReset[] = []
    const snapshots: StreamSnapshot[] = []
    service.on('streaming:reset', reset => resets.push(reset))
    service.on('streaming:snapshot', snapshot => snapshots.push(snapshot))
    return { server, service, recorder, resets, snapshots }
  }

  it('remembers the epoch and sends it with lastSeq when it reconnects', async () => {
    const { server, service, recorder } = await connected({ dropAfterSeq: { seq: 9, how: 'server-disconnect' } })
    const session = server.createSession()
    await service.connect(session.id)
    server.start(session.id)
    await recorder.completed
    expect(service.epoch).toBe('epoch-1')
    expect(session.auths[1]).toMatchObject({ epoch: 'epoch-1' })
    expect(session.auths[1]?.lastSeq).toBeGreaterThanOrEqual(8)
    expectEachSeqOnce(recorder, service)
  })

  it('starts over on stream-reset: the text is the rebuilt log, never two histories spliced', async () => {
    const { server, service, recorder, resets } = await connected({ intervalMs: 10 })
    const session = server.createSession()
    await service.connect(session.id)
    server.start(session.id)
    await new Promise<void>(resolve => {
      const off = service.on('streaming:chunk', chunk => {
        if (chunk.seq === 10) {
          off()
          resolve()
        }
      })
    })
    const rebuilt = SCRIPT.map(content => content.toUpperCase())
    server.rebuildLog(session.id, rebuilt)
    await recorder.completed

    expect(resets).toHaveLength(1)
    expect(resets[0]).toMatchObject({ sessionId: session.id, epoch: 'epoch-2' })
    expect(service.epoch).toBe('epoch-2')
    const afterReset = recorder.chunks.slice(recorder.chunks.findLastIndex(chunk => chunk.seq === 0))
    expect(afterReset.map(chunk => chunk.content).join('')).toBe(rebuilt.join(''))
    expect(afterReset.map(chunk => chunk.seq)).toEqual(SCRIPT.map((_, index) => index))
  })

  it('joins late with a snapshot, then takes the live chunks after it', async () => {
    const { server, service, recorder, snapshots } = await connected({ intervalMs: 10 })
    const session = server.createSession()
    server.start(session.id)
    await vi.waitFor(() => expect(session.log.length).toBeGreaterThan(5))
    await service.connect(session.id, { snapshot: true })
    await recorder.completed

    expect(session.auths[0]).toEqual({ snapshot: true })
    expect(snapshots).toHaveLength(1)
    const snapshot = snapshots[0]!
    expect(recorder.chunks[0]?.seq).toBe(snapshot.lastSeq + 1)
    expect(snapshot.text + recorder.chunks.map(chunk => chunk.content).join('')).toBe(SCRIPT.join(''))
  })

  it('falls back to the replay when the server sends no snapshot', async () => {
    server = await startFakeServer({ script: SCRIPT, intervalMs: 10 })
    const recorder = record()
    const service = new StreamingWebSocketService({ baseUrl: server.wsUrl, target: recorder.target })
    services.push(service)
    const session = server.createSession()
    server.start(session.id)
    await vi.waitFor(() => expect(session.log.length).toBeGreaterThan(5))
    await service.connect(session.id, { snapshot: true })
    await recorder.completed
    expectEachSeqOnce(recorder, service)
  })
})

describe('getToken', () => {
  it('is asked for every connect and every HTTP request, and sent as auth.token and a bearer header', async () => {
    server = await startFakeServer({ script: SCRIPT, token: 'secret', dropAfterSeq: { seq: 5, how: 'server-disconnect' } })
    let calls = 0
    const recorder = record()
    const service = new StreamingWebSocketService({
      baseUrl: server.wsUrl,
      apiBaseUrl: server.url,
      target: recorder.target,
      reconnectDelay: 10,
      getToken: async () => {
        calls += 1
        return 'secret'
      },
    })
    services.push(service)
    const { sessionId } = await service.sessions.create('me', {})
    await service.connect(sessionId)
    await service.sessions.start(sessionId, 'prompt')
    await recorder.completed

    const session = server.sessions.get(sessionId)
    expect(session?.auths.map(auth => auth.token)).toEqual(['secret', 'secret'])
    expect(server.authorizations).toEqual(['Bearer secret', 'Bearer secret'])
    expect(calls).toBe(4)
  })

  it('sends nothing when there is no token, and the server refuses', async () => {
    server = await startFakeServer({ script: SCRIPT, token: 'secret' })
    const service = new StreamingWebSocketService({ baseUrl: server.wsUrl, apiBaseUrl: server.url, getToken: () => null })
    services.push(service)
    await expect(service.sessions.create('me', {})).rejects.toThrow('Unauthorized')
    expect(server.authorizations).toEqual([undefined])
    const session = server.createSession()
    await expect(service.connect(session.id)).rejects.toThrow('Unauthorized')
  })
})
