/**
 * The React side of streaming: a `StreamingController` (which orchestrates a server session
 * through the service and its session client, and the editor's stream commands) held for
 * the component's life, and the React state a page shows: streaming or not, session state,
 * provider, model, tokens, time to first token, error and the responses of a reviewed prompt.
 */
import { useCallback, useEffect, useState, useSyncExternalStore } from 'react'

import type { StreamingControllerOptions } from './controller-types'
import { StreamingController } from './streaming-controller'

export interface UseStreamingOptions extends StreamingControllerOptions {}

export function useStreaming(options: UseStreamingOptions) {
  const [controller] = useState(() => new StreamingController(options))
  controller.setOptions(options)
  const {
    isStreaming,
    sessionId,
    streamId,
    state,
    error,
    provider,
    model,
    tokens,
    timeToFirstToken,
  } = useSyncExternalStore(controller.subscribe, controller.getSnapshot)

  const manager = options.editor.storage.streaming.streamManager
  const record = useSyncExternalStore(
    manager.subscribe,
    useCallback(() => manager.get(streamId), [manager, streamId]),
  )

  useEffect(() => controller.attach(), [controller])
  useEffect(() => () => controller.dispose(), [controller])

  const target = streamId ?? undefined
  return {
    isStreaming,
    sessionId,
    startStreaming: controller.startStreaming,
    pauseStreaming: () => controller.pauseStreaming(),
    resumeStreaming: () => controller.resumeStreaming(),
    cancelStreaming: controller.cancelStreaming,
    /** Joins a session started elsewhere and shows it live (a second tab, `?session=<id>`). */
    watchStreaming: controller.watchStreaming,
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
    accept: () => controller.accept(target),
    reject: () => controller.reject(target),
    regenerate: () => controller.regenerate(target),
    showResponse: (index: number) => controller.showResponse(index, target),
  }
}
