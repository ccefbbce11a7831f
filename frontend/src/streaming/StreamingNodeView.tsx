/**
 * The streaming node's React view: the node's real content (editable once the stream is
 * over) under a small status line. The chunk animations are decorations drawn by the
 * streaming plugin; this view only renders state.
 */
import { NodeViewContent, NodeViewWrapper, type ReactNodeViewProps } from '@tiptap/react'
import { useCallback, useSyncExternalStore } from 'react'

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

export function StreamingNodeView({ node, editor }: ReactNodeViewProps) {
  const streamId = node.attrs.streamId as string | null
  const isActive = node.attrs.isActive === true
  const chunkCount = Number(node.attrs.chunkCount) || 0
  const manager = editor.storage.streaming?.streamManager

  const subscribe = manager ? manager.subscribe : noSubscription
  const getRecord = useCallback(() => manager?.get(streamId), [manager, streamId])
  const record = useSyncExternalStore(subscribe, getRecord)

  const status = streamStatusOf(isActive, record)
  const editable = !(isActive && record && !record.finished)

  return (
    <NodeViewWrapper
      className="streaming-node"
      data-streaming-node=""
      data-stream-id={streamId ?? undefined}
      data-status={status}
      data-animation-type={node.attrs.animationType as string}
    >
      <div className="streaming-node__status" contentEditable={false}>
        <span className="streaming-node__indicator" aria-hidden="true" />
        <span className="streaming-node__label" data-testid="stream-status">
          {STATUS_LABELS[status]}
        </span>
        <span className="streaming-node__count" data-testid="stream-chunk-count">
          {chunkCount} {chunkCount === 1 ? 'chunk' : 'chunks'}
        </span>
        {record?.error ? <span className="streaming-node__error">{record.error}</span> : null}
      </div>
      <NodeViewContent className="streaming-node__content" contentEditable={editable ? undefined : false} />
    </NodeViewWrapper>
  )
}
