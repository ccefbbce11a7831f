/**
 * The controller behind useStreaming, driven without React: the same fake server and real
 * service as the hook's tests, the state read from getSnapshot() and subscribe().
 */
import type { Editor } from '@tiptap/core'
import { afterEach, describe, expect, it, type Mock, vi } from 'vitest'

import { StreamingWebSocketService } from '../../src/streaming'
import { StreamingSessionClient } from '../../src/streaming/session-client'
import {
  StreamingController,
  type StreamingControllerOptions,
  type StreamingControllerState,
} from '../../src/streaming/streaming-controller'
import { type FakeServer, type FakeServerOptions, startFakeServer } from './fake-server'
import { createEditor, streamingNodes, streamText } from './helpers'

interface Driven {
  editor: Editor
  service: StreamingWebSocketService
  controller: StreamingController
  state: () => StreamingControllerState
  /** Every state the controller published, in order. */
  published: StreamingControllerState[]
  callbacks: { onChunk: Mock<(chunk: string) => void>; onComplete: Mock<() => void>; onError: Mock<(error: Error) => void> }
  detach: () => void
}

let server: FakeServer | null = null
let cleanups: (() => void)[] = []

afterEach(async () => {
  vi.restoreAllMocks()
  cleanups.forEach(cleanup => cleanup())
  cleanups = []
  await server?.close()
  server = null
})

async function startServer(options: FakeServerOptions = {}): Promise<FakeServer> {
  server = await startFakeServer(options)
  return server
}

const LONG_SCRIPT = Array.from({ length: 50 }, (_, i) => `w${i} `)

function drive(fake: FakeServer, options: Partial<StreamingControllerOptions> = {}): Driven {
  const editor = createEditor('<p>Intro</p>')
  const service = new StreamingWebSocketService({ baseUrl: fake.wsUrl, reconnectDelay: 10 })
  const callbacks = {
    onChunk: vi.fn<(chunk: string) => void>(),
    onComplete: vi.fn<() => void>(),
    onError: vi.fn<(error: Error) => void>(),
  }
  const controller = new StreamingController({ editor, service, apiBaseUrl: fake.url, ...callbacks, ...options })
  const published: StreamingControllerState[] = []
  const unsubscribe = controller.subscribe(() => published.push(controller.getSnapshot()))
  const detach = controller.attach()
  cleanups.push(() => {
    unsubscribe()
    detach()
    controller.dispose()
    service.disconnect()
    editor.destroy()
  })
  return { editor, service, controller, state: controller.getSnapshot, published, callbacks, detach }
}

describe('StreamingController', () => {
  it('starts idle', async () => {
    const fake = await startServer()
    const { state } = drive(fake)
    expect(state()).toEqual({
      isStreaming: false,
      sessionId: null,
      streamId: null,
      state: null,
      error: null,
      provider: null,
      model: null,
      tokens: null,
      timeToFirstToken: null,
    })
  })

  it('creates a session, streams it into the editor and publishes each step of the way', async () => {
    const fake = await startServer()
    const { editor, controller, state, published, callbacks } = drive(fake)

    await controller.startStreaming('Tell me something')
    const { sessionId } = state()
    expect(sessionId).toBeTruthy()
    expect(fake.sessions.get(sessionId ?? '')?.auths).toHaveLength(1)
    await vi.waitFor(() => expect(callbacks.onComplete).toHaveBeenCalledTimes(1))

    expect(callbacks.onChunk.mock.calls.map(([chunk]) => chunk).join('')).toBe(
      '# Title\n\nHello from the **fake** server.',
    )
    expect(state()).toMatchObject({
      isStreaming: false,
      sessionId,
      streamId: sessionId,
      state: 'completed',
      provider: 'demo',
      model: 'demo-model',
      error: null,
    })
    expect(state().timeToFirstToken).toEqual(expect.any(Number))
    expect(editor.getHTML()).toContain('<h1>Title</h1><p>Hello from the <strong>fake</strong> server.</p>')
    expect(streamingNodes(editor)[0]?.node.attrs).toMatchObject({ streamId: sessionId, isActive: false, chunkCount: 6 })
    expect(editor.storage.streaming.transport).toBe(controller.transport)
    expect(callbacks.onError).not.toHaveBeenCalled()

    const states = published.map(snapshot => snapshot.state)
    expect(states.slice(0, 2)).toEqual([null, 'created'])
    expect(states).toContain('streaming')
    expect(states.at(-1)).toBe('completed')
    // A new object for every change, and only for a change.
    expect(new Set(published).size).toBe(published.length)
    published.slice(1).forEach((snapshot, index) => expect(snapshot).not.toEqual(published[index]))
  })

  it('takes defaults from the latest options', async () => {
    const fake = await startServer()
    const { editor, controller, callbacks } = drive(fake)
    const onComplete = vi.fn()
    controller.setOptions({
      editor,
      service: controller.service,
      apiBaseUrl: fake.url,
      format: 'text',
      animationType: 'fade',
      onComplete,
    })
    await controller.startStreaming('plain')
    await vi.waitFor(() => expect(onComplete).toHaveBeenCalledTimes(1))
    expect(callbacks.onComplete).not.toHaveBeenCalled()
    const node = streamingNodes(editor)[0]?.node
    expect(node?.attrs.animationType).toBe('fade')
    expect(streamText(editor, String(node?.attrs.streamId))).toBe('# Title\n\nHello from the **fake** server.')
  })

  it('fails without a stream when the session cannot be created', async () => {
    const fake = await startServer({ sessionStatus: 429 })
    const { editor, controller, state, callbacks } = drive(fake)
    await controller.startStreaming('refused')

    expect(callbacks.onError).toHaveBeenCalledTimes(1)
    expect(callbacks.onError.mock.calls[0]?.[0].message).toBe('Too many live sessions for this user')
    expect(state()).toMatchObject({
      isStreaming: false,
      state: 'failed',
      error: 'Too many live sessions for this user',
      streamId: null,
    })
    expect(streamingNodes(editor)).toHaveLength(0)
  })

  it('ends the stream as failed on a stream-error and keeps what arrived', async () => {
    const fake = await startServer({ failAfterSeq: 2 })
    const { editor, controller, state, callbacks } = drive(fake)
    await controller.startStreaming('fail please')
    await vi.waitFor(() => expect(callbacks.onError).toHaveBeenCalledTimes(1))

    expect(callbacks.onError.mock.calls[0]?.[0].message).toBe('The provider failed.')
    expect(state()).toMatchObject({ isStreaming: false, state: 'failed', error: 'The provider failed.' })
    expect(editor.storage.streaming.streamManager.get(state().streamId)).toMatchObject({
      status: 'error',
      finished: true,
      error: 'The provider failed.',
    })
    expect(editor.getText()).toContain('Hello from')
  })

  it('pauses, resumes and cancels through the server', async () => {
    const fake = await startServer({ intervalMs: 30, script: LONG_SCRIPT })
    const { editor, controller, state, callbacks } = drive(fake)
    await controller.startStreaming('long')
    await vi.waitFor(() => expect(callbacks.onChunk).toHaveBeenCalled())
    const session = fake.sessions.get(state().sessionId ?? '')

    expect(controller.pauseStreaming()).toBe(true)
    await vi.waitFor(() => expect(state().state).toBe('paused'))
    expect(session?.state).toBe('paused')
    expect(controller.pauseStreaming()).toBe(false)

    expect(controller.resumeStreaming()).toBe(true)
    await vi.waitFor(() => expect(state().state).toBe('streaming'))

    expect(await controller.cancelStreaming()).toBe(true)
    expect(state()).toMatchObject({ isStreaming: false, state: 'cancelled', error: null })
    expect(callbacks.onComplete).toHaveBeenCalledTimes(1)
    expect(session?.commands.map(command => command.event)).toEqual(['pause-stream', 'resume-stream', 'cancel-stream'])
    expect(editor.storage.streaming.streamManager.get(state().streamId)).toMatchObject({
      status: 'cancelled',
      finished: true,
    })
    expect(await controller.cancelStreaming()).toBe(false)
  })

  it('has nothing to cancel before a stream', async () => {
    const fake = await startServer()
    const { controller, state } = drive(fake)
    expect(await controller.cancelStreaming()).toBe(false)
    expect(state().state).toBeNull()
  })

  it('cancels over HTTP when the socket is not connected', async () => {
    const fake = await startServer({ intervalMs: 30, script: LONG_SCRIPT })
    const { editor, service, controller, state, callbacks } = drive(fake)
    await controller.startStreaming('long')
    await vi.waitFor(() => expect(callbacks.onChunk).toHaveBeenCalled())
    const cancel = vi.spyOn(StreamingSessionClient.prototype, 'cancel').mockResolvedValue({ status: 'cancelled' })
    service.disconnect()

    expect(await controller.cancelStreaming()).toBe(true)
    expect(cancel).toHaveBeenCalledWith(state().sessionId)
    expect(state()).toMatchObject({ isStreaming: false, state: 'cancelled', error: null })
    expect(editor.storage.streaming.streamManager.get(state().streamId)?.status).toBe('cancelled')
  })

  it('reports a refused cancel as an error', async () => {
    const fake = await startServer({ intervalMs: 30, script: LONG_SCRIPT })
    const { service, controller, state, callbacks } = drive(fake)
    await controller.startStreaming('long')
    await vi.waitFor(() => expect(callbacks.onChunk).toHaveBeenCalled())
    vi.spyOn(service, 'cancel').mockResolvedValue({ ok: false, error: 'No.' })

    expect(await controller.cancelStreaming()).toBe(false)
    expect(state()).toMatchObject({ isStreaming: false, state: 'cancelled', error: 'No.' })
  })

  it('cancels the previous session on the server when a new stream starts', async () => {
    const fake = await startServer({ intervalMs: 30, script: LONG_SCRIPT })
    const { editor, controller, state, callbacks } = drive(fake)
    await controller.startStreaming('first')
    await vi.waitFor(() => expect(callbacks.onChunk).toHaveBeenCalled())
    const first = state().sessionId ?? ''
    const firstStream = state().streamId

    await controller.startStreaming('second')
    expect(state().sessionId).not.toBe(first)
    expect(fake.sessions.get(first)?.commands.map(c => c.event)).toContain('cancel-stream')
    expect(editor.storage.streaming.streamManager.get(firstStream)).toMatchObject({ status: 'cancelled', finished: true })
    await vi.waitFor(() => expect(state().state).toBe('streaming'))
    expect(state()).toMatchObject({ isStreaming: true, streamId: state().sessionId })
  })

  it('keeps two controllers on one page to their own sessions', async () => {
    const fake = await startServer()
    const one = drive(fake)
    const two = drive(fake)
    await one.controller.startStreaming('one')
    await vi.waitFor(() => expect(one.callbacks.onComplete).toHaveBeenCalled())

    expect(two.callbacks.onChunk).not.toHaveBeenCalled()
    expect(two.state().state).toBeNull()
    expect(streamingNodes(two.editor)).toHaveLength(0)
  })

  it('stops following its session once detached', async () => {
    const fake = await startServer({ intervalMs: 30 })
    const { controller, state, callbacks, detach } = drive(fake)
    await controller.startStreaming('detached')
    detach()
    const session = fake.sessions.get(state().sessionId ?? '')
    await vi.waitFor(() => expect(session?.state).toBe('completed'))
    await new Promise(resolve => setTimeout(resolve, 30))

    expect(callbacks.onChunk).not.toHaveBeenCalled()
    expect(callbacks.onComplete).not.toHaveBeenCalled()
    expect(state()).toMatchObject({ isStreaming: true, state: 'streaming' })
  })

  it('regenerates into the same stream from a new session, keeping both responses', async () => {
    const fake = await startServer()
    const { editor, controller, state } = drive(fake, { review: true })
    const before = editor.getJSON()
    await controller.startStreaming('Tell me something', { maxTokens: 50 })
    const streamId = state().streamId ?? ''
    const manager = editor.storage.streaming.streamManager
    await vi.waitFor(() => expect(manager.get(streamId)?.decision).toBe('pending'))
    const first = state().sessionId

    expect(controller.regenerate(streamId)).toBe(true)
    await vi.waitFor(() => expect(manager.get(streamId)?.responses).toHaveLength(2))
    expect(state().sessionId).not.toBe(first)
    expect(state()).toMatchObject({ streamId, state: 'completed', isStreaming: false })
    expect(fake.sessions.size).toBe(2)
    expect(streamingNodes(editor)).toHaveLength(1)

    expect(controller.showResponse(0, streamId)).toBe(true)
    expect(manager.get(streamId)?.responseIndex).toBe(0)
    expect(controller.showResponse(5, streamId)).toBe(false)
    expect(controller.reject()).toBe(true)
    expect(editor.getJSON()).toEqual(before)
    expect(manager.get(streamId)?.decision).toBe('rejected')
  })

  it('accepts a reviewed response as plain content', async () => {
    const fake = await startServer()
    const { editor, controller, state, callbacks } = drive(fake, { review: true })
    await controller.startStreaming('Tell me something')
    await vi.waitFor(() => expect(callbacks.onComplete).toHaveBeenCalled())
    expect(controller.accept(state().streamId ?? undefined)).toBe(true)
    expect(editor.getHTML()).toBe('<p>Intro</p><h1>Title</h1><p>Hello from the <strong>fake</strong> server.</p>')
  })

  it('watches a session started elsewhere, joining late with a snapshot', async () => {
    const fake = await startServer({ version2: true, intervalMs: 10 })
    const session = fake.createSession()
    fake.start(session.id)
    await vi.waitFor(() => expect(session.log.length).toBeGreaterThan(2))
    const { editor, controller, state, callbacks } = drive(fake)

    await controller.watchStreaming(session.id)
    expect(state()).toMatchObject({ sessionId: session.id, streamId: session.id, provider: 'demo', model: 'demo-model' })
    await vi.waitFor(() => expect(state().state).toBe('completed'))
    expect(state().isStreaming).toBe(false)
    expect(session.auths[0]).toEqual({ snapshot: true })
    expect(editor.getHTML()).toContain('<h1>Title</h1><p>Hello from the <strong>fake</strong> server.</p>')
    expect(callbacks.onChunk.mock.calls.length).toBeLessThan(6)
    expect(editor.storage.streaming.streamManager.get(session.id)?.review).toBe(false)
  })

  it('watches a finished session without staying in the streaming state', async () => {
    const fake = await startServer({ intervalMs: 5 })
    const session = fake.createSession()
    fake.start(session.id)
    await vi.waitFor(() => expect(session.state).toBe('completed'))
    const { controller, state } = drive(fake)

    await controller.watchStreaming(session.id)
    expect(state()).toMatchObject({ isStreaming: false, state: 'completed' })
  })

  it('follows a pause asked for by another viewer', async () => {
    const fake = await startServer({ intervalMs: 30, script: LONG_SCRIPT })
    const session = fake.createSession()
    fake.start(session.id)
    const { editor, controller, state } = drive(fake)
    await controller.watchStreaming(session.id)
    await vi.waitFor(() => expect(state().state).toBe('streaming'))
    fake.pause(session.id)
    await vi.waitFor(() => expect(state().state).toBe('paused'))
    expect(editor.storage.streaming.streamManager.get(session.id)?.status).toBe('paused')
  })

  it('fails the watch of an unknown session', async () => {
    const fake = await startServer()
    const { controller, state, callbacks } = drive(fake)
    await controller.watchStreaming('no-such-session')
    expect(callbacks.onError).toHaveBeenCalledTimes(1)
    expect(state()).toMatchObject({ isStreaming: false, state: 'failed', error: 'Session not found' })
  })

  it('rebuilds the text after a stream-reset', async () => {
    const fake = await startServer({ version2: true, intervalMs: 20, script: Array.from({ length: 20 }, (_, i) => `w${i} `) })
    const { editor, controller, state, callbacks } = drive(fake, { format: 'text' })
    await controller.startStreaming('reset me')
    await vi.waitFor(() => expect(callbacks.onChunk.mock.calls.length).toBeGreaterThan(5))
    const rebuilt = Array.from({ length: 20 }, (_, i) => `W${i} `)
    fake.rebuildLog(state().sessionId ?? '', rebuilt)
    await vi.waitFor(() => expect(state().state).toBe('completed'))
    expect(streamText(editor, state().streamId ?? '')).toBe(rebuilt.join(''))
  })

  it('sends the token of the latest getToken with every HTTP request', async () => {
    const fake = await startServer()
    const { editor, controller, callbacks } = drive(fake, { getToken: () => 'first-token' })
    controller.setOptions({
      editor,
      service: controller.service,
      apiBaseUrl: fake.url,
      ...callbacks,
      getToken: () => 'second-token',
    })
    await controller.startStreaming('with a token')
    await vi.waitFor(() => expect(callbacks.onComplete).toHaveBeenCalled())
    expect(fake.authorizations.length).toBeGreaterThanOrEqual(2)
    expect(new Set(fake.authorizations)).toEqual(new Set(['Bearer second-token']))
  })
})

describe('StreamingController and its service', () => {
  it('makes, and on dispose disconnects, its own service when given none', () => {
    const editor = createEditor()
    const controller = new StreamingController({ editor })
    expect(controller.ownsService).toBe(true)
    expect(controller.service).toBeInstanceOf(StreamingWebSocketService)
    const disconnect = vi.spyOn(controller.service, 'disconnect')
    controller.dispose()
    expect(disconnect).toHaveBeenCalledTimes(1)
    editor.destroy()
  })

  it('leaves a given service connected on dispose', () => {
    const editor = createEditor()
    const service = new StreamingWebSocketService()
    const controller = new StreamingController({ editor, service })
    expect(controller.ownsService).toBe(false)
    expect(controller.service).toBe(service)
    const disconnect = vi.spyOn(service, 'disconnect')
    controller.dispose()
    expect(disconnect).not.toHaveBeenCalled()
    editor.destroy()
  })

  it('sends pause, resume and cancel of its transport through the service', async () => {
    const editor = createEditor()
    const service = new StreamingWebSocketService()
    const controller = new StreamingController({ editor, service })
    const ack = { ok: true }
    const pause = vi.spyOn(service, 'pause').mockResolvedValue(ack)
    const resume = vi.spyOn(service, 'resume').mockResolvedValue(ack)
    const cancel = vi.spyOn(service, 'cancel').mockResolvedValue(ack)
    await controller.transport.pause()
    await controller.transport.resume()
    await controller.transport.cancel()
    expect([pause, resume, cancel].map(spy => spy.mock.calls.length)).toEqual([1, 1, 1])
    // Nothing to regenerate before a prompt.
    await expect(controller.transport.regenerate?.()).resolves.toBeUndefined()
    expect(controller.getSnapshot().sessionId).toBeNull()
    editor.destroy()
  })
})
