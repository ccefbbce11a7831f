import type { Editor } from '@tiptap/core'
import { Fragment, type Node as ProseMirrorNode } from '@tiptap/pm/model'
import { afterEach, describe, expect, it } from 'vitest'

import { markdownToFragment } from '../../src/streaming'
import { renderStreamTail } from '../../src/streaming/incremental-markdown'
import { StreamText } from '../../src/streaming/stream-manager'
import { ANSWERS, DEMO_TOKENS, tokensOf } from './answers'
import { createEditor, streamingNodes } from './helpers'

let editors: Editor[] = []

afterEach(() => {
  editors.forEach(editor => editor.destroy())
  editors = []
})

function liveNode(editor: Editor): ProseMirrorNode {
  const entry = streamingNodes(editor)[0]
  if (!entry) {
    throw new Error('no streaming node')
  }
  return entry.node
}

/** Markdown syntax a reader could see in a textblock's text (code excluded). */
const SYNTAX = [
  /\*/,
  /(?:^|[^\p{L}\p{N}])_|_(?:$|[^\p{L}\p{N}])/u,
  /`/,
  /~/,
  /^#{1,6}(?:\s|$)/,
  /^[-+]\s/,
  /^\d+[.)](?:\s|$)/,
  /\[|\]\(/,
  /^>/,
]

/** Every piece of visible Markdown syntax in `node`, outside code blocks and code marks. */
function visibleSyntax(node: ProseMirrorNode): string[] {
  const found: string[] = []
  node.descendants(child => {
    if (child.type.name === 'codeBlock') {
      return false
    }
    if (!child.isTextblock) {
      return true
    }
    let text = ''
    child.forEach(inline => {
      text += inline.isText && !inline.marks.some(mark => mark.type.name === 'code') ? inline.text : '•'
    })
    for (const pattern of SYNTAX) {
      if (pattern.test(text)) {
        found.push(`${pattern}: ${JSON.stringify(text)}`)
      }
    }
    return false
  })
  return found
}

function typesIn(node: ProseMirrorNode): Set<string> {
  const types = new Set<string>()
  node.descendants(child => {
    types.add(child.type.name)
  })
  return types
}

function oneShot(editor: Editor, text: string) {
  const container = editor.schema.nodes.streamingNode
  if (!container) {
    throw new Error('no streamingNode in the schema')
  }
  return markdownToFragment(text, editor.schema, container)
}

/** A streaming node's content after each character, as the commands build it, without an editor view. */
function* contentAtEveryPrefix(editor: Editor, answer: string): Generator<[string, Fragment]> {
  const container = editor.schema.nodes.streamingNode
  if (!container) {
    throw new Error('no streamingNode in the schema')
  }
  const buffer = new StreamText()
  let children: ProseMirrorNode[] = []
  for (const char of answer) {
    buffer.text += char
    const fromChild = buffer.committedChildren
    const tail = renderStreamTail(buffer, editor.schema, container)
    const tailNodes: ProseMirrorNode[] = []
    tail.forEach(node => tailNodes.push(node))
    children = [...children.slice(0, fromChild), ...tailNodes]
    yield [buffer.text, Fragment.fromArray(children)]
  }
}

describe('Markdown rendered while it streams', () => {
  it.each(Object.entries(ANSWERS))('shows no syntax at any prefix of the %s answer', (_name, answer) => {
    const editor = createEditor('<p>Before</p>')
    editors.push(editor)
    const container = editor.schema.nodes.streamingNode
    let last = Fragment.empty
    for (const [prefix, content] of contentAtEveryPrefix(editor, answer)) {
      const problems = visibleSyntax(container!.create(null, content))
      if (problems.length > 0) {
        throw new Error(`after ${JSON.stringify(prefix.slice(-60))}: ${problems.join('; ')}`)
      }
      last = content
    }
    // Before the end is known the content already is what the whole text converts to.
    expect(last.eq(oneShot(editor, answer))).toBe(true)
  })

  it.each(Object.entries(ANSWERS))(
    'streams the %s answer token by token into the editor and ends as the one-shot conversion',
    (_name, answer) => {
      const editor = createEditor('<p>Before</p>')
      editors.push(editor)
      editor.commands.startStream({ sessionId: 's', review: true })
      for (const token of tokensOf(answer)) {
        editor.commands.writeChunk(token)
        expect(visibleSyntax(liveNode(editor))).toEqual([])
      }
      expect(liveNode(editor).content.eq(oneShot(editor, answer))).toBe(true)
      editor.commands.finishStream('s')
      expect(liveNode(editor).content.eq(oneShot(editor, answer))).toBe(true)
    },
  )

  it('shows headings and list items as such long before the end, token by token', () => {
    const editor = createEditor('<p>Before</p>')
    editors.push(editor)
    editor.commands.startStream({ sessionId: 's' })
    const seen: { heading?: number; listItem?: number; bold?: number; link?: number } = {}
    DEMO_TOKENS.forEach((token, index) => {
      editor.commands.writeChunk(token)
      const node = liveNode(editor)
      const types = typesIn(node)
      seen.heading ??= types.has('heading') ? index : undefined
      seen.listItem ??= types.has('listItem') ? index : undefined
      let bold = false
      let link = false
      node.descendants(child => {
        bold ||= child.marks.some(mark => mark.type.name === 'bold')
        link ||= child.marks.some(mark => mark.type.name === 'link')
      })
      seen.bold ??= bold ? index : undefined
      seen.link ??= link ? index : undefined
    })
    expect(seen.heading).toBe(0)
    expect(seen.listItem).toBeLessThan(DEMO_TOKENS.length / 2)
    expect(seen.bold).toBeLessThan(DEMO_TOKENS.length / 2)
    expect(seen.link).toBeLessThan(DEMO_TOKENS.length)
  })

  it('re-renders only the open block: complete blocks keep their node objects', () => {
    const editor = createEditor('<p>Before</p>')
    editors.push(editor)
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.writeChunk('# Title\n\nFirst paragraph.\n\nSecond')
    const [heading, first] = [liveNode(editor).child(0), liveNode(editor).child(1)]
    for (const token of tokensOf(' paragraph keeps **growing** for a while.')) {
      editor.commands.writeChunk(token)
      expect(liveNode(editor).child(0)).toBe(heading)
      expect(liveNode(editor).child(1)).toBe(first)
    }
    expect(liveNode(editor).child(2).textContent).toBe('Second paragraph keeps growing for a while.')
  })

  it('renders the same document whatever the chunk boundaries', () => {
    const answer = ANSWERS.numberedListAndCode ?? ''
    const editor = createEditor('<p>Before</p>')
    editors.push(editor)
    editor.commands.startStream({ sessionId: 's', review: true })
    for (let index = 0; index < answer.length; index += 7) {
      editor.commands.writeChunk(answer.slice(index, index + 7))
    }
    expect(liveNode(editor).content.eq(oneShot(editor, answer))).toBe(true)
  })

  it('keeps code exactly as written while a fence is open', () => {
    const editor = createEditor('<p>Before</p>')
    editors.push(editor)
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.writeChunk('```ts\nconst a = **b** * `c`')
    const code = liveNode(editor).firstChild
    expect(code?.type.name).toBe('codeBlock')
    expect(code?.textContent).toBe('const a = **b** * `c`')
  })
})

describe('a long answer', () => {
  const long = Array.from({ length: 200 }, (_, index) => `Paragraph ${index} with **bold** text.`).join('\n\n')

  function topLevelChildren(editor: Editor): number {
    return liveNode(editor).childCount
  }

  it('keeps the live node to a few children per level however long it grows', () => {
    const editor = createEditor('<p>Before</p>')
    editors.push(editor)
    editor.commands.startStream({ sessionId: 's' })
    for (const paragraph of long.split(/(?<=\n\n)/)) {
      editor.commands.writeChunk(paragraph)
    }
    expect(topLevelChildren(editor)).toBeLessThan(3 * 16)
    expect(liveNode(editor).textContent).toBe(oneShot(editor, long).textBetween(0, oneShot(editor, long).size))
    editor.commands.finishStream('s')
    expect(streamingNodes(editor)[0]?.node.content.eq(oneShot(editor, long))).toBe(true)
  })

  it('folds a snapshot at once, then keeps folding as chunks arrive', () => {
    const editor = createEditor('<p>Before</p>')
    editors.push(editor)
    editor.commands.startStream({ sessionId: 's', review: true })
    editor.commands.resetStream('s', long)
    expect(topLevelChildren(editor)).toBeLessThan(3 * 16)
    editor.commands.writeChunk('\n\nOne more **paragraph**.')
    editor.commands.finishStream('s')
    expect(liveNode(editor).content.eq(oneShot(editor, `${long}\n\nOne more **paragraph**.`))).toBe(true)
  })
})
