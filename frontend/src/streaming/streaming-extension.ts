/**
 * The streaming extension: streams text (from a server session or from local text) into
 * a streaming node at the stream's own end, whatever the user edits meanwhile, and turns
 * the finished text into rich content as one undo step.
 */
import { type Editor, Extension } from '@tiptap/core'
import { closeHistory } from '@tiptap/pm/history'
import type { EditorState, Transaction } from '@tiptap/pm/state'

import { streamTextToFragment } from './markdown'
import { splitIntoPieces, StreamManager, type StreamRecord } from './stream-manager'
import {
  createStreamingPlugin,
  findActiveStreamPosition,
  findStreamNodePosition,
  insertStreamingNode,
  markStreamFinishing,
  STREAMING_NODE_NAME,
  streamingPluginKey,
  streamNodeText,
  triggerChunkAnimation,
  writeText,
} from './streaming-plugin'
import type {
  AnimationType,
  StreamAck,
  StreamConfig,
  StreamContentOptions,
  StreamFormat,
  StreamingTransport,
} from './types'

export interface StreamingOptions {
  /**
   * The transport that carries pause, resume and cancel to the server; streams started
   * with a `sessionId` use it. The hook sets it on `editor.storage.streaming.transport`.
   * @default null
   * @example new StreamingWebSocketService({ baseUrl: 'wss://example.com' })
   */
  transport: StreamingTransport | null
  /**
   * The animation of newly arrived chunks when a stream's config names none.
   * @default 'wave'
   * @example 'fade'
   */
  animationType: AnimationType
  /**
   * What a finished stream's text becomes when its config names no format.
   * @default 'markdown'
   * @example 'text'
   */
  format: StreamFormat
  /**
   * Milliseconds between two chunks of locally streamed text (streamContent, streamWithAnimation).
   * @default 50
   * @example 20
   */
  speed: number
}

export interface StreamingStorage {
  /** This editor's streams. */
  streamManager: StreamManager
  /** The transport given to streams started from now on. */
  transport: StreamingTransport | null
}

declare module '@tiptap/core' {
  interface Commands<ReturnType> {
    streaming: {
      /** Streams local text into a new streaming node, a piece every `options.speed` ms. */
      streamContent: (content: string, options?: StreamContentOptions) => ReturnType

      // Core streaming commands
      startStream: (config: StreamConfig) => ReturnType
      writeChunk: (chunk: string, position?: number) => ReturnType
      finishStream: (streamId?: string) => ReturnType
      pauseStream: () => ReturnType
      resumeStream: () => ReturnType

      // Advanced commands
      streamWithAnimation: (content: string, animationType: string) => ReturnType
      batchWrite: (chunks: string[]) => ReturnType
      streamToNode: (nodeId: string, content: string) => ReturnType
    }
  }

  interface Storage {
    streaming: StreamingStorage
  }
}

const ANIMATION_TYPES: readonly string[] = ['wave', 'fade', 'slide'] satisfies AnimationType[]

function isAnimationType(value: string): value is AnimationType {
  return ANIMATION_TYPES.includes(value)
}

/**
 * Checks the editor can stream (the storage itself comes from addStorage, per editor):
 * without the StreamingNode in the schema every streaming command returns false, so say why.
 */
export function setupStreamingState(editor: Editor): void {
  if (!editor.schema.nodes[STREAMING_NODE_NAME]) {
    console.warn('[streaming] The streaming extension needs the StreamingNode extension in the editor.')
  }
}

/** Marks streams whose live node was deleted from the document as failed. */
export function handleDocumentUpdate(editor: Editor, storage: StreamingStorage): void {
  const positions = streamingPluginKey.getState(editor.state)?.positions
  for (const record of storage.streamManager.live()) {
    if (!positions?.has(record.id)) {
      storage.streamManager.update(record.id, {
        status: 'error',
        error: 'The streaming node was removed from the document.',
      })
      storage.streamManager.finish(record.id)
    }
  }
}

/** Stops local streams and forgets this editor's streams. */
export function cleanupStreams(storage: StreamingStorage): void {
  storage.streamManager.destroy()
  storage.transport = null
}

/** Registers a stream and inserts its live node into `tr`. */
function beginStream(
  tr: Transaction,
  storage: StreamingStorage,
  options: StreamingOptions,
  config: StreamConfig,
): StreamRecord | null {
  const record = storage.streamManager.create(config, { ...options, transport: storage.transport })
  const position = config.position ?? tr.doc.content.size
  if (insertStreamingNode(tr, position, { streamId: record.id, animationType: record.animationType }) === null) {
    storage.streamManager.finish(record.id)
    return null
  }
  tr.setMeta('addToHistory', false)
  return record
}

/** Appends chunks at the end of a stream's live node, animating each one. */
function appendToStream(
  state: EditorState,
  tr: Transaction,
  dispatch: unknown,
  record: StreamRecord | undefined,
  chunks: string[],
): boolean {
  const paragraph = state.schema.nodes.paragraph
  if (!record || record.finished || !paragraph) {
    return false
  }
  let cursor = findActiveStreamPosition(state, tr, record.id, paragraph)
  if (cursor === null) {
    return false
  }
  if (!dispatch) {
    return true
  }
  const nodePos = findStreamNodePosition(state, tr, record.id)
  const node = nodePos === null ? null : tr.doc.nodeAt(nodePos)
  if (nodePos === null || !node) {
    return false
  }
  let chunkCount = Number(node.attrs.chunkCount) || 0
  for (const chunk of chunks) {
    chunkCount += 1
    const from = cursor
    cursor = writeText(tr, cursor, chunk)
    triggerChunkAnimation(tr, {
      streamId: record.id,
      from,
      to: cursor,
      animationType: record.animationType,
      index: chunkCount,
    })
  }
  tr.setNodeAttribute(nodePos, 'chunkCount', chunkCount)
  tr.setMeta('addToHistory', false)
  return true
}

/**
 * Writes text at an explicit position. Inside a live streaming node it counts as one of
 * that stream's chunks (outside the undo history); elsewhere it is an ordinary edit.
 */
function writeAt(
  tr: Transaction,
  dispatch: unknown,
  storage: StreamingStorage,
  chunk: string,
  position: number,
): boolean {
  if (position < 0 || position > tr.doc.content.size) {
    return false
  }
  const $pos = tr.doc.resolve(position)
  if (!$pos.parent.inlineContent) {
    return false
  }
  if (!dispatch) {
    return true
  }
  let stream: { record: StreamRecord; nodePos: number } | null = null
  for (let depth = $pos.depth; depth > 0; depth -= 1) {
    const node = $pos.node(depth)
    const record = storage.streamManager.get(node.attrs.streamId as string | null)
    if (node.type.name === STREAMING_NODE_NAME && node.attrs.isActive === true && record && !record.finished) {
      stream = { record, nodePos: $pos.before(depth) }
      break
    }
  }
  const end = writeText(tr, position, chunk)
  if (stream) {
    const chunkCount = (Number(tr.doc.nodeAt(stream.nodePos)?.attrs.chunkCount) || 0) + 1
    triggerChunkAnimation(tr, {
      streamId: stream.record.id,
      from: position,
      to: end,
      animationType: stream.record.animationType,
      index: chunkCount,
    })
    tr.setNodeAttribute(stream.nodePos, 'chunkCount', chunkCount)
    tr.setMeta('addToHistory', false)
  }
  return true
}

/**
 * Finishes a stream: its text becomes rich content (or plain paragraphs) in an inactive
 * streaming node, inserted by one history-tracked step, while the plugin removes the live
 * node outside the history. Undo therefore removes the whole response at once.
 */
function finishIn(
  state: EditorState,
  tr: Transaction,
  dispatch: unknown,
  storage: StreamingStorage,
  record: StreamRecord | undefined,
): boolean {
  if (!record || record.finished) {
    return false
  }
  const nodePos = findStreamNodePosition(state, tr, record.id)
  const live = nodePos === null ? null : tr.doc.nodeAt(nodePos)
  if (nodePos === null || !live) {
    return false
  }
  if (!dispatch) {
    return true
  }
  const content = streamTextToFragment(streamNodeText(live), record.format, state.schema, live.type)
  if (content.childCount > 0) {
    tr.insert(nodePos + live.nodeSize, live.type.create({ ...live.attrs, isActive: false }, content))
    closeHistory(tr)
  }
  markStreamFinishing(tr, record.id)
  storage.streamManager.finish(record.id)
  return true
}

/** Sends a command to the server and keeps the stream's status in line with the answer. */
function sendToServer(
  storage: StreamingStorage,
  record: StreamRecord,
  send: () => Promise<StreamAck>,
  revertTo: StreamRecord['status'],
): void {
  const revert = (error: string): void => {
    if (storage.streamManager.get(record.id)?.finished === false) {
      storage.streamManager.update(record.id, { status: revertTo, error })
    }
  }
  send().then(
    ack => {
      if (!ack.ok) {
        revert(ack.error ?? 'The server refused the command.')
      }
    },
    (error: unknown) => revert(error instanceof Error ? error.message : String(error)),
  )
}

/** Starts a local stream of `content`: a streaming node fed a piece at a time, then finished. */
export function initiateStreaming(
  editor: Editor,
  tr: Transaction,
  dispatch: unknown,
  storage: StreamingStorage,
  options: StreamingOptions,
  content: string,
  contentOptions: StreamContentOptions,
): boolean {
  if (!editor.schema.nodes[STREAMING_NODE_NAME]) {
    return false
  }
  if (!dispatch) {
    return true
  }
  const record = beginStream(tr, storage, options, {
    animationType: contentOptions.animationType,
    speed: contentOptions.speed,
    position: contentOptions.position,
    format: contentOptions.format,
  })
  if (!record) {
    return false
  }
  storage.streamManager.playLocal(record.id, splitIntoPieces(content), record.speed, {
    write: piece => editor.commands.streamToNode(record.id, piece),
    finish: () => {
      editor.commands.finishStream(record.id)
    },
  })
  return true
}

export const StreamingExtension = Extension.create<StreamingOptions, StreamingStorage>({
  name: 'streaming',

  addOptions() {
    return {
      transport: null,
      animationType: 'wave',
      format: 'markdown',
      speed: 50,
    }
  },

  addStorage() {
    return {
      streamManager: new StreamManager(),
      transport: this.options.transport,
    }
  },

  // Extension lifecycle
  onCreate() {
    setupStreamingState(this.editor)
  },

  onUpdate() {
    // Called on every document change
    handleDocumentUpdate(this.editor, this.storage)
  },

  onDestroy() {
    // Cleanup streaming sessions
    cleanupStreams(this.storage)
  },

  addProseMirrorPlugins() {
    return [createStreamingPlugin()]
  },

  addCommands() {
    return {
      streamContent:
        (content, options = {}) =>
        ({ editor, tr, dispatch }) =>
          initiateStreaming(editor, tr, dispatch, this.storage, this.options, content, options),

      startStream:
        config =>
        ({ tr, dispatch }) => {
          if (!tr.doc.type.schema.nodes[STREAMING_NODE_NAME]) {
            return false
          }
          return dispatch ? beginStream(tr, this.storage, this.options, config) !== null : true
        },

      writeChunk:
        (chunk, position) =>
        ({ state, tr, dispatch }) =>
          position === undefined
            ? appendToStream(state, tr, dispatch, this.storage.streamManager.active(), [chunk])
            : writeAt(tr, dispatch, this.storage, chunk, position),

      finishStream:
        streamId =>
        ({ state, tr, dispatch }) => {
          const manager = this.storage.streamManager
          return finishIn(state, tr, dispatch, this.storage, streamId ? manager.get(streamId) : manager.active())
        },

      pauseStream:
        () =>
        ({ dispatch }) => {
          const manager = this.storage.streamManager
          const record = manager.active()
          if (!record || record.status !== 'streaming') {
            return false
          }
          if (dispatch) {
            manager.update(record.id, { status: 'paused', error: null })
            manager.pauseLocal(record.id)
            const transport = record.transport
            if (transport) {
              sendToServer(this.storage, record, () => transport.pause(), 'streaming')
            }
          }
          return true
        },

      resumeStream:
        () =>
        ({ dispatch }) => {
          const manager = this.storage.streamManager
          const record = manager.active()
          if (!record || record.status !== 'paused') {
            return false
          }
          if (dispatch) {
            manager.update(record.id, { status: 'streaming', error: null })
            manager.resumeLocal(record.id)
            const transport = record.transport
            if (transport) {
              sendToServer(this.storage, record, () => transport.resume(), 'paused')
            }
          }
          return true
        },

      streamWithAnimation:
        (content, animationType) =>
        ({ commands }) =>
          isAnimationType(animationType) && commands.streamContent(content, { animationType }),

      batchWrite:
        chunks =>
        ({ state, tr, dispatch }) =>
          appendToStream(state, tr, dispatch, this.storage.streamManager.active(), chunks),

      streamToNode:
        (nodeId, content) =>
        ({ state, tr, dispatch }) =>
          appendToStream(state, tr, dispatch, this.storage.streamManager.get(nodeId), [content]),
    }
  },

  addGlobalAttributes() {
    return [
      {
        types: ['paragraph', 'heading'],
        attributes: {
          streaming: {
            default: false,
            parseHTML: element => element.hasAttribute('data-streaming'),
            // Rendered only when true: parseHTML reads the attribute's presence, so a
            // rendered data-streaming="false" would come back as true.
            renderHTML: attributes => (attributes.streaming ? { 'data-streaming': 'true' } : {}),
          },
        },
      },
    ]
  },
})
