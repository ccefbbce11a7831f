/**
 * Ghost-text autocomplete: a completion is asked for when the writer rests at the end of a
 * text block; its text shows after the cursor, outside the document and its history; Tab
 * accepts it, Mod-ArrowRight its next word, Escape dismisses it; typing its own next
 * characters keeps the rest, typing anything else dismisses it and cancels its session.
 */
import type { Editor } from '@tiptap/core'
import { undoDepth } from '@tiptap/pm/history'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'

import type { CompletionRequest, CompletionSink, StreamingTransport } from '../../src/streaming'
import { canComplete, ghostOf } from '../../src/streaming/autocomplete'
import { createEditor, positionAfter } from './helpers'

const DEBOUNCE_MS = 200

interface FakeCompletion {
  request: CompletionRequest
  sink: CompletionSink
  cancelled: boolean
}

let editor: Editor
let completions: FakeCompletion[]

function completingTransport(): StreamingTransport {
  const ack = async () => ({ ok: true })
  return {
    pause: ack,
    resume: ack,
    cancel: ack,
    complete: (request, sink) => {
      const completion: FakeCompletion = { request, sink, cancelled: false }
      completions.push(completion)
      return {
        cancel: () => {
          completion.cancelled = true
        },
      }
    },
  }
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
  completions = []
  editor = createEditor('<p>Hello</p><p>Second line here</p>', { autocomplete: { debounceMs: DEBOUNCE_MS } })
  document.body.append(editor.view.dom)
  editor.storage.streaming.transport = completingTransport()
  editor.view.focus()
  editor.commands.setTextSelection(positionAfter(editor, 'Hello'))
})

afterEach(() => {
  editor.view.dom.remove()
  editor.destroy()
  vi.useRealTimers()
})

/** Types `text` at the cursor as the browser would: through handleTextInput, else a plain insert. */
function type(text: string): void {
  const { view } = editor
  const { from, to } = view.state.selection
  const insert = () => view.state.tr.insertText(text, from, to)
  const handled = view.someProp('handleTextInput', handler => handler(view, from, to, text, insert))
  if (!handled) {
    view.dispatch(insert())
  }
}

function press(key: string, init: KeyboardEventInit = {}): void {
  editor.view.dom.dispatchEvent(new KeyboardEvent('keydown', { key, bubbles: true, cancelable: true, ...init }))
}

function ghostElement(): HTMLElement | null {
  return editor.view.dom.querySelector('[data-testid="ghost"]')
}

function firstParagraph(): string {
  return editor.state.doc.child(0).textContent
}

/** Types, rests, and gets a completion streaming `text` (still open unless `end`). */
function complete(text: string, { end = false } = {}): FakeCompletion {
  type(' wor')
  vi.advanceTimersByTime(DEBOUNCE_MS)
  const completion = completions.at(-1)
  if (!completion) {
    throw new Error('no completion was asked for')
  }
  completion.sink.session('session-1')
  completion.sink.chunk(text)
  if (end) {
    completion.sink.end()
  }
  return completion
}

describe('autocomplete', () => {
  it('asks for a completion once the writer rests at the end of a paragraph', () => {
    type(' wor')
    vi.advanceTimersByTime(DEBOUNCE_MS - 1)
    expect(completions).toHaveLength(0)
    type('l')
    vi.advanceTimersByTime(DEBOUNCE_MS - 1)
    expect(completions).toHaveLength(0)
    vi.advanceTimersByTime(1)
    expect(completions).toHaveLength(1)
    expect(completions[0]?.request.context).toEqual({
      format: 'markdown',
      before: 'Hello worl',
      after: '\n\nSecond line here',
    })
  })

  it('shows the ghost after the cursor, outside the document and its history', () => {
    const json = () => JSON.stringify(editor.getJSON())
    type(' wor')
    const depth = undoDepth(editor.state)
    const before = json()
    vi.advanceTimersByTime(DEBOUNCE_MS)
    completions[0]?.sink.session('session-1')
    completions[0]?.sink.chunk('ld, ')
    completions[0]?.sink.chunk('again')
    expect(ghostElement()?.textContent).toBe('ld, again')
    expect(ghostElement()?.dataset.sessionId).toBe('session-1')
    expect(ghostElement()?.dataset.streaming).toBe('true')
    expect(ghostElement()?.previousSibling?.textContent).toBe('Hello wor')
    expect(json()).toBe(before)
    expect(editor.getText()).not.toContain('again')
    expect(undoDepth(editor.state)).toBe(depth)
    completions[0]?.sink.end()
    expect(ghostElement()?.dataset.streaming).toBe('false')
  })

  it('accepts the ghost with Tab, as an undo step of its own', () => {
    complete('ld, again', { end: true })
    press('Tab')
    expect(firstParagraph()).toBe('Hello world, again')
    expect(ghostElement()).toBeNull()
    expect(editor.state.selection.head).toBe(positionAfter(editor, 'again'))
    expect(completions[0]?.cancelled).toBe(false)
    editor.commands.undo()
    expect(firstParagraph()).toBe('Hello wor')
  })

  it('cancels the rest of a ghost accepted while it still streams', () => {
    const completion = complete('ld')
    press('Tab')
    expect(firstParagraph()).toBe('Hello world')
    expect(completion.cancelled).toBe(true)
  })

  it('accepts the next word with Mod-ArrowRight, and keeps the rest', () => {
    complete('ld, said the  editor', { end: true })
    press('ArrowRight', { ctrlKey: true })
    expect(firstParagraph()).toBe('Hello world,')
    expect(ghostElement()?.textContent).toBe(' said the  editor')
    press('ArrowRight', { ctrlKey: true })
    press('ArrowRight', { ctrlKey: true })
    expect(firstParagraph()).toBe('Hello world, said the')
    press('ArrowRight', { ctrlKey: true })
    expect(firstParagraph()).toBe('Hello world, said the  editor')
    expect(ghostOf(editor.state)).toBeNull()
  })

  it('dismisses the ghost with Escape and cancels its session', () => {
    const completion = complete('ld')
    press('Escape')
    expect(ghostElement()).toBeNull()
    expect(completion.cancelled).toBe(true)
    expect(firstParagraph()).toBe('Hello wor')
    completion.sink.chunk('more')
    expect(ghostOf(editor.state)).toBeNull()
  })

  it('keeps the rest of the ghost while the writer types its own next characters', () => {
    const completion = complete('ld, again')
    type('l')
    expect(ghostElement()?.textContent).toBe('d, again')
    type('d, ')
    expect(firstParagraph()).toBe('Hello world, ')
    expect(ghostElement()?.textContent).toBe('again')
    completion.sink.chunk(' and again')
    expect(ghostElement()?.textContent).toBe('again and again')
    expect(completion.cancelled).toBe(false)
    vi.advanceTimersByTime(DEBOUNCE_MS)
    expect(completions).toHaveLength(1)
  })

  it('dismisses the ghost and cancels its session when the writer types anything else', () => {
    const completion = complete('ld, again')
    type('k')
    expect(firstParagraph()).toBe('Hello work')
    expect(ghostElement()).toBeNull()
    expect(completion.cancelled).toBe(true)
  })

  it('moves the ghost along when the document changes elsewhere (a collaborator’s edit), and keeps its session', () => {
    const completion = complete('ld, again')
    const second = positionAfter(editor, 'Second line here') - 'Second line here'.length
    editor.view.dispatch(editor.state.tr.insertText('A new ', second))
    editor.view.dispatch(editor.state.tr.insertText('Oh, ', 1))
    expect(ghostElement()?.textContent).toBe('ld, again')
    expect(ghostElement()?.previousSibling?.textContent).toBe('Oh, Hello wor')
    expect(completion.cancelled).toBe(false)
    completion.sink.chunk(' and on')
    expect(ghostElement()?.textContent).toBe('ld, again and on')
    press('Tab')
    expect(editor.getText({ blockSeparator: '|' })).toBe('Oh, Hello world, again and on|A new Second line here')
  })

  it('dismisses the ghost and cancels its session when someone else changes the text at the cursor', () => {
    const completion = complete('ld')
    const cursor = editor.state.selection.head
    editor.view.dispatch(editor.state.tr.delete(cursor - 'wor'.length, cursor))
    expect(ghostOf(editor.state)).toBeNull()
    expect(completion.cancelled).toBe(true)
    expect(firstParagraph()).toBe('Hello ')
  })

  it('dismisses the ghost when the cursor moves away', () => {
    const completion = complete('ld')
    editor.commands.setTextSelection(2)
    expect(ghostOf(editor.state)).toBeNull()
    expect(completion.cancelled).toBe(true)
  })

  it('asks for nothing in the middle of a paragraph, or without focus', () => {
    editor.commands.setTextSelection(positionAfter(editor, 'Second'))
    type('s')
    vi.advanceTimersByTime(DEBOUNCE_MS * 2)
    expect(completions).toHaveLength(0)
    editor.commands.setTextSelection(positionAfter(editor, 'Hello'))
    editor.view.dom.blur()
    type('!')
    vi.advanceTimersByTime(DEBOUNCE_MS * 2)
    expect(completions).toHaveLength(0)
  })

  it('asks for nothing after changes the writer did not type: an undo, a command, a stream', () => {
    type(' wor')
    editor.commands.undo()
    vi.advanceTimersByTime(DEBOUNCE_MS * 2)
    expect(completions).toHaveLength(0)
    editor.commands.insertContent(' more')
    vi.advanceTimersByTime(DEBOUNCE_MS * 2)
    expect(completions).toHaveLength(0)

    // An AI stream that writes while the writer rests ends the rest, even once it is over.
    type(' wor')
    editor.commands.startStream({ streamId: 'answer', insertAt: 'end' })
    editor.commands.streamToNode('answer', 'An answer.')
    editor.commands.finishStream('answer')
    expect(editor.getText()).toContain('An answer.')
    expect(canComplete(editor.state, editor.storage.streaming.streamManager)).toBe(true)
    vi.advanceTimersByTime(DEBOUNCE_MS * 2)
    expect(completions).toHaveLength(0)
  })

  it('leaves Tab and Escape alone when no ghost shows', () => {
    expect(editor.commands.acceptAutocomplete()).toBe(false)
    expect(editor.commands.acceptAutocompleteWord()).toBe(false)
    expect(editor.commands.dismissAutocomplete()).toBe(false)
  })
})

describe('canComplete', () => {
  it('wants a cursor at the end of a text block with text, and no AI stream around', () => {
    const manager = editor.storage.streaming.streamManager
    expect(canComplete(editor.state, manager)).toBe(true)
    editor.commands.setTextSelection(positionAfter(editor, 'Hell'))
    expect(canComplete(editor.state, manager)).toBe(false)
    editor.commands.setTextSelection({ from: 1, to: 3 })
    expect(canComplete(editor.state, manager)).toBe(false)
    editor.commands.setTextSelection(positionAfter(editor, 'Hello'))
    editor.commands.startStream({ insertAt: 'end' })
    editor.commands.setTextSelection(positionAfter(editor, 'Hello'))
    expect(canComplete(editor.state, manager)).toBe(false)
  })
})
