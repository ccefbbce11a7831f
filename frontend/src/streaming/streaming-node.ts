/**
 * The streaming node: the block a stream writes into. While active it holds the text as
 * it arrives (one paragraph per line); once finished, the rich content it became.
 */
import { mergeAttributes, Node } from '@tiptap/core'
import { ReactNodeViewRenderer } from '@tiptap/react'

import { StreamingNodeView } from './StreamingNodeView'
import { STREAMING_NODE_NAME } from './streaming-plugin'
import type { AnimationType } from './types'

export interface StreamingNodeAttributes {
  streamId: string | null
  isActive: boolean
  chunkCount: number
  animationType: AnimationType
}

export interface StreamingNodeOptions {
  /**
   * HTML attributes added to the rendered element.
   * @default {}
   * @example { class: 'ai-answer' }
   */
  HTMLAttributes: Record<string, unknown>
}

declare module '@tiptap/core' {
  interface Commands<ReturnType> {
    streamingNode: {
      /** Inserts a streaming node at the selection. */
      insertStreamingNode: (attrs?: Partial<StreamingNodeAttributes>) => ReturnType
    }
  }
}

export const StreamingNode = Node.create<StreamingNodeOptions>({
  name: STREAMING_NODE_NAME,
  group: 'block',
  // Block content, not the sketch's inline*: a finished stream holds the headings, lists
  // and paragraphs its Markdown became, and ProseMirror cannot mix those with inline nodes.
  content: 'block+',
  draggable: false,
  isolating: true,

  addOptions() {
    return {
      HTMLAttributes: {},
    }
  },

  addAttributes() {
    return {
      streamId: {
        default: null,
        parseHTML: element => element.getAttribute('data-stream-id'),
        renderHTML: attributes => (attributes.streamId ? { 'data-stream-id': attributes.streamId } : {}),
      },
      isActive: {
        default: false,
        parseHTML: element => element.getAttribute('data-active') === 'true',
        renderHTML: attributes => ({ 'data-active': attributes.isActive ? 'true' : 'false' }),
      },
      chunkCount: {
        default: 0,
        parseHTML: element => Number(element.getAttribute('data-chunk-count')) || 0,
        renderHTML: attributes => ({ 'data-chunk-count': String(attributes.chunkCount) }),
      },
      animationType: {
        default: 'wave',
        parseHTML: element => element.getAttribute('data-animation-type') ?? 'wave',
        renderHTML: attributes => ({ 'data-animation-type': attributes.animationType }),
      },
    }
  },

  parseHTML() {
    return [{ tag: 'div[data-streaming-node]' }]
  },

  renderHTML({ HTMLAttributes }) {
    return [
      'div',
      mergeAttributes(this.options.HTMLAttributes, HTMLAttributes, {
        'data-streaming-node': '',
        class: 'streaming-content',
      }),
      0,
    ]
  },

  addNodeView() {
    return ReactNodeViewRenderer(StreamingNodeView)
  },

  addCommands() {
    return {
      insertStreamingNode:
        attrs =>
        ({ commands, state }) => {
          const node = state.schema.nodes[this.name]?.createAndFill(attrs)
          return node ? commands.insertContent(node.toJSON()) : false
        },
    }
  },
})
