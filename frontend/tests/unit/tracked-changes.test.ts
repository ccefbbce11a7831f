/**
 * A rewrite reviewed as tracked changes: the word-level diff between the original and the
 * model's text, every mix of accepted and rejected changes (all accepted is the model's
 * text, all rejected the original, any mix exactly the chosen words), and the review in the
 * editor: decorations while and after it streams, a decision per change, accept all and
 * reject all, one undo step for the whole decision, the AI caret, and follow-ups.
 */
import { createDocument, type Editor } from '@tiptap/core'
import { undoDepth } from '@tiptap/pm/history'
import type { Fragment, Node as ProseMirrorNode } from '@tiptap/pm/model'
import { act } from 'react'
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest'

import { composeContent, diffContent, type TrackedChange } from '../../src/streaming/tracked-changes'
import type { ChangeDecision } from '../../src/streaming/types'
import { createEditor, localTransport, positionAfter, renderEditor, streamingNodes } from './helpers'

/** How many word diffs ran: the tracked changes of a streaming rewrite diff at most once per frame. */
const diffRuns = vi.hoisted(() => ({ count: 0 }))

vi.mock('diff', async importOriginal => {
  const actual = await importOriginal<typeof import('diff')>()
  const counted =
    <A extends unknown[], R>(diff: (...args: A) => R) =>
    (...args: A): R => {
      diffRuns.count += 1
      return diff(...args)
    }
  return { ...actual, diffWords: counted(actual.diffWords), diffWordsWithSpace: counted(actual.diffWordsWithSpace) }
})

const editors: Editor[] = []

afterEach(() => {
  editors.splice(0).forEach(editor => editor.destroy())
})

afterAll(() => {
  schemaEditor?.destroy()
})

function editorWith(content: string): Editor {
  const editor = createEditor(content)
  editors.push(editor)
  return editor
}

/** The editor whose schema the pure tests use. */
let schemaEditor: Editor | null = null

/** The blocks an HTML snippet becomes in the schema of `schemaEditor`. */
function blocks(html: string): Fragment {
  schemaEditor ??= createEditor('<p></p>')
  return createDocument(html, schemaEditor.schema).content
}

function container(editor: Editor = schemaEditor ?? createEditor('<p></p>')) {
  const type = editor.schema.nodes.streamingNode
  if (!type) {
    throw new Error('no streaming node type')
  }
  return type
}

function textOf(content: Fragment): string {
  const node = container().create(null, content)
  return node.textBetween(0, node.content.size, '\n')
}

/** The text a set of decisions should leave: the revision's common text, each change's chosen side. */
function expectedText(revised: ProseMirrorNode, changes: readonly TrackedChange[], decisions: ChangeDecision[]): string {
  let text = ''
  let at = 0
  changes.forEach((change, index) => {
    text += revised.textBetween(at, change.fromB, '\n')
    text += decisions[index] === 'accepted' ? change.inserted : change.deleted
    at = change.toB
  })
  return text + revised.textBetween(at, revised.content.size, '\n')
}

/** Every combination of decisions on `count` changes. */
function everyMix(count: number): ChangeDecision[][] {
  return Array.from({ length: 2 ** count }, (_, mask) =>
    Array.from({ length: count }, (_, bit) => ((mask >> bit) & 1 ? 'accepted' : 'rejected')),
  )
}

const PAIRS: [string, string, string][] = [
  ['one paragraph', '<p>Teh quick brown fox jumps over the lazy dog.</p>', '<p>The quick fox jumped over a lazy dog!</p>'],
  [
    'formatting',
    '<p>A <strong>really</strong> good idea, <em>quite</em> simply.</p>',
    '<p>A good idea, <em>put</em> simply.</p>',
  ],
  [
    'several blocks',
    '<p>First sentence here.</p><p>Second one is very long and wordy.</p><p>Third stays.</p>',
    '<p>First sentence.</p><p>Second one is short.</p><p>Third stays, mostly.</p>',
  ],
  ['merged paragraphs', '<p>Alpha beta.</p><p>Gamma delta.</p>', '<p>Alpha beta gamma delta.</p>'],
  ['split paragraph', '<p>Alpha beta, gamma delta.</p>', '<p>Alpha beta.</p><p>Gamma delta.</p>'],
  ['a list', '<ul><li><p>Milk</p></li><li><p>Eggs</p></li></ul>', '<ul><li><p>Oat milk</p></li><li><p>Eggs</p></li><li><p>Bread</p></li></ul>'],
]

describe('diffContent', () => {
  it('finds word-level changes, located in both texts', () => {
    const original = blocks('<p>Teh quick brown fox jumps.</p>')
    const revised = blocks('<p>The quick fox jumped.</p>')
    const changes = diffContent(original, revised)
    expect(changes.map(({ deleted, inserted }) => [deleted, inserted])).toEqual([
      ['Teh', 'The'],
      ['brown ', ''],
      ['jumps', 'jumped'],
    ])
    const a = container().create(null, original)
    const b = container().create(null, revised)
    for (const change of changes) {
      expect(a.textBetween(change.fromA, change.toA, '\n')).toBe(change.deleted)
      expect(b.textBetween(change.fromB, change.toB, '\n')).toBe(change.inserted)
    }
  })

  it('finds nothing between equal texts', () => {
    expect(diffContent(blocks('<p>Same words.</p>'), blocks('<p>Same <strong>words</strong>.</p>'))).toEqual([])
  })
})

describe('composeContent', () => {
  for (const [name, before, after] of PAIRS) {
    it(`leaves exactly the chosen words for every mix of decisions: ${name}`, () => {
      const original = blocks(before)
      const revised = blocks(after)
      const changes = diffContent(original, revised)
      expect(changes.length).toBeGreaterThan(0)
      const revisedNode = container().create(null, revised)
      for (const mix of everyMix(changes.length)) {
        const decisions = new Map(mix.map((decision, index) => [index, decision]))
        const result = composeContent(original, revised, changes, decisions, 'accepted', container())
        expect(textOf(result)).toBe(expectedText(revisedNode, changes, mix))
      }
      const none = new Map<number, ChangeDecision>()
      expect(textOf(composeContent(original, revised, changes, none, 'accepted', container()))).toBe(textOf(revised))
      expect(textOf(composeContent(original, revised, changes, none, 'rejected', container()))).toBe(textOf(original))
    })
  }

  it('puts a rejected change back with its formatting', () => {
    const original = blocks('<p>A <strong>really</strong> good idea.</p>')
    const revised = blocks('<p>A good idea.</p>')
    const changes = diffContent(original, revised)
    const result = composeContent(original, revised, changes, new Map([[0, 'rejected']]), 'accepted', container())
    expect(result.toJSON()).toEqual(original.toJSON())
  })
})

/** A transport that takes actions and follow-ups without a server; the test feeds the chunks. */
const PARAGRAPH = 'This is really quite long, and the words are very easy to shorten. It says it twice.'
const SHORTER = 'This is long, and the words are easy to shorten.'
const DOCUMENT = `<h1>Title</h1><p>${PARAGRAPH}</p><p>After.</p>`

/** The whole document when the paragraph reads `paragraph`. */
function documentWith(paragraph: string): string {
  return `<h1>Title</h1><p>${paragraph}</p><p>After.</p>`
}

/**
 * Selects the paragraph, shortens it, streams `answer` in (as the controller does once the
 * session exists) and finishes; returns the stream's id.
 */
function shorten(editor: Editor, answer: string, finish = true): string {
  const transport = (editor.storage.streaming.transport ??= localTransport().transport)
  const to = positionAfter(editor, PARAGRAPH)
  editor.commands.setTextSelection({ from: to - PARAGRAPH.length, to })
  expect(editor.commands.aiShorten()).toBe(true)
  const manager = editor.storage.streaming.streamManager
  const id = manager.activeStreamId
  if (!id) {
    throw new Error('no stream')
  }
  manager.update(id, { sessionId: 'session-1', transport })
  for (const word of answer.match(/\S+\s*/g) ?? []) {
    editor.commands.streamToNode(id, word)
  }
  if (finish) {
    editor.commands.finishStream(id)
  }
  return id
}

function dom(editor: Editor): HTMLElement {
  return editor.view.dom as HTMLElement
}

function click(editor: Editor, testId: string, index: number): void {
  const button = dom(editor).querySelector<HTMLButtonElement>(
    `.tracked-change__controls[data-change-index="${index}"] [data-testid="${testId}"]`,
  )
  if (!button) {
    throw new Error(`no ${testId} for change ${index}`)
  }
  button.click()
}

describe('reviewing a rewrite as tracked changes', () => {
  it('shows the changes with a control each, and leaves the chosen words as one undo step', () => {
    const editor = editorWith(DOCUMENT)
    const before = editor.getJSON()
    const depth = undoDepth(editor.state)
    shorten(editor, SHORTER)
    const deletions = [...dom(editor).querySelectorAll('[data-change="delete"]')].map(node => node.textContent)
    expect(deletions).toEqual(['really quite ', 'very ', ' It says it twice.'])
    expect(dom(editor).querySelectorAll('[data-testid="change-accept"]')).toHaveLength(3)
    expect(JSON.stringify(editor.getJSON())).not.toContain('really')

    click(editor, 'change-accept', 0)
    expect(dom(editor).querySelectorAll('[data-testid="change-accept"]')).toHaveLength(2)
    click(editor, 'change-reject', 1)
    expect(dom(editor).querySelectorAll('[data-change]').length).toBe(1)
    expect(streamingNodes(editor)).toHaveLength(1)
    click(editor, 'change-accept', 2)

    expect(streamingNodes(editor)).toEqual([])
    expect(editor.getHTML()).toBe(documentWith('This is long, and the words are very easy to shorten.'))
    expect(undoDepth(editor.state)).toBe(depth + 1)
    editor.commands.undo()
    expect(editor.getJSON()).toEqual(before)
  })

  it('accepting every change leaves exactly the model’s text; rejecting every change, the original', () => {
    const accepted = editorWith(DOCUMENT)
    shorten(accepted, SHORTER)
    ;[0, 1, 2].forEach(index => click(accepted, 'change-accept', index))
    expect(accepted.getHTML()).toBe(documentWith(SHORTER))

    const rejected = editorWith(DOCUMENT)
    const before = rejected.getJSON()
    shorten(rejected, SHORTER)
    ;[0, 1, 2].forEach(index => click(rejected, 'change-reject', index))
    expect(rejected.getJSON()).toEqual(before)
  })

  it('accept all and reject all decide the changes still pending', () => {
    const all = editorWith(DOCUMENT)
    shorten(all, SHORTER)
    expect(all.commands.acceptStream()).toBe(true)
    expect(all.getHTML()).toBe(documentWith(SHORTER))

    const none = editorWith(DOCUMENT)
    const before = none.getJSON()
    shorten(none, SHORTER)
    expect(none.commands.rejectStream()).toBe(true)
    expect(none.getJSON()).toEqual(before)

    const rest = editorWith(DOCUMENT)
    shorten(rest, SHORTER)
    click(rest, 'change-reject', 2)
    rest.commands.acceptStream()
    expect(rest.getHTML()).toBe(documentWith(`${SHORTER} It says it twice.`))
  })

  it('shows changes while the answer streams, without the original’s end it has not reached yet', async () => {
    const editor = editorWith(DOCUMENT)
    shorten(editor, 'This is long, and the', false)
    const deletions = () => [...dom(editor).querySelectorAll('[data-change="delete"]')].map(node => node.textContent)
    await vi.waitFor(() => expect(deletions()).toEqual(['really quite ']))
    expect(dom(editor).querySelectorAll('[data-testid="change-accept"]')).toHaveLength(0)
    const caret = dom(editor).querySelector('[data-testid="ai-caret"]')
    expect(caret?.textContent).toBe('AI')
    expect(caret?.previousSibling?.textContent).toMatch(/the\s*$/)
  })

  it('drops the AI caret once the answer is complete', () => {
    const editor = editorWith(DOCUMENT)
    shorten(editor, SHORTER)
    expect(dom(editor).querySelector('[data-testid="ai-caret"]')).toBeNull()
  })

  it('replaces the suggestion with a follow-up’s answer and keeps the earlier answers', () => {
    const editor = editorWith(DOCUMENT)
    const { transport, followUps } = localTransport()
    editor.storage.streaming.transport = transport
    const id = shorten(editor, SHORTER)
    click(editor, 'change-accept', 0)
    expect(editor.commands.followUpStream('  ')).toBe(false)
    expect(editor.commands.followUpStream('Shorter still')).toBe(true)
    expect(followUps).toEqual(['Shorter still'])
    const manager = editor.storage.streaming.streamManager
    expect(manager.get(id)).toMatchObject({ finished: false, changeDecisions: new Map() })
    editor.commands.streamToNode(id, 'This is long.')
    editor.commands.finishStream(id)
    expect(manager.get(id)?.responses).toEqual([SHORTER, 'This is long.'])
    const deletions = [...dom(editor).querySelectorAll('[data-change="delete"]')].map(node => node.textContent)
    expect(deletions).toEqual(['really quite ', ', and the words are very easy to shorten', ' It says it twice.'])
    editor.commands.acceptStream()
    expect(editor.getHTML()).toBe(documentWith('This is long.'))
  })

  it('diffs a streaming rewrite at most once per animation frame, and exactly once it is complete', async () => {
    const editor = editorWith(DOCUMENT)
    const deletions = () => [...dom(editor).querySelectorAll('[data-change="delete"]')].map(node => node.textContent)
    const id = shorten(editor, '', false)
    diffRuns.count = 0
    // Six chunks within one frame: one diff, on the first; the others move its changes along.
    for (const word of ['This ', 'is ', 'long, ', 'and ', 'the ', 'words']) {
      editor.commands.streamToNode(id, word)
    }
    expect(diffRuns.count).toBe(1)
    expect(deletions()).toEqual([])
    // The next frame draws the changes of everything that arrived.
    await vi.waitFor(() => expect(deletions()).toEqual(['really quite ']))
    expect(diffRuns.count).toBe(2)

    editor.commands.streamToNode(id, ' are easy to shorten.')
    editor.commands.finishStream(id)
    expect(deletions()).toEqual(['really quite ', 'very ', ' It says it twice.'])
    expect(dom(editor).querySelectorAll('[data-testid="change-accept"]')).toHaveLength(3)
  })
})

describe('the suggestion’s controls', () => {
  it('offer accept all and reject all (as review-accept and review-reject) and a follow-up box on a rewrite', async () => {
    const { editor, container: root, unmount } = await renderEditor(DOCUMENT)
    try {
      const { transport, followUps } = localTransport()
      editor.storage.streaming.transport = transport
      await act(async () => {
        shorten(editor, SHORTER)
      })
      expect(root.querySelector('[data-testid="stream-original"]')).toBeNull()
      const button = (testId: string) => root.querySelector<HTMLButtonElement>(`button[data-testid="${testId}"]`)
      expect(button('review-accept')?.querySelector('[data-testid="accept-all"]')?.textContent).toBe('Accept all')
      expect(button('review-reject')?.querySelector('[data-testid="reject-all"]')?.textContent).toBe('Reject all')
      const input = root.querySelector<HTMLInputElement>('[data-testid="follow-up"]')
      if (!input) {
        throw new Error('no follow-up box')
      }
      await act(async () => {
        Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value')?.set?.call(input, 'More formal')
        input.dispatchEvent(new Event('input', { bubbles: true }))
      })
      await act(async () => {
        root.querySelector<HTMLButtonElement>('[data-testid="follow-up-send"]')?.click()
      })
      expect(followUps).toEqual(['More formal'])
      expect(root.querySelector('[data-testid="follow-up"]')).toBeNull()

      const id = editor.storage.streaming.streamManager.activeStreamId ?? ''
      await act(async () => {
        editor.commands.streamToNode(id, 'This is long.')
        editor.commands.finishStream(id)
      })
      await act(async () => {
        root.querySelector<HTMLElement>('[data-testid="accept-all"]')?.click()
      })
      expect(editor.getHTML()).toBe(documentWith('This is long.'))
    } finally {
      await unmount()
    }
  })

  it('reject all, and review-reject on a plain suggestion, leave the original', async () => {
    const { editor, container: root, unmount } = await renderEditor(DOCUMENT)
    try {
      editor.storage.streaming.transport = localTransport().transport
      const before = editor.getHTML()
      await act(async () => {
        shorten(editor, SHORTER)
      })
      await act(async () => {
        root.querySelector<HTMLElement>('[data-testid="reject-all"]')?.click()
      })
      expect(streamingNodes(editor)).toEqual([])
      expect(editor.getHTML()).toBe(before)

      await act(async () => {
        editor.commands.startStream({ streamId: 'plain', review: true })
        editor.commands.streamToNode('plain', 'An answer.')
        editor.commands.finishStream('plain')
      })
      expect(root.querySelector('[data-testid="reject-all"]')).toBeNull()
      await act(async () => {
        root.querySelector<HTMLButtonElement>('button[data-testid="review-reject"]')?.click()
      })
      expect(streamingNodes(editor)).toEqual([])
      expect(editor.getHTML()).toBe(before)
    } finally {
      await unmount()
    }
  })
})
