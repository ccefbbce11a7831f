/**
 * The React side of streaming: a `StreamingController` (which orchestrates a server session
 * through the service and its session client, and the editor's stream commands) held for
 * the component's life, and the React state a page shows: streaming or not, session state,
 * provider, model, tokens, time to first token, error and the responses of a reviewed prompt;
 * and the AI actions on the document: runAction, followUp and the server's list of actions.
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
    /**
     * Runs an action on the editor's selection (or at the cursor): the selection and the text
     * around it go to the server, the answer streams in where the action puts it (a rewrite
     * as tracked changes to review). Resolves once the session started; false if the action
     * was refused (no selection for a rewrite, no prompt for `custom`) or failed.
     * @example await ai.runAction('shorten')
     * @example await ai.runAction('translate', { language: 'German' })
     */
    runAction: controller.runAction,
    /**
     * Sends an instruction about the answer under review ("make it shorter"); the new answer
     * replaces the suggestion, and the earlier ones stay in `responses`.
     * @example await ai.followUp('Make it more formal')
     */
    followUp: (instruction: string) => controller.followUp(instruction, target),
    /**
     * Loads the actions the server offers (`GET /api/streaming/actions`), to build a menu from.
     * @example const actions = await ai.loadActions()
     */
    loadActions: controller.loadActions,
  }
}
