/**
 * The orchestration behind `useStreaming`, without React: a server session (created and
 * started through the session client, joined through the service) streamed into the
 * editor's stream commands, pause, resume and cancel, late joins, regenerate, and the state
 * a page shows (streaming or not, session state, provider, model, tokens, time to first
 * token, error). The hook makes one, hands it its latest options on every render and
 * subscribes to its state; anything else can drive it directly.
 */
import type { Editor } from '@tiptap/core'

import { INITIAL_STATE, type StreamingControllerOptions, type StreamingControllerState } from './controller-types'
import { StreamingSessionClient } from './session-client'
import type { SessionState, StreamConfig, StreamingTransport } from './types'
import { StreamingWebSocketService } from './websocket-service'

export type { StreamingControllerOptions, StreamingControllerState } from './controller-types'

function toError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error))
}

const TERMINAL_STATES: readonly SessionState[] = ['completed', 'failed', 'cancelled']

export class StreamingController {
  /** The service streams go through: the one in the options, or one this controller made. */
  readonly service: StreamingWebSocketService
  /** Whether the service is this controller's own (made by it, disconnected by `dispose`). */
  readonly ownsService: boolean
  /** What the editor's stream commands send to the server for this controller's streams. */
  readonly transport: StreamingTransport

  private options: StreamingControllerOptions
  private current: StreamingControllerState = INITIAL_STATE
  private readonly listeners = new Set<() => void>()
  private prompt: { prompt: string; config: StreamConfig | undefined } | null = null
  private startedAt: number | null = null
  private ownClient: { apiBaseUrl: string | undefined; client: StreamingSessionClient } | null = null
  private readonly getToken = () => this.options.getToken?.()

  constructor(options: StreamingControllerOptions) {
    this.options = options
    this.ownsService = options.service === undefined
    this.service = options.service ?? new StreamingWebSocketService({ getToken: this.getToken })
    this.transport = {
      pause: () => this.service.pause(),
      resume: () => this.service.resume(),
      cancel: () => this.service.cancel(),
      regenerate: () => this.regenerateSession(),
    }
  }

  /** Takes the latest options (the hook calls it on every render); callbacks and defaults are read when used. */
  setOptions(options: StreamingControllerOptions): void {
    this.options = options
  }

  /** Calls `listener` after every change of the state; returns the unsubscribe. */
  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener)
    return () => {
      this.listeners.delete(listener)
    }
  }

  /** The current state (the same object until it changes). */
  getSnapshot = (): StreamingControllerState => this.current

  /**
   * Listens to the service's events for this controller's session (events of other
   * sessions are left alone, so that two controllers on one page never consume each
   * other's chunks). Returns the function that stops listening.
   */
  attach(): () => void {
    const { service } = this
    const ours = (detail: { sessionId: string }): boolean =>
      this.current.sessionId !== null && detail.sessionId === this.current.sessionId
    const streamOf = (): string | undefined => this.current.streamId ?? undefined

    const unsubscribe = [
      service.on('streaming:chunk', chunk => {
        if (!ours(chunk)) {
          return
        }
        const id = streamOf()
        if (id) {
          this.editor.commands.streamToNode(id, chunk.content)
        }
        const { metadata } = chunk
        const patch: Partial<StreamingControllerState> = {}
        if (typeof metadata.provider === 'string') patch.provider = metadata.provider
        if (typeof metadata.model === 'string') patch.model = metadata.model
        if (typeof metadata.tokens === 'number') patch.tokens = metadata.tokens
        const startedAt = this.startedAt
        if (startedAt !== null) {
          this.startedAt = null
          patch.timeToFirstToken = Math.round(performance.now() - startedAt)
        }
        this.set(patch)
        this.options.onChunk?.(chunk.content)
      }),

      // The server also ends a cancelled session with `complete` (finishReason "cancelled").
      service.on('streaming:complete', complete => {
        if (!ours(complete)) {
          return
        }
        const cancelled = complete.finishReason === 'cancelled'
        const used = complete.usage?.completionTokens ?? complete.usage?.totalTokens
        this.set({
          ...(typeof used === 'number' ? { tokens: used } : {}),
          isStreaming: false,
          state: cancelled ? 'cancelled' : 'completed',
        })
        this.endStream(this.editor, cancelled ? 'cancelled' : 'complete')
        this.options.onComplete?.()
      }),

      service.on('streaming:error', failure => {
        if (!ours(failure)) {
          return
        }
        this.set({ isStreaming: false, state: 'failed', error: failure.error })
        this.endStream(this.editor, 'error', failure.error)
        this.options.onError?.(new Error(failure.error))
      }),

      service.on('streaming:state', update => {
        if (!ours(update)) {
          return
        }
        this.set({ state: update.state })
        const manager = this.managerOf(this.editor)
        const record = manager.get(this.current.streamId)
        if (update.state === 'cancelled') {
          this.set({ isStreaming: false })
          this.endStream(this.editor, 'cancelled')
        } else if (record && !record.finished && (update.state === 'paused' || update.state === 'streaming')) {
          manager.update(record.id, { status: update.state })
        }
      }),

      service.on('streaming:reset', reset => {
        if (ours(reset)) {
          this.editor.commands.resetStream(streamOf())
        }
      }),

      service.on('streaming:snapshot', snapshot => {
        if (!ours(snapshot)) {
          return
        }
        this.editor.commands.resetStream(streamOf(), snapshot.text)
        this.set({ state: snapshot.state })
        const manager = this.managerOf(this.editor)
        const record = manager.get(this.current.streamId)
        if (record && !record.finished && (snapshot.state === 'paused' || snapshot.state === 'streaming')) {
          manager.update(record.id, { status: snapshot.state })
        }
      }),
    ]
    return () => unsubscribe.forEach(off => off())
  }

  /** Disconnects the service if it is this controller's own. */
  dispose(): void {
    if (this.ownsService) {
      this.service.disconnect()
    }
  }

  /** Streams a response to `prompt`: the stream this controller still shows ends (its session cancelled) first. */
  startStreaming = async (prompt: string, config?: StreamConfig): Promise<void> => {
    const { editor, client } = this
    try {
      await this.leaveCurrent(editor, true)
      this.set({ isStreaming: true, error: null })
      this.prompt = { prompt, config }
      await this.runSession(editor, client, prompt, config, null)
    } catch (caught) {
      this.fail(editor, caught)
    }
  }

  /** Watches a session started elsewhere (another tab, another user): joins late, with a snapshot. */
  watchStreaming = async (id: string): Promise<void> => {
    const { editor, client, service } = this
    const manager = this.managerOf(editor)
    try {
      await this.leaveCurrent(editor, false)
      this.prompt = null
      this.begin(id)
      const info = await client.get(id)
      this.set({ provider: info.provider ?? null, model: info.model ?? null, state: info.state })
      editor.storage.streaming.transport = this.transport
      editor.commands.startStream(this.editorConfig(id, undefined, true))
      const watched = manager.bySession(id)?.id ?? null
      this.set({ streamId: watched })
      if (watched && info.state === 'paused') {
        manager.update(watched, { status: 'paused' })
      }
      await service.connect(id, { snapshot: true, epoch: info.epoch })
      if (TERMINAL_STATES.includes(info.state)) {
        this.set({ isStreaming: false })
      }
    } catch (caught) {
      this.fail(editor, caught)
    }
  }

  /** Stops this controller's live stream, on the server too; false if there is none or the server refused. */
  cancelStreaming = async (): Promise<boolean> => {
    const { editor, client, service } = this
    const manager = this.managerOf(editor)
    const record = manager.get(this.current.streamId)
    const id = this.current.sessionId
    if (!record || record.finished || !id) {
      return false
    }
    // The page shows the stop at once; chunks the server sent before it stopped still land
    // until its answer (the cancelled session's `complete` comes first), then the stream ends.
    this.set({ isStreaming: false, state: 'cancelled' })
    manager.update(record.id, { status: 'cancelled' })
    try {
      if (service.connected) {
        const ack = await service.cancel()
        if (!ack.ok) {
          throw new Error(ack.error ?? 'The server refused to cancel the stream.')
        }
      } else {
        await client.cancel(id)
      }
      return true
    } catch (caught) {
      this.set({ error: toError(caught).message })
      return false
    } finally {
      this.endStream(editor, 'cancelled')
    }
  }

  /** Pauses the editor's active stream (on the server too, through the transport). */
  pauseStreaming = (): boolean => this.editor.commands.pauseStream()

  /** Resumes the editor's active stream. */
  resumeStreaming = (): boolean => this.editor.commands.resumeStream()

  /** Accepts a reviewed response: `streamId`'s, or the latest one waiting for a decision. */
  accept = (streamId?: string): boolean => this.editor.commands.acceptStream(streamId)

  /** Rejects a reviewed response: `streamId`'s, or the latest one waiting for a decision. */
  reject = (streamId?: string): boolean => this.editor.commands.rejectStream(streamId)

  /** Streams a new response to the same prompt into a reviewed stream (see regenerateStream). */
  regenerate = (streamId?: string): boolean => this.editor.commands.regenerateStream(streamId)

  /** Shows a reviewed stream's response number `index`. */
  showResponse = (index: number, streamId?: string): boolean =>
    this.editor.commands.showStreamResponse(index, streamId)

  private get editor(): Editor {
    return this.options.editor
  }

  private managerOf(editor: Editor) {
    return editor.storage.streaming.streamManager
  }

  /** The session HTTP client: the service's own, unless the options give an API base or a token provider. */
  private get client(): StreamingSessionClient {
    const { apiBaseUrl } = this.options
    if (apiBaseUrl === undefined && this.options.getToken === undefined) {
      return this.service.sessions
    }
    if (!this.ownClient || this.ownClient.apiBaseUrl !== apiBaseUrl) {
      this.ownClient = { apiBaseUrl, client: new StreamingSessionClient({ baseUrl: apiBaseUrl, getToken: this.getToken }) }
    }
    return this.ownClient.client
  }

  /** Changes the state; listeners hear of it only if a value changed. */
  private set(patch: Partial<StreamingControllerState>): void {
    const keys = Object.keys(patch) as (keyof StreamingControllerState)[]
    if (keys.every(key => Object.is(patch[key], this.current[key]))) {
      return
    }
    this.current = { ...this.current, ...patch }
    this.listeners.forEach(listener => listener())
  }

  /** Ends this controller's stream in the editor, with the given status unless it completed. */
  private endStream(editor: Editor, status: 'complete' | 'error' | 'cancelled', message: string | null = null): void {
    const id = this.current.streamId
    if (!id || editor.isDestroyed) {
      return
    }
    const manager = this.managerOf(editor)
    if (status !== 'complete' && manager.get(id)?.finished === false) {
      manager.update(id, { status, error: message })
    }
    editor.commands.finishStream(id)
  }

  private fail(editor: Editor, caught: unknown): void {
    const failure = toError(caught)
    this.set({ isStreaming: false, state: 'failed', error: failure.message })
    this.endStream(editor, 'error', failure.message)
    this.service.disconnect()
    this.options.onError?.(failure)
  }

  private begin(id: string): void {
    this.set({ sessionId: id, isStreaming: true, error: null, tokens: null, timeToFirstToken: null })
    this.startedAt = null
  }

  /** The editor's side of a stream of this controller: where it goes and how it looks. */
  private editorConfig(id: string, config: StreamConfig | undefined, watching: boolean): StreamConfig {
    const current = this.options
    return {
      sessionId: id,
      animationType: config?.animationType ?? current.animationType ?? 'wave',
      speed: current.speed || 50,
      format: config?.format ?? current.format,
      insertAt: watching ? 'end' : (config?.insertAt ?? current.insertAt),
      position: watching ? undefined : config?.position,
      review: watching ? false : (config?.review ?? current.review),
    }
  }

  private showSessionInfo(client: StreamingSessionClient, id: string): void {
    void client
      .get(id)
      .then(info => {
        if (this.current.sessionId === id) {
          if (typeof info.provider === 'string') this.set({ provider: info.provider })
          if (typeof info.model === 'string') this.set({ model: info.model })
        }
      })
      .catch(() => undefined)
  }

  /** Creates a session for the prompt, joins it, and streams it into a new stream or into `intoStream`. */
  private async runSession(
    editor: Editor,
    client: StreamingSessionClient,
    prompt: string,
    config: StreamConfig | undefined,
    intoStream: string | null,
  ): Promise<void> {
    const current = this.options
    const manager = this.managerOf(editor)
    this.set({ state: 'created' })
    const { sessionId: id } = await client.create(
      current.userId ?? 'current-user',
      config || { animationType: current.animationType },
    )
    this.begin(id)
    this.showSessionInfo(client, id)
    await this.service.connect(id)
    editor.storage.streaming.transport = this.transport
    if (intoStream === null) {
      editor.commands.startStream(this.editorConfig(id, config, false))
      this.set({ streamId: manager.bySession(id)?.id ?? null })
    } else {
      manager.update(intoStream, { sessionId: id })
    }
    this.startedAt = performance.now()
    await client.start(id, prompt)
    if (this.current.state === 'created') {
      this.set({ state: 'streaming' })
    }
  }

  /** The transport's regenerate: the last prompt again, from a new session, into the same stream. */
  private async regenerateSession(): Promise<void> {
    const request = this.prompt
    const id = this.current.streamId
    if (!request || !id) {
      return
    }
    const { editor, client } = this
    try {
      await this.runSession(editor, client, request.prompt, request.config, id)
    } catch (caught) {
      this.fail(editor, caught)
    }
  }

  /** Ends, on this side, the stream this controller still shows (cancelling its session if asked). */
  private async leaveCurrent(editor: Editor, cancelSession: boolean): Promise<void> {
    const previous = this.managerOf(editor).get(this.current.streamId)
    if (previous && !previous.finished) {
      if (cancelSession) {
        await this.service.cancel().catch(() => undefined)
      }
      this.endStream(editor, 'cancelled')
    }
    this.service.disconnect()
    this.set({ streamId: null, provider: null, model: null })
  }
}
