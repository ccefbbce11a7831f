/**
 * The React side of streaming: creates a server session, connects the WebSocket service,
 * starts a stream in the editor and feeds it the session's chunks, and keeps React state
 * (streaming or not, session state, provider, model, error) true to the server's events.
 */
import type { Editor } from '@tiptap/core'
import { useCallback, useEffect, useRef, useState } from 'react'

import type {
  SessionState,
  StreamChunk,
  StreamComplete,
  StreamConfig,
  StreamError,
  StreamFormat,
  StreamState,
} from './types'
import { StreamingWebSocketService } from './websocket-service'

export interface UseStreamingOptions {
  editor: Editor
  onChunk?: (chunk: string) => void
  onComplete?: () => void
  onError?: (error: Error) => void
  animationType?: 'wave' | 'fade' | 'slide'
  speed?: number
  /** Prefix of the HTTP API routes; '' means relative to the page. */
  apiBaseUrl?: string
  /** The service to stream through; by default the hook makes (and owns) one for ws://localhost:3001. */
  service?: StreamingWebSocketService
  /** What the finished text becomes; by default the extension's `format` option. */
  format?: StreamFormat
  /** The userId sent when creating a session. */
  userId?: string
}

interface SessionCreated {
  sessionId: string
  wsEndpoint: string
}

async function postJson<T>(url: string, body: unknown): Promise<T> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  })
  const payload = (await response.json().catch(() => null)) as (T & { error?: string }) | null
  if (!response.ok || payload === null) {
    throw new Error(payload?.error ?? `${url} answered ${response.status}`)
  }
  return payload
}

/** The part of `GET /api/streaming/{id}` the hook shows. */
interface SessionInfo {
  provider: string
  model: string
}

function toError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error))
}

export function useStreaming(options: UseStreamingOptions) {
  const [isStreaming, setIsStreaming] = useState(false)
  const [sessionId, setSessionId] = useState<string | null>(null)
  const [state, setState] = useState<SessionState | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [provider, setProvider] = useState<string | null>(null)
  const [model, setModel] = useState<string | null>(null)
  const [owned] = useState(() => options.service === undefined)
  const [wsService] = useState(() => options.service ?? new StreamingWebSocketService())

  // Events are matched to this hook's own session and stream, so that two hooks (or two
  // editors) on one page never consume each other's chunks.
  const sessionRef = useRef<string | null>(null)
  const streamIdRef = useRef<string | null>(null)
  const optionsRef = useRef(options)
  optionsRef.current = options

  const { editor } = options

  /** Ends this hook's stream in the editor, with the given status unless it completed. */
  const endStream = useCallback(
    (status: 'complete' | 'error' | 'cancelled', message: string | null = null) => {
      const streamId = streamIdRef.current
      if (!streamId || editor.isDestroyed) {
        return
      }
      if (status !== 'complete') {
        editor.storage.streaming.streamManager.update(streamId, { status, error: message })
      }
      editor.commands.finishStream(streamId)
    },
    [editor],
  )

  const startStreaming = useCallback(
    async (prompt: string, config?: StreamConfig) => {
      const current = optionsRef.current
      const apiBaseUrl = current.apiBaseUrl ?? ''
      try {
        // A stream this hook still shows ends here, and its server session is cancelled.
        const previous = editor.storage.streaming.streamManager.get(streamIdRef.current)
        if (previous && !previous.finished) {
          await wsService.cancel().catch(() => undefined)
          endStream('cancelled')
        }
        setIsStreaming(true)
        setError(null)
        setState('created')
        setProvider(null)
        setModel(null)
        streamIdRef.current = null

        // Create streaming session
        const { sessionId: newSessionId } = await postJson<SessionCreated>(`${apiBaseUrl}/api/streaming/session`, {
          userId: current.userId ?? 'current-user',
          config: config || { animationType: current.animationType },
        })
        sessionRef.current = newSessionId
        setSessionId(newSessionId)
        // Show the provider and model in use at once (chunks carry them as well).
        void fetch(`${apiBaseUrl}/api/streaming/${encodeURIComponent(newSessionId)}`)
          .then(response => (response.ok ? (response.json() as Promise<Partial<SessionInfo>>) : null))
          .then(info => {
            if (info && sessionRef.current === newSessionId) {
              if (typeof info.provider === 'string') setProvider(info.provider)
              if (typeof info.model === 'string') setModel(info.model)
            }
          })
          .catch(() => undefined)

        // Connect WebSocket
        await wsService.connect(newSessionId)

        // Start streaming command in editor
        editor.storage.streaming.transport = wsService
        editor.commands.startStream({
          sessionId: newSessionId,
          animationType: config?.animationType ?? current.animationType ?? 'wave',
          speed: current.speed || 50,
          format: config?.format ?? current.format,
        })
        streamIdRef.current = editor.storage.streaming.streamManager.bySession(newSessionId)?.id ?? null

        // Start server-side streaming
        await postJson(`${apiBaseUrl}/api/streaming/${encodeURIComponent(newSessionId)}/start`, { prompt })
        setState(previous => (previous === 'created' ? 'streaming' : previous))
      } catch (caught) {
        const failure = toError(caught)
        setIsStreaming(false)
        setState('failed')
        setError(failure.message)
        endStream('error', failure.message)
        wsService.disconnect()
        optionsRef.current.onError?.(failure)
      }
    },
    [editor, endStream, wsService],
  )

  const cancelStreaming = useCallback(async (): Promise<boolean> => {
    try {
      const ack = await wsService.cancel()
      if (!ack.ok) {
        throw new Error(ack.error ?? 'The server refused to cancel the stream.')
      }
      setIsStreaming(false)
      setState('cancelled')
      endStream('cancelled')
      return true
    } catch (caught) {
      setError(toError(caught).message)
      return false
    }
  }, [endStream, wsService])

  // Listen for streaming events
  useEffect(() => {
    const ours = (detail: { sessionId: string }): boolean =>
      sessionRef.current !== null && detail.sessionId === sessionRef.current

    const handleChunk = (event: CustomEvent<StreamChunk>) => {
      const { content, metadata } = event.detail
      if (!ours(event.detail)) {
        return
      }
      // Write to editor
      const streamId = streamIdRef.current
      if (streamId) {
        editor.commands.streamToNode(streamId, content)
      }
      if (typeof metadata.provider === 'string') {
        setProvider(metadata.provider)
      }
      if (typeof metadata.model === 'string') {
        setModel(metadata.model)
      }
      // Call hook callback
      optionsRef.current.onChunk?.(content)
    }

    // The server also ends a cancelled session with `complete` (finishReason "cancelled").
    const handleComplete = (event: CustomEvent<StreamComplete>) => {
      if (!ours(event.detail)) {
        return
      }
      const cancelled = event.detail.finishReason === 'cancelled'
      setIsStreaming(false)
      setState(cancelled ? 'cancelled' : 'completed')
      endStream(cancelled ? 'cancelled' : 'complete')
      optionsRef.current.onComplete?.()
    }

    const handleError = (event: CustomEvent<StreamError>) => {
      if (!ours(event.detail)) {
        return
      }
      setIsStreaming(false)
      setState('failed')
      setError(event.detail.error)
      endStream('error', event.detail.error)
      optionsRef.current.onError?.(new Error(event.detail.error))
    }

    const handleState = (event: CustomEvent<StreamState>) => {
      if (!ours(event.detail)) {
        return
      }
      const next = event.detail.state
      setState(next)
      const streamId = streamIdRef.current
      const record = editor.storage.streaming.streamManager.get(streamId)
      if (next === 'cancelled') {
        setIsStreaming(false)
        endStream('cancelled')
      } else if (record && !record.finished && (next === 'paused' || next === 'streaming')) {
        editor.storage.streaming.streamManager.update(record.id, { status: next })
      }
    }

    window.addEventListener('streaming:chunk', handleChunk as EventListener)
    window.addEventListener('streaming:complete', handleComplete as EventListener)
    window.addEventListener('streaming:error', handleError as EventListener)
    window.addEventListener('streaming:state', handleState as EventListener)

    return () => {
      window.removeEventListener('streaming:chunk', handleChunk as EventListener)
      window.removeEventListener('streaming:complete', handleComplete as EventListener)
      window.removeEventListener('streaming:error', handleError as EventListener)
      window.removeEventListener('streaming:state', handleState as EventListener)
    }
  }, [editor, endStream])

  useEffect(() => () => {
    if (owned) {
      wsService.disconnect()
    }
  }, [owned, wsService])

  return {
    isStreaming,
    sessionId,
    startStreaming,
    pauseStreaming: () => options.editor.commands.pauseStream(),
    resumeStreaming: () => options.editor.commands.resumeStream(),
    cancelStreaming,
    state,
    error,
    provider,
    model,
  }
}
