/**
 * The streaming extension: streams text (from a server session or from local text) into a
 * streaming node where the stream's config says, rendering Markdown as it arrives, whatever
 * the user edits meanwhile; the finished response goes into the document as one undo step,
 * at once or after the writer accepted it. AI actions take their context from the editor
 * (action-commands.ts), a rewrite is reviewed as tracked changes (tracked-changes-plugin.ts),
 * an AI caret marks where an answer arrives (ai-caret.ts), and ghost text completes the
 * sentence at the cursor (autocomplete.ts).
 */
import { type Editor, Extension } from '@tiptap/core'

import { createActionCommands } from './action-commands'
import { createAiCaretPlugin } from './ai-caret'
import { acceptGhostIn, createAutocompletePlugin, dismissGhostIn } from './autocomplete'
import {
  appendToStream,
  beginStream,
  collaborationOf,
  type CommandContext,
  decideIn,
  finishIn,
  regenerateIn,
  resetIn,
  sendToServer,
  showResponseIn,
  targetOf,
  writeAt,
} from './commands'
import { ANIMATION_TYPES, STREAMING_EXTENSION_NAME, STREAMING_NODE_NAME, streamingPluginKey } from './constants'
import { DEFAULT_CONTEXT_BUDGETS, type FragmentSerializer, markdownSerializer } from './document-context'
import { splitIntoPieces, StreamManager } from './stream-manager'
import type { StreamingOptions, StreamingStorage } from './streaming-options'
import { createStreamingPlugins } from './streaming-plugin'
import { createTrackedChangesPlugin } from './tracked-changes-plugin'
import type { AnimationType, StreamConfig, StreamContentOptions } from './types'

declare module '@tiptap/core' {
  interface Commands<ReturnType> {
    streaming: {
      /**
       * Streams local text into a new streaming node, a piece every `options.speed` ms.
       * @example editor.commands.streamContent('# Notes\n\nSome **text**', { speed: 20 })
       */
      streamContent: (content: string, options?: StreamContentOptions) => ReturnType
      /**
       * Starts a stream: a live streaming node where `config.position` or `config.insertAt` says
       * (the end of the document by default), outside the undo history.
       * @example editor.commands.startStream({ sessionId, insertAt: 'selection', review: true })
       */
      startStream: (config: StreamConfig) => ReturnType
      /**
       * Appends a chunk to the active stream, or writes it at `position`.
       * @example editor.commands.writeChunk('Hello **wor')
       */
      writeChunk: (chunk: string, position?: number) => ReturnType
      /**
       * Finishes a stream (the active one by default): it settles as one undo step, or, with
       * review, waits for acceptStream / rejectStream.
       * @example editor.commands.finishStream(sessionId)
       */
      finishStream: (streamId?: string) => ReturnType
      /**
       * Pauses the active stream, on the server too when it has a transport.
       * @example editor.commands.pauseStream()
       */
      pauseStream: () => ReturnType
      /**
       * Resumes the active stream.
       * @example editor.commands.resumeStream()
       */
      resumeStream: () => ReturnType
      /**
       * Streams local text with the given animation (`wave`, `fade` or `slide`).
       * @example editor.commands.streamWithAnimation('Hello there', 'fade')
       */
      streamWithAnimation: (content: string, animationType: string) => ReturnType
      /**
       * Appends several chunks to the active stream in one transaction.
       * @example editor.commands.batchWrite(['Hello ', 'world'])
       */
      batchWrite: (chunks: string[]) => ReturnType
      /**
       * Appends a chunk to the stream with the given id.
       * @example editor.commands.streamToNode(streamId, 'more text')
       */
      streamToNode: (nodeId: string, content: string) => ReturnType
      /**
       * Keeps a reviewed response (the latest by default) as plain document content, in
       * place of what it replaced: one undo step, no streaming node left.
       * @example editor.commands.acceptStream()
       */
      acceptStream: (streamId?: string) => ReturnType
      /**
       * Drops a reviewed response (the latest by default): the document is as it was before
       * the stream, the replaced selection included.
       * @example editor.commands.rejectStream()
       */
      rejectStream: (streamId?: string) => ReturnType
      /**
       * Streams a new response to the same prompt into the reviewed stream's node (a new
       * server session); the previous responses stay available to showStreamResponse.
       * @example editor.commands.regenerateStream()
       */
      regenerateStream: (streamId?: string) => ReturnType
      /**
       * Shows the reviewed stream's response number `index` (0 is the first one).
       * @example editor.commands.showStreamResponse(0)
       */
      showStreamResponse: (index: number, streamId?: string) => ReturnType
      /**
       * Rebuilds a live stream (the active one by default) from `text`: after the server's
       * `stream-reset` (with no text) or from a late joiner's `snapshot`.
       * @example editor.commands.resetStream(sessionId, snapshot.text)
       */
      resetStream: (streamId?: string, text?: string) => ReturnType
    }
  }

  interface Storage {
    streaming: StreamingStorage
  }
}

function isAnimationType(value: string): value is AnimationType {
  return (ANIMATION_TYPES as readonly string[]).includes(value)
}

/** Marks streams whose node was deleted from the document as failed (or, in review, rejected). */
function forgetRemovedStreams(editor: Editor, storage: StreamingStorage): void {
  const positions = streamingPluginKey.getState(editor.state)?.positions
  const manager = storage.streamManager
  for (const record of manager.live()) {
    // A stream the server writes into the shared document has no node.
    if (!record.target && !positions?.has(record.id)) {
      manager.update(record.id, { status: 'error', error: 'The streaming node was removed from the document.' })
      manager.finish(record.id)
    }
  }
  const pending = manager.pendingReview()
  if (pending && !pending.target && !positions?.has(pending.id)) {
    manager.update(pending.id, { decision: 'rejected' })
  }
}

/** This editor's Markdown serializer, made from its extensions on first use. */
function serializerOf(editor: Editor, storage: StreamingStorage): FragmentSerializer {
  storage.serializer ??= markdownSerializer(editor.extensionManager.baseExtensions)
  return storage.serializer
}

export const StreamingExtension = Extension.create<StreamingOptions, StreamingStorage>({
  name: STREAMING_EXTENSION_NAME,

  addOptions() {
    return {
      transport: null,
      animationType: 'wave',
      format: 'markdown',
      speed: 50,
      review: false,
      context: DEFAULT_CONTEXT_BUDGETS,
      autocomplete: false,
      assistantName: 'AI',
      collaboration: null,
    }
  },

  addStorage() {
    return {
      streamManager: new StreamManager(),
      transport: this.options.transport,
      actions: [],
      serializer: null,
      collaboration: null,
    }
  },

  onCreate() {
    if (!this.editor.schema.nodes[STREAMING_NODE_NAME]) {
      console.warn('[streaming] The streaming extension needs the StreamingNode extension in the editor.')
    }
    if (this.options.collaboration && !collaborationOf(this.storage, this.options, this.editor.state)) {
      console.warn('[streaming] The collaboration option needs the Collaboration extension in the editor.')
    }
  },

  onUpdate() {
    forgetRemovedStreams(this.editor, this.storage)
  },

  onDestroy() {
    this.storage.streamManager.destroy()
    this.storage.transport = null
    this.storage.collaboration?.destroy()
    this.storage.collaboration = null
  },

  addProseMirrorPlugins() {
    const manager = () => this.storage.streamManager
    const plugins = [
      ...createStreamingPlugins(),
      createTrackedChangesPlugin(manager, (streamId, index, decision) => {
        if (decision === 'accepted') {
          this.editor.commands.acceptChange(index, streamId)
        } else {
          this.editor.commands.rejectChange(index, streamId)
        }
      }),
      createAiCaretPlugin(manager, () => this.options.assistantName),
    ]
    const { collaboration } = this.options
    if (collaboration) {
      plugins.push(
        ...collaboration.plugins({
          binding: state => collaborationOf(this.storage, this.options, state),
          animationType: () => this.options.animationType,
        }),
      )
    }
    const { autocomplete } = this.options
    if (autocomplete) {
      plugins.push(
        createAutocompletePlugin({
          options: autocomplete,
          budgets: () => this.options.context,
          serializer: () => serializerOf(this.editor, this.storage),
          transport: () => this.storage.transport,
          manager,
        }),
      )
    }
    return plugins
  },

  addKeyboardShortcuts() {
    return {
      'Mod-Enter': () => this.editor.commands.acceptStream(),
      Escape: () => this.editor.commands.dismissAutocomplete() || this.editor.commands.rejectStream(),
      Tab: () => this.editor.commands.acceptAutocomplete(),
      'Mod-ArrowRight': () => this.editor.commands.acceptAutocompleteWord(),
    }
  },

  addCommands() {
    const context = ({ state, tr, dispatch }: Omit<CommandContext, 'storage'>): CommandContext => ({
      state,
      tr,
      dispatch,
      storage: this.storage,
    })
    const manager = () => this.storage.streamManager

    return {
      streamContent:
        (content, options = {}) =>
        ({ editor, tr, dispatch }) => {
          if (!editor.schema.nodes[STREAMING_NODE_NAME]) {
            return false
          }
          if (!dispatch) {
            return true
          }
          const record = beginStream(tr, this.storage, this.options, options)
          if (!record) {
            return false
          }
          manager().playLocal(record.id, splitIntoPieces(content), record.speed, {
            write: piece => editor.commands.streamToNode(record.id, piece),
            finish: () => {
              editor.commands.finishStream(record.id)
            },
          })
          return true
        },

      startStream:
        config =>
        ({ state, tr, dispatch }) => {
          if (!tr.doc.type.schema.nodes[STREAMING_NODE_NAME]) {
            return false
          }
          if (!dispatch) {
            return true
          }
          // In a collaborative editor the server writes a session's answer into the shared document.
          const at = config.position ?? config.insertAt ?? 'end'
          const target = config.sessionId ? targetOf({ state, tr, storage: this.storage }, this.options, at) : null
          return beginStream(tr, this.storage, this.options, config, target) !== null
        },

      writeChunk:
        (chunk, position) =>
        props =>
          position === undefined
            ? appendToStream(context(props), manager().active(), [chunk])
            : writeAt(context(props), chunk, position),

      finishStream:
        streamId =>
        props =>
          finishIn(context(props), streamId ? manager().get(streamId) : manager().active()),

      pauseStream:
        () =>
        ({ dispatch }) => {
          const record = manager().active()
          if (!record || record.status !== 'streaming') {
            return false
          }
          if (dispatch) {
            manager().update(record.id, { status: 'paused', error: null })
            manager().pauseLocal(record.id)
            const transport = record.transport
            if (transport) {
              sendToServer(manager(), record, () => transport.pause(), 'streaming')
            }
          }
          return true
        },

      resumeStream:
        () =>
        ({ dispatch }) => {
          const record = manager().active()
          if (!record || record.status !== 'paused') {
            return false
          }
          if (dispatch) {
            manager().update(record.id, { status: 'streaming', error: null })
            manager().resumeLocal(record.id)
            const transport = record.transport
            if (transport) {
              sendToServer(manager(), record, () => transport.resume(), 'paused')
            }
          }
          return true
        },

      streamWithAnimation:
        (content, animationType) =>
        ({ commands }) =>
          isAnimationType(animationType) && commands.streamContent(content, { animationType }),

      batchWrite: chunks => props => appendToStream(context(props), manager().active(), chunks),

      streamToNode: (nodeId, content) => props => appendToStream(context(props), manager().get(nodeId), [content]),

      acceptStream: streamId => props => decideIn(context(props), streamId, true),

      rejectStream: streamId => props => decideIn(context(props), streamId, false),

      regenerateStream: streamId => props => regenerateIn(context(props), streamId),

      showStreamResponse: (index, streamId) => props => showResponseIn(context(props), index, streamId),

      resetStream:
        (streamId, text = '') =>
        props =>
          resetIn(context(props), streamId ? manager().get(streamId) : manager().active(), text),

      acceptAutocomplete: () => props => acceptGhostIn(props, false),

      acceptAutocompleteWord: () => props => acceptGhostIn(props, true),

      dismissAutocomplete: () => props => dismissGhostIn(props),

      ...createActionCommands({
        options: this.options,
        storage: this.storage,
        serializer: () => serializerOf(this.editor, this.storage),
      }),
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
