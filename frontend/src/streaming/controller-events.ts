/**
 * What a session's events do, for a `StreamingController`: its chunks go into the editor's
 * stream, its end finishes that stream, its state changes keep the stream's status and the
 * state a page shows in line. Only events of the controller's own session count, so that
 * two controllers on one page never consume each other's chunks.
 */
import type { Editor } from '@tiptap/core'

import type { StreamingControllerOptions, StreamingControllerState } from './controller-types'
import type { SessionState } from './types'
import type { StreamingWebSocketService } from './websocket-service'

/** What the events act on: the controller's editor, state and stream. */
export interface SessionEventHost {
  editor: () => Editor
  options: () => StreamingControllerOptions
  state: () => StreamingControllerState
  set: (patch: Partial<StreamingControllerState>) => void
  /** When the start request was sent, once: the first chunk measures the time to first token. */
  takeStartedAt: () => number | null
  /** Ends the controller's stream in the editor. */
  endStream: (status: 'complete' | 'error' | 'cancelled', message?: string) => void
}

/** The live stream's status follows a paused or resumed session. */
function followState(host: SessionEventHost, state: SessionState): void {
  const manager = host.editor().storage.streaming.streamManager
  const record = manager.get(host.state().streamId)
  if (record && !record.finished && (state === 'paused' || state === 'streaming')) {
    manager.update(record.id, { status: state })
  }
}

/** Listens to `service` for the host's session; returns the function that stops listening. */
export function listenToSession(service: StreamingWebSocketService, host: SessionEventHost): () => void {
  const ours = (detail: { sessionId: string }): boolean => {
    const { sessionId } = host.state()
    return sessionId !== null && detail.sessionId === sessionId
  }
  const streamOf = (): string | undefined => host.state().streamId ?? undefined

  const unsubscribe = [
    service.on('streaming:chunk', chunk => {
      if (!ours(chunk)) {
        return
      }
      const id = streamOf()
      const editor = host.editor()
      const manager = editor.storage.streaming.streamManager
      if (id && manager.get(id)?.target) {
        // The server writes it into the shared document; the stream keeps the text (its responses).
        manager.text(id).text += chunk.content
      } else if (id) {
        editor.commands.streamToNode(id, chunk.content)
      }
      const { metadata } = chunk
      const patch: Partial<StreamingControllerState> = {}
      if (typeof metadata.provider === 'string') patch.provider = metadata.provider
      if (typeof metadata.model === 'string') patch.model = metadata.model
      if (typeof metadata.tokens === 'number') patch.tokens = metadata.tokens
      const startedAt = host.takeStartedAt()
      if (startedAt !== null) {
        patch.timeToFirstToken = Math.round(performance.now() - startedAt)
      }
      host.set(patch)
      host.options().onChunk?.(chunk.content)
    }),

    // The server also ends a cancelled session with `complete` (finishReason "cancelled").
    service.on('streaming:complete', complete => {
      if (!ours(complete)) {
        return
      }
      const cancelled = complete.finishReason === 'cancelled'
      const used = complete.usage?.completionTokens ?? complete.usage?.totalTokens
      host.set({
        ...(typeof used === 'number' ? { tokens: used } : {}),
        isStreaming: false,
        state: cancelled ? 'cancelled' : 'completed',
      })
      host.endStream(cancelled ? 'cancelled' : 'complete')
      host.options().onComplete?.()
    }),

    service.on('streaming:error', failure => {
      if (!ours(failure)) {
        return
      }
      host.set({ isStreaming: false, state: 'failed', error: failure.error })
      host.endStream('error', failure.error)
      host.options().onError?.(new Error(failure.error))
    }),

    service.on('streaming:state', update => {
      if (!ours(update)) {
        return
      }
      host.set({ state: update.state })
      if (update.state === 'cancelled') {
        host.set({ isStreaming: false })
        host.endStream('cancelled')
      } else {
        followState(host, update.state)
      }
    }),

    service.on('streaming:reset', reset => {
      if (ours(reset)) {
        host.editor().commands.resetStream(streamOf())
      }
    }),

    service.on('streaming:snapshot', snapshot => {
      if (!ours(snapshot)) {
        return
      }
      host.editor().commands.resetStream(streamOf(), snapshot.text)
      host.set({ state: snapshot.state })
      followState(host, snapshot.state)
    }),
  ]
  return () => unsubscribe.forEach(off => off())
}
