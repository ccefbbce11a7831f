/**
 * The streaming node: the block a stream writes into. While live it shows the response as
 * it arrives (rendered Markdown, or plain lines); in review it holds the response waiting
 * for a decision; once settled without review, the rich content the response became.
 */
import { mergeAttributes, Node } from '@tiptap/core'
import { ReactNodeViewRenderer } from '@tiptap/react'

import { STREAMING_NODE_NAME, STREAMING_SECTION_NAME } from './constants'
import { StreamingNodeView } from './StreamingNodeView'
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
      /**
       * Inserts a streaming node at the selection.
       * @example editor.commands.insertStreamingNode({ streamId: 'notes', isActive: false })
       */
      insertStreamingNode: (attrs?: Partial<StreamingNodeAttributes>) => ReturnType
    }
  }
}

/**
 * A group of a live stream's committed blocks. It exists only inside a live streaming node
 * (nothing parses into it, and a settled stream holds plain blocks), renders as a wrapper
 * that takes no part in the layout, and keeps ProseMirror's per-chunk work on the node's
 * children small however long the answer grows.
 */
export const StreamingSection = Node.create({
  name: STREAMING_SECTION_NAME,
  group: 'block',
  content: 'block+',
  draggable: false,
  selectable: false,

  addAttributes() {
    return {
      level: { default: 1, rendered: false },
    }
  },

  parseHTML() {
    return []
  },

  renderHTML() {
    return ['div', { class: 'streaming-node__section' }, 0]
  },

  renderMarkdown: (node, helpers) => helpers.renderChildren(node.content ?? [], '\n\n'),
})

export const StreamingNode = Node.create<StreamingNodeOptions>({
  name: STREAMING_NODE_NAME,
  group: 'block',
  // Block content, not the sketch's inline*: a stream holds the headings, lists and
  // paragraphs its Markdown became, and ProseMirror cannot mix those with inline nodes.
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

  // An answer is its blocks: in Markdown (an action's context), the node itself leaves no trace.
  renderMarkdown: (node, helpers) => helpers.renderChildren(node.content ?? [], '\n\n'),

  addExtensions() {
    return [StreamingSection]
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
