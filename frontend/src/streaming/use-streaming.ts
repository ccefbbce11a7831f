/**
 * The React side of streaming: orchestrates a server session (through the service and its
 * session client) and the editor's stream commands, and holds the React state a page shows:
 * streaming or not, session state, provider, model, tokens, time to first token, error and
 * the responses of a reviewed prompt.
 */
import type { Editor } from '@tiptap/core'
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react'

import { StreamingSessionClient } from './session-client'
import type {
  AnimationType,
  InsertAt,
  SessionState,
  StreamConfig,
  StreamFormat,
  StreamingTransport,
  TokenProvider,
} from './types'
import { StreamingWebSocketService } from './websocket-service'

export interface UseStreamingOptions {
  editor: Editor
  onChunk?: (chunk: string) => void
  onComplete?: () => void
  onError?: (error: Error) => void
  animationType?: AnimationType
  speed?: number
  /** Prefix of the HTTP API routes; '' means relative to the page (the service's own client by default). */
  apiBaseUrl?: string
  /** The service to stream through; by default the hook makes (and owns) one for ws://localhost:3001. */
  service?: StreamingWebSocketService
  /** How the text is shown; by default the extension's `format` option. */
  format?: StreamFormat
  /** The userId sent when creating a session. */
  userId?: string
  /** Bearer token for every HTTP request (and every connect of the service the hook makes). */
  getToken?: TokenProvider
  /** Where streams go unless their config says; by default the end of the document. */
  insertAt?: InsertAt
  /** Keep finished responses as suggestions to accept, reject or regenerate. */
  review?: boolean
}

function toError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error))
}

const TERMINAL_STATES: readonly SessionState[] = ['completed', 'failed', 'cancelled']

export function useStreaming(options: UseStreamingOptions) {
  const [isStreaming, setIsStreaming] = useState(false)
  const [sessionId, setSessionId] = useState<string | null>(null)
  const [streamId, setStreamId] = useState<string | null>(null)
  const [state, setState] = useState<SessionState | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [provider, setProvider] = useState<string | null>(null)
  const [model, setModel] = useState<string | null>(null)
  const [tokens, setTokens] = useState<number | null>(null)
  const [timeToFirstToken, setTimeToFirstToken] = useState<number | null>(null)

  // Events are matched to this hook's own session and stream, so that two hooks (or two
  // editors) on one page never consume each other's chunks.
  const sessionRef = useRef<string | null>(null)
  const streamIdRef = useRef<string | null>(null)
  const promptRef = useRef<{ prompt: string; config: StreamConfig | undefined } | null>(null)
  const startedAtRef = useRef<number | null>(null)
  const optionsRef = useRef(options)
  optionsRef.current = options

  const { editor } = options
  const manager = editor.storage.streaming.streamManager
  const getToken = useCallback(() => optionsRef.current.getToken?.(), [])
  const [owned] = useState(() => options.service === undefined)
  const [service] = useState(() => options.service ?? new StreamingWebSocketService({ getToken }))
  const hasToken = options.getToken !== undefined
  const client = useMemo(
    () =>
      options.apiBaseUrl === undefined && !hasToken
        ? service.sessions
        : new StreamingSessionClient({ baseUrl: options.apiBaseUrl, getToken }),
    [service, options.apiBaseUrl, hasToken, getToken],
  )

  const record = useSyncExternalStore(
    manager.subscribe,
    useCallback(() => manager.get(streamId), [manager, streamId]),
  )

  const track = useCallback((id: string | null) => {
    streamIdRef.current = id
    setStreamId(id)
  }, [])

  /** Ends this hook's stream in the editor, with the given status unless it completed. */
  const endStream = useCallback(
    (status: 'complete' | 'error' | 'cancelled', message: string | null = null) => {
      const id = streamIdRef.current
      if (!id || editor.isDestroyed) {
        return
      }
      if (status !== 'complete' && manager.get(id)?.finished === false) {
        manager.update(id, { status, error: message })
      }
      editor.commands.finishStream(id)
    },
    [editor, manager],
  )

  const fail = useCallback(
    (caught: unknown) => {
      const failure = toError(caught)
      setIsStreaming(false)
      setState('failed')
      setError(failure.message)
      endStream('error', failure.message)
      service.disconnect()
      optionsRef.current.onError?.(failure)
    },
    [endStream, service],
  )

  const begin = useCallback((id: string) => {
    sessionRef.current = id
    setSessionId(id)
    setIsStreaming(true)
    setError(null)
    setTokens(null)
    setTimeToFirstToken(null)
    startedAtRef.current = null
  }, [])

  /** The editor's side of a stream of this hook: where it goes and how it looks. */
  const editorConfig = useCallback((id: string, config: StreamConfig | undefined, watching: boolean): StreamConfig => {
    const current = optionsRef.current
    return {
      sessionId: id,
      animationType: config?.animationType ?? current.animationType ?? 'wave',
      speed: current.speed || 50,
      format: config?.format ?? current.format,
      insertAt: watching ? 'end' : (config?.insertAt ?? current.insertAt),
      position: watching ? undefined : config?.position,
      review: watching ? false : (config?.review ?? current.review),
    }
  }, [])

  const showSessionInfo = useCallback(
    (id: string) => {
      void client
        .get(id)
        .then(info => {
          if (sessionRef.current === id) {
            if (typeof info.provider === 'string') setProvider(info.provider)
            if (typeof info.model === 'string') setModel(info.model)
          }
        })
        .catch(() => undefined)
    },
    [client],
  )

  const regenerateRef = useRef<() => Promise<void>>(() => Promise.resolve())
  const transport = useMemo<StreamingTransport>(
    () => ({
      pause: () => service.pause(),
      resume: () => service.resume(),
      cancel: () => service.cancel(),
      regenerate: () => regenerateRef.current(),
    }),
    [service],
  )

  /** Creates a session for the prompt, joins it, and streams it into a new stream or into `intoStream`. */
  const runSession = useCallback(
    async (prompt: string, config: StreamConfig | undefined, intoStream: string | null) => {
      const current = optionsRef.current
      setState('created')
      const { sessionId: id } = await client.create(
        current.userId ?? 'current-user',
        config || { animationType: current.animationType },
      )
      begin(id)
      showSessionInfo(id)
      await service.connect(id)
      editor.storage.streaming.transport = transport
      if (intoStream === null) {
        editor.commands.startStream(editorConfig(id, config, false))
        track(manager.bySession(id)?.id ?? null)
      } else {
        manager.update(intoStream, { sessionId: id })
      }
      startedAtRef.current = performance.now()
      await client.start(id, prompt)
      setState(previous => (previous === 'created' ? 'streaming' : previous))
    },
    [begin, client, editor, editorConfig, manager, service, showSessionInfo, track, transport],
  )

  regenerateRef.current = async () => {
    const request = promptRef.current
    const id = streamIdRef.current
    if (!request || !id) {
      return
    }
    try {
      await runSession(request.prompt, request.config, id)
    } catch (caught) {
      fail(caught)
    }
  }

  /** Ends, on this side, the stream this hook still shows (cancelling its session if asked). */
  const leaveCurrent = useCallback(
    async (cancelSession: boolean) => {
      const previous = manager.get(streamIdRef.current)
      if (previous && !previous.finished) {
        if (cancelSession) {
          await service.cancel().catch(() => undefined)
        }
        endStream('cancelled')
      }
      service.disconnect()
      track(null)
      setProvider(null)
      setModel(null)
    },
    [endStream, manager, service, track],
  )

  const startStreaming = useCallback(
    async (prompt: string, config?: StreamConfig) => {
      try {
        await leaveCurrent(true)
        setIsStreaming(true)
        setError(null)
        promptRef.current = { prompt, config }
        await runSession(prompt, config, null)
      } catch (caught) {
        fail(caught)
      }
    },
    [fail, leaveCurrent, runSession],
  )

  /** Watches a session started elsewhere (another tab, another user): joins late, with a snapshot. */
  const watchStreaming = useCallback(
    async (id: string) => {
      try {
        await leaveCurrent(false)
        promptRef.current = null
        begin(id)
        const info = await client.get(id)
        setProvider(info.provider ?? null)
        setModel(info.model ?? null)
        setState(info.state)
        editor.storage.streaming.transport = transport
        editor.commands.startStream(editorConfig(id, undefined, true))
        const watched = manager.bySession(id)?.id ?? null
        track(watched)
        if (watched && info.state === 'paused') {
          manager.update(watched, { status: 'paused' })
        }
        await service.connect(id, { snapshot: true, epoch: info.epoch })
        if (TERMINAL_STATES.includes(info.state)) {
          setIsStreaming(false)
        }
      } catch (caught) {
        fail(caught)
      }
    },
    [begin, client, editor, editorConfig, fail, leaveCurrent, manager, service, track, transport],
  )

  const cancelStreaming = useCallback(async (): Promise<boolean> => {
    const current = manager.get(streamIdRef.current)
    const id = sessionRef.current
    if (!current || current.finished || !id) {
      return false
    }
    // The page shows the stop at once; chunks the server sent before it stopped still land
    // until its answer (the cancelled session's `complete` comes first), then the stream ends.
    setIsStreaming(false)
    setState('cancelled')
    manager.update(current.id, { status: 'cancelled' })
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
      setError(toError(caught).message)
      return false
    } finally {
      endStream('cancelled')
    }
  }, [client, endStream, manager, service])

  useEffect(() => {
    const ours = (detail: { sessionId: string }): boolean =>
      sessionRef.current !== null && detail.sessionId === sessionRef.current
    const streamOf = (): string | undefined => streamIdRef.current ?? undefined

    const unsubscribe = [
      service.on('streaming:chunk', chunk => {
        if (!ours(chunk)) {
          return
        }
        const id = streamOf()
        if (id) {
          editor.commands.streamToNode(id, chunk.content)
        }
        const { metadata } = chunk
        if (typeof metadata.provider === 'string') setProvider(metadata.provider)
        if (typeof metadata.model === 'string') setModel(metadata.model)
        if (typeof metadata.tokens === 'number') setTokens(metadata.tokens)
        const startedAt = startedAtRef.current
        if (startedAt !== null) {
          startedAtRef.current = null
          setTimeToFirstToken(Math.round(performance.now() - startedAt))
        }
        optionsRef.current.onChunk?.(chunk.content)
      }),

      // The server also ends a cancelled session with `complete` (finishReason "cancelled").
      service.on('streaming:complete', complete => {
        if (!ours(complete)) {
          return
        }
        const cancelled = complete.finishReason === 'cancelled'
        const used = complete.usage?.completionTokens ?? complete.usage?.totalTokens
        if (typeof used === 'number') setTokens(used)
        setIsStreaming(false)
        setState(cancelled ? 'cancelled' : 'completed')
        endStream(cancelled ? 'cancelled' : 'complete')
        optionsRef.current.onComplete?.()
      }),

      service.on('streaming:error', failure => {
        if (!ours(failure)) {
          return
        }
        setIsStreaming(false)
        setState('failed')
        setError(failure.error)
        endStream('error', failure.error)
        optionsRef.current.onError?.(new Error(failure.error))
      }),

      service.on('streaming:state', update => {
        if (!ours(update)) {
          return
        }
        setState(update.state)
        const current = manager.get(streamIdRef.current)
        if (update.state === 'cancelled') {
          setIsStreaming(false)
          endStream('cancelled')
        } else if (current && !current.finished && (update.state === 'paused' || update.state === 'streaming')) {
          manager.update(current.id, { status: update.state })
        }
      }),

      service.on('streaming:reset', reset => {
        if (ours(reset)) {
          editor.commands.resetStream(streamOf())
        }
      }),

      service.on('streaming:snapshot', snapshot => {
        if (!ours(snapshot)) {
          return
        }
        editor.commands.resetStream(streamOf(), snapshot.text)
        setState(snapshot.state)
        const current = manager.get(streamIdRef.current)
        if (current && !current.finished && (snapshot.state === 'paused' || snapshot.state === 'streaming')) {
          manager.update(current.id, { status: snapshot.state })
        }
      }),
    ]
    return () => unsubscribe.forEach(off => off())
  }, [editor, endStream, manager, service])

  useEffect(
    () => () => {
      if (owned) {
        service.disconnect()
      }
    },
    [owned, service],
  )

  const target = streamId ?? undefined
  return {
    isStreaming,
    sessionId,
    startStreaming,
    pauseStreaming: () => options.editor.commands.pauseStream(),
    resumeStreaming: () => options.editor.commands.resumeStream(),
    cancelStreaming,
    /** Joins a session started elsewhere and shows it live (a second tab, `?session=<id>`). */
    watchStreaming,
    state,
    error,
    provider,
    model,
    /** Tokens the response used so far, as the provider reports them; null when it reports none. */
    tokens,
    /** Milliseconds from the start request to the first chunk; null before it. */
    timeToFirstToken,
    /** The editor stream this hook shows. */
    streamId,
    /** Whether this hook's response waits for accept() or reject(). */
    isReviewing: record?.decision === 'pending',
    /** The writer's decision on this hook's reviewed response: pending, accepted, rejected, or null. */
    decision: record?.decision ?? null,
    /** The finished responses to this prompt (one more after each regenerate()). */
    responses: record?.responses ?? [],
    /** Which of `responses` is shown. */
    responseIndex: record?.responseIndex ?? 0,
    accept: () => options.editor.commands.acceptStream(target),
    reject: () => options.editor.commands.rejectStream(target),
    regenerate: () => options.editor.commands.regenerateStream(target),
    showResponse: (index: number) => options.editor.commands.showStreamResponse(index, target),
  }
}
