import type { Editor } from '@tiptap/core'
import { createRoot, type Root } from 'react-dom/client'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'

import { StreamingWebSocketService, useStreaming, type UseStreamingOptions } from '../../src/streaming'
import { type FakeServer, type FakeServerOptions, startFakeServer } from './fake-server'
import { createEditor, streamingNodes, streamText } from './helpers'

type HookResult = ReturnType<typeof useStreaming>

interface Mounted {
  editor: Editor
  service: StreamingWebSocketService
  result: () => HookResult
  callbacks: { onChunk: ReturnType<typeof vi.fn>; onComplete: ReturnType<typeof vi.fn>; onError: ReturnType<typeof vi.fn> }
}

let server: FakeServer | null = null
let cleanups: (() => void)[] = []

// The hook's state changes come from the network, as in a browser, not from act() scopes.
beforeAll(() => {
  Object.assign(globalThis, { IS_REACT_ACT_ENVIRONMENT: false })
})
afterAll(() => {
  Object.assign(globalThis, { IS_REACT_ACT_ENVIRONMENT: true })
})

afterEach(async () => {
  cleanups.forEach(cleanup => cleanup())
  cleanups = []
  await server?.close()
  server = null
})

async function mountHook(fake: FakeServer, options: Partial<UseStreamingOptions> = {}): Promise<Mounted> {
  const editor = createEditor('<p>Intro</p>')
  const service = new StreamingWebSocketService({ baseUrl: fake.wsUrl, reconnectDelay: 10 })
  const callbacks = { onChunk: vi.fn(), onComplete: vi.fn(), onError: vi.fn() }
  let latest: HookResult | null = null

  function Harness() {
    latest = useStreaming({ editor, service, apiBaseUrl: fake.url, ...callbacks, ...options })
    return null
  }

  const container = document.createElement('div')
  const root: Root = createRoot(container)
  root.render(<Harness />)
  await vi.waitFor(() => expect(latest).not.toBeNull())
  cleanups.push(() => {
    root.unmount()
    service.disconnect()
    editor.destroy()
  })
  return {
    editor,
    service,
    callbacks,
    result: () => {
      if (!latest) {
        throw new Error('hook not rendered')
      }
      return latest
    },
  }
}

async function startServer(options: FakeServerOptions = {}): Promise<FakeServer> {
  server = await startFakeServer(options)
  return server
}

describe('useStreaming', () => {
  it('creates a session, streams its chunks into the editor and finishes with rich content', async () => {
    const fake = await startServer()
    const { editor, result, callbacks } = await mountHook(fake)
    expect(result().isStreaming).toBe(false)

    await result().startStreaming('Tell me something')
    await vi.waitFor(() => expect(result().sessionId).toBeTruthy())
    const sessionId = result().sessionId
    await vi.waitFor(() => expect(callbacks.onComplete).toHaveBeenCalledTimes(1))

    expect(callbacks.onChunk.mock.calls.map(([chunk]) => chunk).join('')).toBe(
      '# Title\n\nHello from the **fake** server.',
    )
    await vi.waitFor(() =>
      expect(result()).toMatchObject({ isStreaming: false, state: 'completed', provider: 'demo', model: 'demo-model' }),
    )
    expect(result().error).toBeNull()
    expect(editor.getHTML()).toContain('<h1>Title</h1><p>Hello from the <strong>fake</strong> server.</p>')
    expect(streamingNodes(editor)[0]?.node.attrs).toMatchObject({ streamId: sessionId, isActive: false, chunkCount: 6 })
    expect(callbacks.onError).not.toHaveBeenCalled()
  })

  it('keeps the text as it arrived in plain-text mode', async () => {
    const fake = await startServer()
    const { editor, result, callbacks } = await mountHook(fake, { format: 'text' })
    await result().startStreaming('plain')
    await vi.waitFor(() => expect(callbacks.onComplete).toHaveBeenCalled())
    expect(streamText(editor, String(streamingNodes(editor)[0]?.node.attrs.streamId))).toBe('# Title\n\nHello from the **fake** server.')
  })

  it('calls onError for a mid-stream failure and keeps what arrived', async () => {
    const fake = await startServer({ failAfterSeq: 2 })
    const { editor, result, callbacks } = await mountHook(fake)
    await result().startStreaming('fail please')
    await vi.waitFor(() => expect(callbacks.onError).toHaveBeenCalledTimes(1))

    expect(callbacks.onError.mock.calls[0]?.[0]).toBeInstanceOf(Error)
    expect((callbacks.onError.mock.calls[0]?.[0] as Error).message).toBe('The provider failed.')
    await vi.waitFor(() =>
      expect(result()).toMatchObject({ isStreaming: false, state: 'failed', error: 'The provider failed.' }),
    )
    expect(editor.storage.streaming.streamManager.get(result().sessionId)).toMatchObject({ status: 'error' })
    expect(editor.getText()).toContain('Hello from')
  })

  it('calls onError when the session cannot be created', async () => {
    const fake = await startServer({ sessionStatus: 429 })
    const { editor, result, callbacks } = await mountHook(fake)
    await result().startStreaming('refused')

    expect(callbacks.onError).toHaveBeenCalledTimes(1)
    expect((callbacks.onError.mock.calls[0]?.[0] as Error).message).toBe('Too many live sessions for this user')
    await vi.waitFor(() => expect(result()).toMatchObject({ isStreaming: false, state: 'failed' }))
    expect(streamingNodes(editor)).toHaveLength(0)
  })

  it('cancels the previous session on the server when a new stream starts', async () => {
    const fake = await startServer({ intervalMs: 30, script: Array.from({ length: 50 }, (_, i) => `w${i} `) })
    const { result, callbacks } = await mountHook(fake)
    await result().startStreaming('first')
    await vi.waitFor(() => expect(callbacks.onChunk).toHaveBeenCalled())
    const first = result().sessionId ?? ''

    await result().startStreaming('second')
    await vi.waitFor(() => expect(result().sessionId).not.toBe(first))
    expect(fake.sessions.get(first)?.commands.map(c => c.event)).toContain('cancel-stream')
    await vi.waitFor(() => expect(result().state).toBe('streaming'))
  })

  it('pauses and resumes through the server, and cancels', async () => {
    const fake = await startServer({ intervalMs: 30, script: Array.from({ length: 50 }, (_, i) => `w${i} `) })
    const { result, callbacks } = await mountHook(fake)
    await result().startStreaming('long')
    await vi.waitFor(() => expect(callbacks.onChunk).toHaveBeenCalled())

    expect(result().pauseStreaming()).toBe(true)
    await vi.waitFor(() => expect(result().state).toBe('paused'))
    const session = fake.sessions.get(result().sessionId ?? '')
    expect(session?.state).toBe('paused')

    expect(result().resumeStreaming()).toBe(true)
    await vi.waitFor(() => expect(result().state).toBe('streaming'))

    expect(await result().cancelStreaming()).toBe(true)
    await vi.waitFor(() => expect(result()).toMatchObject({ isStreaming: false, state: 'cancelled' }))
    expect(result().error).toBeNull()
    expect(callbacks.onComplete).toHaveBeenCalledTimes(1)
    expect(session?.commands.map(command => command.event)).toEqual(['pause-stream', 'resume-stream', 'cancel-stream'])
  })

  it('keeps two hooks on one page to their own sessions', async () => {
    const fake = await startServer()
    const one = await mountHook(fake)
    const two = await mountHook(fake)
    await one.result().startStreaming('one')
    await vi.waitFor(() => expect(one.callbacks.onComplete).toHaveBeenCalled())

    expect(two.callbacks.onChunk).not.toHaveBeenCalled()
    expect(streamingNodes(two.editor)).toHaveLength(0)

    await two.result().startStreaming('two')
    await vi.waitFor(() => expect(two.callbacks.onComplete).toHaveBeenCalled())
    expect(one.callbacks.onChunk).toHaveBeenCalledTimes(6)
    expect(two.callbacks.onChunk).toHaveBeenCalledTimes(6)
    expect(streamingNodes(one.editor)).toHaveLength(1)
  })
})

describe('useStreaming with review', () => {
  it('keeps the response as a suggestion; accept leaves plain content as one undo step', async () => {
    const fake = await startServer()
    const { editor, result, callbacks } = await mountHook(fake, { review: true })
    const before = editor.getJSON()
    await result().startStreaming('Tell me something')
    await vi.waitFor(() => expect(callbacks.onComplete).toHaveBeenCalled())
    await vi.waitFor(() => expect(result()).toMatchObject({ isReviewing: true, decision: 'pending' }))
    expect(result().responses).toEqual(['# Title\n\nHello from the **fake** server.'])

    expect(result().accept()).toBe(true)
    await vi.waitFor(() => expect(result().decision).toBe('accepted'))
    expect(JSON.stringify(editor.getJSON())).not.toContain('streamingNode')
    expect(editor.getHTML()).toBe('<p>Intro</p><h1>Title</h1><p>Hello from the <strong>fake</strong> server.</p>')
    editor.commands.undo()
    expect(editor.getJSON()).toEqual(before)
  })

  it('reject leaves the document as it was', async () => {
    const fake = await startServer()
    const { editor, result } = await mountHook(fake, { review: true })
    const before = editor.getJSON()
    await result().startStreaming('Tell me something')
    await vi.waitFor(() => expect(result().isReviewing).toBe(true))
    expect(result().reject()).toBe(true)
    expect(editor.getJSON()).toEqual(before)
    await vi.waitFor(() => expect(result().decision).toBe('rejected'))
  })

  it('regenerate streams the same prompt and config from a new session; showResponse flips', async () => {
    const fake = await startServer()
    const { editor, result } = await mountHook(fake, { review: true })
    await result().startStreaming('Tell me something', { maxTokens: 50 })
    await vi.waitFor(() => expect(result().isReviewing).toBe(true))
    const first = result().sessionId

    expect(result().regenerate()).toBe(true)
    await vi.waitFor(() => expect(result().sessionId).not.toBe(first))
    await vi.waitFor(() => expect(result().responses).toHaveLength(2))
    expect(result()).toMatchObject({ isReviewing: true, responseIndex: 1, state: 'completed' })
    expect(fake.sessions.size).toBe(2)
    expect(streamingNodes(editor)).toHaveLength(1)

    expect(result().showResponse(0)).toBe(true)
    await vi.waitFor(() => expect(result().responseIndex).toBe(0))
    expect(result().showResponse(5)).toBe(false)
    result().accept()
    await vi.waitFor(() => expect(result().decision).toBe('accepted'))
    expect(editor.getText()).toContain('Hello from the fake server.')
  })
})

describe('useStreaming watching a session started elsewhere', () => {
  it('joins late with a snapshot and shows the whole text', async () => {
    const fake = await startServer({ version2: true, intervalMs: 10 })
    const session = fake.createSession()
    fake.start(session.id)
    await vi.waitFor(() => expect(session.log.length).toBeGreaterThan(2))
    const { editor, result, callbacks } = await mountHook(fake)

    await result().watchStreaming(session.id)
    await vi.waitFor(() => expect(result().state).toBe('completed'))
    expect(session.auths[0]).toEqual({ snapshot: true })
    expect(editor.getHTML()).toContain('<h1>Title</h1><p>Hello from the <strong>fake</strong> server.</p>')
    expect(callbacks.onChunk.mock.calls.length).toBeLessThan(6)
  })

  it('replays chunk by chunk from a server without snapshots', async () => {
    const fake = await startServer({ intervalMs: 10 })
    const session = fake.createSession()
    fake.start(session.id)
    await vi.waitFor(() => expect(session.log.length).toBeGreaterThan(2))
    const { editor, result, callbacks } = await mountHook(fake)

    await result().watchStreaming(session.id)
    await vi.waitFor(() => expect(result().state).toBe('completed'))
    expect(editor.getHTML()).toContain('<h1>Title</h1><p>Hello from the <strong>fake</strong> server.</p>')
    expect(callbacks.onChunk).toHaveBeenCalledTimes(6)
  })

  it('follows a pause asked for by another viewer', async () => {
    const fake = await startServer({ intervalMs: 30, script: Array.from({ length: 50 }, (_, i) => `w${i} `) })
    const session = fake.createSession()
    fake.start(session.id)
    const { editor, result } = await mountHook(fake)
    await result().watchStreaming(session.id)
    await vi.waitFor(() => expect(result().state).toBe('streaming'))
    fake.pause(session.id)
    await vi.waitFor(() => expect(result().state).toBe('paused'))
    expect(editor.storage.streaming.streamManager.get(session.id)?.status).toBe('paused')
  })
})

describe('useStreaming and the version 2 protocol', () => {
  it('rebuilds the text from scratch after a stream-reset', async () => {
    const fake = await startServer({ version2: true, intervalMs: 20, script: Array.from({ length: 20 }, (_, i) => `w${i} `) })
    const { editor, result, callbacks } = await mountHook(fake, { format: 'text' })
    await result().startStreaming('reset me')
    await vi.waitFor(() => expect(callbacks.onChunk.mock.calls.length).toBeGreaterThan(5))
    const rebuilt = Array.from({ length: 20 }, (_, i) => `W${i} `)
    fake.rebuildLog(result().sessionId ?? '', rebuilt)
    await vi.waitFor(() => expect(result().state).toBe('completed'))
    expect(streamText(editor, result().streamId ?? '')).toBe(rebuilt.join(''))
  })

  it('sends the token from getToken with every HTTP request', async () => {
    const fake = await startServer()
    const { result, callbacks } = await mountHook(fake, { getToken: () => Promise.resolve('hook-token') })
    await result().startStreaming('with a token')
    await vi.waitFor(() => expect(callbacks.onComplete).toHaveBeenCalled())
    expect(fake.authorizations.length).toBeGreaterThanOrEqual(2)
    expect(new Set(fake.authorizations)).toEqual(new Set(['Bearer hook-token']))
  })
})

describe('useStreaming actions', () => {
  it('runs an action on the selection, follows up on its answer and lists the server’s actions', async () => {
    const fake = await startServer()
    const { editor, result } = await mountHook(fake)
    expect((await result().loadActions()).map(action => action.id)).toEqual(['shorten', 'continue', 'bulletize'])

    editor.commands.setTextSelection({ from: 1, to: 6 })
    expect(await result().runAction('shorten')).toBe(true)
    const first = result().sessionId
    expect(fake.sessions.get(first ?? '')?.startBody).toMatchObject({ action: 'shorten', context: { selection: 'Intro' } })
    await vi.waitFor(() => expect(result().isReviewing).toBe(true))

    expect(await result().followUp('Shorter')).toBe(true)
    expect(fake.sessions.get(result().sessionId ?? '')?.startBody).toEqual({
      action: 'custom',
      prompt: 'Shorter',
      followUp: first,
    })
    await vi.waitFor(() => expect(result().responses).toHaveLength(2))
    expect(result().isReviewing).toBe(true)
  })
})
