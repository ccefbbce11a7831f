/**
 * The streaming node's React view: the node's real content under a small status line and,
 * while a response waits for review, its Accept / Reject / Regenerate controls (labelled
 * Accept all / Reject all on a rewrite shown as tracked changes, where they decide every
 * change still pending) and a box for a follow-up instruction.
 * The chunk animations, tracked changes and AI caret are decorations drawn by the plugins;
 * this view only renders state and calls the extension's commands.
 */
import { NodeViewContent, NodeViewWrapper, type ReactNodeViewProps } from '@tiptap/react'
import { type FormEvent, type MouseEvent, useCallback, useState, useSyncExternalStore } from 'react'

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

/** The "tell the AI what to do next" box of a suggestion. */
function FollowUpBox({ onSend }: { onSend: (instruction: string) => void }) {
  const [instruction, setInstruction] = useState('')
  const submit = (event: FormEvent): void => {
    event.preventDefault()
    if (instruction.trim() !== '') {
      onSend(instruction)
      setInstruction('')
    }
  }
  return (
    <form className="streaming-node__follow-up" contentEditable={false} onSubmit={submit}>
      <input
        type="text"
        data-testid="follow-up"
        aria-label="Tell the AI what to do next"
        placeholder="Tell the AI what to do next…"
        value={instruction}
        onChange={event => setInstruction(event.target.value)}
      />
      <button type="submit" data-testid="follow-up-send" disabled={instruction.trim() === ''}>
        Send
      </button>
    </form>
  )
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
  const reviewing = isActive && record?.decision === 'pending'
  const editable = !(isActive && record && (!record.finished || reviewing))
  const id = streamId ?? undefined
  const responses = record?.responses.length ?? 0
  const index = record?.responseIndex ?? 0
  const tracked = record?.trackChanges === true

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
            {/* Every suggestion has its review-accept and review-reject; on a tracked rewrite
                they decide every change still pending, and their labels carry accept-all and
                reject-all (one control each, reachable by either test id). */}
            <button
              type="button"
              data-testid="review-accept"
              title={tracked ? 'Accept every change still pending (Ctrl/⌘+Enter)' : 'Accept (Ctrl/⌘+Enter)'}
              onMouseDown={keepSelection}
              onClick={() => editor.commands.acceptStream(id)}
            >
              {tracked ? <span data-testid="accept-all">Accept all</span> : 'Accept'}
            </button>
            <button
              type="button"
              data-testid="review-reject"
              title={tracked ? 'Reject every change still pending (Escape)' : 'Reject (Escape)'}
              onMouseDown={keepSelection}
              onClick={() => editor.commands.rejectStream(id)}
            >
              {tracked ? <span data-testid="reject-all">Reject all</span> : 'Reject'}
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
      {reviewing && record?.transport?.followUp ? (
        <FollowUpBox onSend={instruction => editor.commands.followUpStream(instruction, id)} />
      ) : null}
      {isActive && record?.original && !tracked ? (
        <del className="streaming-node__original" contentEditable={false} data-testid="stream-original">
          {record.original}
        </del>
      ) : null}
      <NodeViewContent className="streaming-node__content" contentEditable={editable ? undefined : false} />
    </NodeViewWrapper>
  )
}
