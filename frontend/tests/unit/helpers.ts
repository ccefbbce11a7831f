/** Editors for the unit tests: StarterKit plus the streaming node and extension. */
import { Editor } from '@tiptap/core'
import type { Node as ProseMirrorNode } from '@tiptap/pm/model'
import { EditorContent } from '@tiptap/react'
import StarterKit from '@tiptap/starter-kit'
import { act, createElement } from 'react'
import { createRoot } from 'react-dom/client'

import {
  type StreamAck,
  StreamingExtension,
  type StreamingOptions,
  StreamingNode,
  type StreamingTransport,
} from '../../src/streaming'

// The React node view only renders inside EditorContent; editors of command tests use the
// node's plain renderHTML instead.
const PlainStreamingNode = StreamingNode.extend({ addNodeView: () => null })

/**
 * An editor with StarterKit (without the trailing empty paragraph, so that documents
 * compare exactly) and the streaming node and extension; `mounted: false` leaves out the view
 * (and its DOM updates), for tests that only look at the document.
 */
export function createEditor(
  content = '<p>Hello world</p>',
  options: Partial<StreamingOptions> = {},
  { mounted = true }: { mounted?: boolean } = {},
): Editor {
  return new Editor({
    element: mounted ? document.createElement('div') : null,
    extensions: [
      StarterKit.configure({ trailingNode: false }),
      PlainStreamingNode,
      StreamingExtension.configure(options),
    ],
    content,
  })
}

/** An editor rendered by React in EditorContent, with the streaming node's React view. */
export async function renderEditor(
  content = '<p>Hello world</p>',
  options: Partial<StreamingOptions> = {},
): Promise<{ editor: Editor; container: HTMLElement; unmount: () => Promise<void> }> {
  const editor = new Editor({
    element: document.createElement('div'),
    extensions: [StarterKit, StreamingNode, StreamingExtension.configure(options)],
    content,
  })
  const container = document.createElement('div')
  document.body.append(container)
  const root = createRoot(container)
  await act(async () => {
    root.render(createElement(EditorContent, { editor }))
  })
  return {
    editor,
    container,
    unmount: async () => {
      await act(async () => root.unmount())
      editor.destroy()
      container.remove()
    },
  }
}

/** Every streaming node in the document, with its position. */
export function streamingNodes(editor: Editor): { node: ProseMirrorNode; pos: number }[] {
  const found: { node: ProseMirrorNode; pos: number }[] = []
  editor.state.doc.descendants((node, pos) => {
    if (node.type.name === 'streamingNode') {
      found.push({ node, pos })
    }
  })
  return found
}

/** The raw text of the streaming node of a stream. */
export function streamText(editor: Editor, streamId: string): string {
  const entry = streamingNodes(editor).find(({ node }) => node.attrs.streamId === streamId)
  if (!entry) {
    throw new Error(`no streaming node ${streamId}`)
  }
  return entry.node.textBetween(0, entry.node.content.size, '\n')
}

/** Position right after the first occurrence of `text` in the document. */
export function positionAfter(editor: Editor, text: string): number {
  let found: number | null = null
  editor.state.doc.descendants((node, pos) => {
    if (found === null && node.isText && node.text?.includes(text)) {
      found = pos + node.text.indexOf(text) + text.length
    }
  })
  if (found === null) {
    throw new Error(`"${text}" is not in the document`)
  }
  return found
}

/** A transport that answers every command and records the follow-up instructions. */
export function localTransport(): { transport: StreamingTransport; followUps: string[] } {
  const followUps: string[] = []
  const ack = async (): Promise<StreamAck> => ({ ok: true })
  return {
    followUps,
    transport: {
      pause: ack,
      resume: ack,
      cancel: ack,
      runAction: async () => undefined,
      followUp: async instruction => {
        followUps.push(instruction)
      },
    },
  }
}
