/**
 * The orchestration behind `useStreaming`, without React: a server session (created and
 * started through the session client, joined through the service) streamed into the
 * editor's stream commands, pause, resume and cancel, late joins, regenerate, actions on
 * the document and follow-ups, ghost-text completions (through a completion client), and
 * the state a page shows (streaming or not, session state, provider, model, tokens, time
 * to first token, error). The hook makes one, hands it its latest options on every render
 * and subscribes to its state; anything else can drive it directly.
 */
import type { Editor } from '@tiptap/core'

import { CompletionClient } from './completion-client'
import { listenToSession } from './controller-events'
import { INITIAL_STATE, type StreamingControllerOptions, type StreamingControllerState } from './controller-types'
import { StreamingSessionClient } from './session-client'
import type {
  ActionDefinition,
  ActionRequest,
  RunActionOptions,
  SessionState,
  StartRequest,
  StreamConfig,
  StreamingTransport,
} from './types'
import { StreamingWebSocketService } from './websocket-service'

export type { StreamingControllerOptions, StreamingControllerState } from './controller-types'

function toError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error))
}

const TERMINAL_STATES: readonly SessionState[] = ['completed', 'failed', 'cancelled']

/** A start request as it was sent, with the session's config. */
interface SentRequest {
  start: StartRequest
  config: StreamConfig | undefined
}

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
  /** The start request of each stream's latest session and its config: what regenerate sends again. */
  private readonly requests = new Map<string, SentRequest>()
  /** The session started last through the transport (an action or a follow-up), once it started. */
  private running: Promise<void> = Promise.resolve()
  private readonly completions: CompletionClient
  private startedAt: number | null = null
  private ownClient: { apiBaseUrl: string | undefined; client: StreamingSessionClient } | null = null
  private readonly getToken = () => this.options.getToken?.()

  constructor(options: StreamingControllerOptions) {
    this.options = options
    this.ownsService = options.service === undefined
    this.service = options.service ?? new StreamingWebSocketService({ getToken: this.getToken })
    this.completions = new CompletionClient({
      spawnService: () => this.service.spawn(),
      sessions: () => this.client,
      userId: () => this.options.userId ?? 'current-user',
    })
    // The editor calls regenerate, runAction and followUp inside a command: the session starts after it.
    this.transport = {
      pause: () => this.service.pause(),
      resume: () => this.service.resume(),
      cancel: () => this.service.cancel(),
      regenerate: streamId => (this.running = Promise.resolve().then(() => this.regenerateSession(streamId))),
      runAction: request => (this.running = Promise.resolve().then(() => this.runActionSession(request))),
      followUp: (instruction, streamId) =>
        (this.running = Promise.resolve().then(() => this.followUpSession(instruction, streamId))),
      complete: (request, sink) => this.completions.complete(request, sink),
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
    // Actions and autocomplete find the transport in the editor before any stream started.
    this.editor.storage.streaming.transport ??= this.transport
    return listenToSession(this.service, {
      editor: () => this.editor,
      options: () => this.options,
      state: () => this.current,
      set: patch => this.set(patch),
      takeStartedAt: () => {
        const startedAt = this.startedAt
        this.startedAt = null
        return startedAt
      },
      endStream: (status, message) => this.endStream(this.editor, status, message),
    })
  }

  /** Disconnects the service if it is this controller's own, and stops a running completion. */
  dispose(): void {
    this.completions.dispose()
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
      await this.runSession(editor, client, { prompt }, config, null)
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

  /**
   * Runs an action on the editor's selection through this controller (see the runAction
   * command); resolves once its session started: false if the action was refused or failed.
   */
  runAction = async (id: string, options?: RunActionOptions): Promise<boolean> => {
    this.editor.storage.streaming.transport = this.transport
    if (!this.editor.commands.runAction(id, options)) {
      return false
    }
    await this.running
    return this.current.state !== 'failed'
  }

  /** Sends a follow-up instruction about a reviewed answer (see followUpStream); resolves once it started. */
  followUp = async (instruction: string, streamId?: string): Promise<boolean> => {
    if (!this.editor.commands.followUpStream(instruction, streamId)) {
      return false
    }
    await this.running
    return this.current.state !== 'failed'
  }

  /** Loads the actions the server offers (`GET /api/streaming/actions`) and tells the editor about them. */
  loadActions = async (): Promise<ActionDefinition[]> => {
    const { actions } = await this.client.actions()
    this.editor.storage.streaming.actions = actions
    return actions
  }

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

  /** Creates a session for the request, joins it, and streams it into a new stream or into `intoStream`. */
  private async runSession(
    editor: Editor,
    client: StreamingSessionClient,
    start: StartRequest,
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
    let streamId = intoStream
    if (streamId === null) {
      editor.commands.startStream(this.editorConfig(id, config, false))
      streamId = manager.bySession(id)?.id ?? null
      this.set({ streamId })
    } else {
      manager.update(streamId, { sessionId: id, transport: this.transport })
    }
    const body = this.targeted(editor, streamId, id, start)
    if (streamId !== null) {
      this.remember(streamId, { start: body, config })
    }
    this.startedAt = performance.now()
    await client.start(id, body)
    if (this.current.state === 'created') {
      this.set({ state: 'streaming' })
    }
  }

  /**
   * The start request of session `id` for stream `streamId`: with the stream's `target` when
   * the server writes the answer into the shared document, whose AI peer's writing is then
   * recorded from now on, so that a reviewed answer can be rejected.
   */
  private targeted(editor: Editor, streamId: string | null, id: string, start: StartRequest): StartRequest {
    const record = this.managerOf(editor).get(streamId)
    if (!record?.target) {
      return start
    }
    if (record.review) {
      editor.storage.streaming.collaboration?.follow(id)
    }
    return { ...start, target: record.target }
  }

  /**
   * Keeps the request a stream's latest session was started with, and forgets those of
   * streams that can no longer be regenerated (gone, or finished and not waiting for review).
   */
  private remember(streamId: string, request: SentRequest): void {
    const manager = this.managerOf(this.editor)
    for (const id of this.requests.keys()) {
      const record = manager.get(id)
      if (!record || (record.finished && record.decision !== 'pending')) {
        this.requests.delete(id)
      }
    }
    this.requests.set(streamId, request)
  }

  /**
   * The transport's regenerate: the request of the stream's latest session again, from a
   * new session, into the same stream (`streamId`'s, or this controller's own).
   */
  private async regenerateSession(streamId: string | undefined): Promise<void> {
    const id = streamId ?? this.current.streamId
    const request = id ? this.requests.get(id) : undefined
    if (!id || !request) {
      return
    }
    await this.restartInto(id, request.start, request.config)
  }

  /** The transport's runAction: the action's session, into the stream the editor began for it. */
  private async runActionSession(request: ActionRequest): Promise<void> {
    await this.leaveCurrent(this.editor, true)
    this.set({ streamId: request.streamId, isStreaming: true, error: null })
    await this.streamInto(request.streamId, request.start, request.config)
  }

  /**
   * The transport's followUp: the instruction, with the stream's latest session (`streamId`'s,
   * or this controller's own) as the conversation so far, answered into that stream.
   */
  private async followUpSession(instruction: string, streamId: string | undefined): Promise<void> {
    const id = streamId ?? this.current.streamId
    const previous = this.managerOf(this.editor).get(id)?.sessionId
    if (!id || !previous) {
      return
    }
    const start: StartRequest = { action: 'custom', prompt: instruction, followUp: previous }
    await this.restartInto(id, start, this.requests.get(id)?.config)
  }

  /**
   * Streams a new session for `start` into the reviewed stream `id`, which the editor just
   * emptied for it: if this controller showed another stream, that one ends here first (its
   * session cancelled if it still ran) and `id` becomes the stream it shows.
   */
  private async restartInto(id: string, start: StartRequest, config: StreamConfig | undefined): Promise<void> {
    if (this.current.streamId !== id) {
      await this.leaveCurrent(this.editor, true)
      this.set({ streamId: id, isStreaming: true, error: null })
    }
    await this.streamInto(id, start, config)
  }

  /** Streams a session for `start` into the existing stream `id`. */
  private async streamInto(id: string, start: StartRequest, config: StreamConfig | undefined): Promise<void> {
    const { editor, client } = this
    try {
      await this.runSession(editor, client, start, config, id)
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
