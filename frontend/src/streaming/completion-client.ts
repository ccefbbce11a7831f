/**
 * Ghost-text completions over the network: each one a `complete` session (PROTOCOL.md
 * "Document context, actions and follow-ups") created, joined and started like any other,
 * on a service of its own so that it runs beside an answer, and cancelled on the server
 * (`POST /api/streaming/{id}/cancel`) when the writer types on while it still streams.
 */
import type { StreamingSessionClient } from './session-client'
import type { CompletionHandle, CompletionRequest, CompletionSink } from './types'
import type { StreamingWebSocketService } from './websocket-service'

export interface CompletionClientOptions {
  /** Makes the service completions stream through (once, on the first completion). */
  spawnService: () => StreamingWebSocketService
  /** The HTTP client of the sessions. */
  sessions: () => StreamingSessionClient
  /** The userId sent when creating a session. */
  userId: () => string
}

export class CompletionClient {
  private service: StreamingWebSocketService | null = null
  private current: CompletionHandle | null = null

  constructor(private readonly options: CompletionClientOptions) {}

  /** Starts a completion (cancelling the one still running); its text goes to `sink`. */
  complete(request: CompletionRequest, sink: CompletionSink): CompletionHandle {
    this.current?.cancel()
    const service = (this.service ??= this.options.spawnService())
    const sessions = this.options.sessions()
    const run = { cancelled: false, ended: false, sessionId: null as string | null }
    const listeners: (() => void)[] = []
    const end = (): void => {
      if (!run.ended) {
        run.ended = true
        listeners.forEach(off => off())
        sink.end()
      }
    }
    const cancelSession = (sessionId: string): void => {
      void sessions.cancel(sessionId).catch(() => undefined)
    }

    const handle: CompletionHandle = {
      cancel: () => {
        if (run.cancelled || run.ended) {
          return
        }
        run.cancelled = true
        if (run.sessionId !== null) {
          cancelSession(run.sessionId)
        }
        if (service.sessionId === run.sessionId) {
          service.disconnect()
        }
        end()
      },
    }
    this.current = handle

    const start = async (): Promise<void> => {
      const { sessionId } = await sessions.create(this.options.userId(), request.config ?? {})
      run.sessionId = sessionId
      if (run.cancelled) {
        cancelSession(sessionId)
        return
      }
      sink.session(sessionId)
      const ours = (detail: { sessionId: string }): boolean => detail.sessionId === sessionId && !run.cancelled
      listeners.push(
        service.on('streaming:chunk', chunk => {
          if (ours(chunk)) sink.chunk(chunk.content)
        }),
        service.on('streaming:complete', complete => {
          if (ours(complete)) end()
        }),
        service.on('streaming:error', failure => {
          if (ours(failure)) end()
        }),
      )
      await service.connect(sessionId)
      if (run.cancelled) {
        return
      }
      await sessions.start(sessionId, { action: 'complete', context: request.context })
    }
    start().catch(() => {
      if (!run.cancelled) {
        end()
      }
    })
    return handle
  }

  /** Stops the running completion and closes the service. */
  dispose(): void {
    this.current?.cancel()
    this.service?.disconnect()
  }
}
