/**
 * The streaming node's React view: the node's real content under a small status line and,
 * while a response waits for review, its Accept / Reject / Regenerate controls. The chunk
 * animations are decorations drawn by the streaming plugin; this view only renders state
 * and calls the extension's commands.
 */
import { NodeViewContent, NodeViewWrapper, type ReactNodeViewProps } from '@tiptap/react'
import { type MouseEvent, useCallback, useSyncExternalStore } from 'react'

import type { StreamRecord } from './stream-manager'
import type { StreamStatus } from './types'

const STATUS_LABELS: Record<StreamStatus, string> = {
  streaming: 'Streaming',
  paused: 'Paused',
  complete: 'Complete',
  cancelled: 'Stopped',
  error: 'Error',
}

const noSubscription = (): (() => void) => () => undefined

/** The status a streaming node shows: its stream's, or `complete` for a node loaded from a saved document. */
export function streamStatusOf(isActive: boolean, record: StreamRecord | undefined): StreamStatus {
  if (record) {
    return record.status
  }
  return isActive ? 'streaming' : 'complete'
}

/** Buttons in the node must not take the editor's selection away when pressed. */
const keepSelection = (event: MouseEvent): void => event.preventDefault()

export function StreamingNodeView({ node, editor }: ReactNodeViewProps) {
  const streamId = node.attrs.streamId as string | null
  const isActive = node.attrs.isActive === true
  const chunkCount = Number(node.attrs.chunkCount) || 0
  const manager = editor.storage.streaming?.streamManager

  const subscribe = manager ? manager.subscribe : noSubscription
  const getRecord = useCallback(() => manager?.get(streamId), [manager, streamId])
  const record = useSyncExternalStore(subscribe, getRecord)

  const status = streamStatusOf(isActive, record)
  const reviewing = isActive && record?.decision === 'pending'
  const editable = !(isActive && record && (!record.finished || reviewing))
  const id = streamId ?? undefined
  const responses = record?.responses.length ?? 0
  const index = record?.responseIndex ?? 0

  return (
    <NodeViewWrapper
      className="streaming-node"
      data-streaming-node=""
      data-stream-id={id}
      data-status={status}
      data-review={reviewing ? 'pending' : undefined}
      data-animation-type={node.attrs.animationType as string}
    >
      <div className="streaming-node__status" contentEditable={false}>
        <span className="streaming-node__indicator" aria-hidden="true" />
        <span className="streaming-node__label" data-testid="stream-status" role="status" aria-live="polite">
          {reviewing ? 'Suggestion' : STATUS_LABELS[status]}
        </span>
        <span className="streaming-node__count" data-testid="stream-chunk-count">
          {chunkCount} {chunkCount === 1 ? 'chunk' : 'chunks'}
        </span>
        {record?.error ? <span className="streaming-node__error">{record.error}</span> : null}
        {reviewing ? (
          <span className="streaming-node__review" role="group" aria-label="Review the suggestion">
            {responses > 1 ? (
              <span className="streaming-node__responses">
                <button
                  type="button"
                  aria-label="Previous response"
                  data-testid="review-previous"
                  disabled={index === 0}
                  onMouseDown={keepSelection}
                  onClick={() => editor.commands.showStreamResponse(index - 1, id)}
                >
                  ‹
                </button>
                <span data-testid="review-position">
                  {index + 1}/{responses}
                </span>
                <button
                  type="button"
                  aria-label="Next response"
                  data-testid="review-next"
                  disabled={index >= responses - 1}
                  onMouseDown={keepSelection}
                  onClick={() => editor.commands.showStreamResponse(index + 1, id)}
                >
                  ›
                </button>
              </span>
            ) : null}
            <button
              type="button"
              data-testid="review-accept"
              title="Accept (Ctrl/⌘+Enter)"
              onMouseDown={keepSelection}
              onClick={() => editor.commands.acceptStream(id)}
            >
              Accept
            </button>
            <button
              type="button"
              data-testid="review-reject"
              title="Reject (Escape)"
              onMouseDown={keepSelection}
              onClick={() => editor.commands.rejectStream(id)}
            >
              Reject
            </button>
            {record?.transport?.regenerate ? (
              <button
                type="button"
                data-testid="review-regenerate"
                onMouseDown={keepSelection}
                onClick={() => editor.commands.regenerateStream(id)}
              >
                Regenerate
              </button>
            ) : null}
          </span>
        ) : null}
      </div>
      {isActive && record?.original ? (
        <del className="streaming-node__original" contentEditable={false} data-testid="stream-original">
          {record.original}
        </del>
      ) : null}
      <NodeViewContent className="streaming-node__content" contentEditable={editable ? undefined : false} />
    </NodeViewWrapper>
  )
}
