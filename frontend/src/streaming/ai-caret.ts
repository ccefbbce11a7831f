/**
 * The AI caret: while an answer streams, a caret labelled with the assistant's name marks
 * where its text arrives (the end of its live node's last text block). A decoration: it is
 * never in the document, and it goes when the stream finishes.
 */
import type { Node as ProseMirrorNode } from '@tiptap/pm/model'
import { type EditorState, Plugin } from '@tiptap/pm/state'
import { Decoration, DecorationSet } from '@tiptap/pm/view'

import { aiCaretPluginKey, streamingPluginKey } from './constants'
import type { StreamManager } from './stream-manager'

/** Where the next text of the live node at `pos` lands: the end of its last text block. */
export function writingPosition(node: ProseMirrorNode, pos: number): number {
  let current = node
  let end = pos + node.nodeSize - 1
  while (!current.isTextblock && current.lastChild && !current.lastChild.isLeaf) {
    current = current.lastChild
    end -= 1
  }
  return end
}

function caret(name: string): (view: { dom: HTMLElement }) => HTMLElement {
  return view => {
    const document = view.dom.ownerDocument
    const element = document.createElement('span')
    element.className = 'ai-caret'
    element.setAttribute('data-testid', 'ai-caret')
    element.setAttribute('aria-label', `${name} is writing`)
    const label = document.createElement('span')
    label.className = 'ai-caret__label'
    label.textContent = name
    element.append(label)
    return element
  }
}

/** The plugin that draws a caret at every live stream's writing position. */
export function createAiCaretPlugin(manager: () => StreamManager, name: () => string): Plugin {
  const decorations = (state: EditorState): DecorationSet | null => {
    const found: Decoration[] = []
    for (const [streamId, pos] of streamingPluginKey.getState(state)?.positions ?? []) {
      const record = manager().get(streamId)
      const node = state.doc.nodeAt(pos)
      if (record && !record.finished && node) {
        const label = name()
        found.push(
          Decoration.widget(writingPosition(node, pos), caret(label), {
            side: 1,
            marks: [],
            ignoreSelection: true,
            key: `ai-caret:${label}`,
          }),
        )
      }
    }
    return found.length > 0 ? DecorationSet.create(state.doc, found) : null
  }
  return new Plugin({ key: aiCaretPluginKey, props: { decorations } })
}
