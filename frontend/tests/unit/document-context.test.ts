/**
 * Context capture: what an action sends about the document (PROTOCOL.md `context`): the
 * selection and the text before and after it, as Markdown from Tiptap's serializer, within
 * the budgets, cut so that the text nearest the cursor stays; and where the action's answer
 * goes.
 */
import type { Editor } from '@tiptap/core'
import { afterEach, describe, expect, it } from 'vitest'

import type { ActionRequest, StreamingOptions, StreamingTransport } from '../../src/streaming'
import {
  captureContext,
  cutAfter,
  cutBefore,
  markdownSerializer,
} from '../../src/streaming/document-context'
import { createEditor, positionAfter, streamingNodes } from './helpers'

const editors: Editor[] = []

afterEach(() => {
  editors.splice(0).forEach(editor => editor.destroy())
})

function editorWith(content: string, options: Partial<StreamingOptions> = {}): Editor {
  const editor = createEditor(content, options)
  editors.push(editor)
  return editor
}

/** A transport that records the actions the editor hands it. */
function recordingTransport(): { transport: StreamingTransport; requests: ActionRequest[] } {
  const requests: ActionRequest[] = []
  const ack = async () => ({ ok: true })
  return {
    requests,
    transport: {
      pause: ack,
      resume: ack,
      cancel: ack,
      runAction: async request => {
        requests.push(request)
      },
    },
  }
}

function contextOf(editor: Editor, from: number, to: number, before = 4000, after = 1000) {
  const serialize = markdownSerializer(editor.extensionManager.baseExtensions)
  return captureContext(editor.state.doc, from, to, { before, after }, serialize)
}

function select(editor: Editor, text: string): { from: number; to: number } {
  const to = positionAfter(editor, text)
  const range = { from: to - text.length, to }
  editor.commands.setTextSelection(range)
  return range
}

const ARTICLE =
  '<h2>Plan</h2><p>Ship the <strong>editor</strong> in <em>May</em>.</p>' +
  '<ul><li><p>Write the docs</p></li><li><p>Test it</p></li></ul><p>Then rest.</p>'

describe('captureContext', () => {
  it('sends the selection as Markdown, with the text before and after it', () => {
    const editor = editorWith(ARTICLE)
    const to = positionAfter(editor, 'May')
    const from = positionAfter(editor, 'Ship the ')
    expect(contextOf(editor, from, to)).toEqual({
      format: 'markdown',
      selection: '**editor** in *May*',
      before: '## Plan\n\nShip the ',
      after: '.\n\n- Write the docs\n- Test it\n\nThen rest.',
    })
  })

  it('keeps the structure of a selection across blocks', () => {
    const editor = editorWith(ARTICLE)
    const context = contextOf(editor, positionAfter(editor, 'Ship the '), positionAfter(editor, 'Write the docs'))
    expect(context.selection).toBe('**editor** in *May*.\n\n- Write the docs')
  })

  it('sends no selection for a cursor, and nothing empty', () => {
    const editor = editorWith('<p>First words</p>')
    expect(contextOf(editor, 1, 1)).toEqual({ format: 'markdown', after: 'First words' })
    const end = positionAfter(editor, 'First words')
    expect(contextOf(editor, end, end)).toEqual({ format: 'markdown', before: 'First words' })
  })

  it('keeps the text nearest the cursor within the budgets', () => {
    const paragraphs = Array.from({ length: 60 }, (_, i) => `<p>Paragraph ${i} says something short.</p>`)
    const editor = editorWith(paragraphs.join(''))
    const cursor = positionAfter(editor, 'Paragraph 30 says')
    const context = contextOf(editor, cursor, cursor, 120, 70)
    expect(context.before?.length).toBeLessThanOrEqual(120)
    expect(context.before).toMatch(/Paragraph 29 says something short\.\n\nParagraph 30 says$/)
    expect(context.before).not.toContain('Paragraph 1 ')
    expect(context.after?.length).toBeLessThanOrEqual(70)
    expect(context.after).toMatch(/^ something short\.\n\nParagraph 31 says something short\./)
    expect(context.after).not.toContain('Paragraph 59')
  })

  it('leaves out a side whose budget is 0', () => {
    const editor = editorWith('<p>Before the cursor and after it</p>')
    const cursor = positionAfter(editor, 'Before the cursor')
    expect(contextOf(editor, cursor, cursor, 0, 0)).toEqual({ format: 'markdown' })
  })

  it('writes a settled answer as its blocks', () => {
    const editor = editorWith('<p>Intro</p><div data-streaming-node><h3>Answer</h3><p>It <em>works</em></p></div>')
    const end = editor.state.doc.content.size
    expect(contextOf(editor, end, end).before).toBe('Intro\n\n### Answer\n\nIt *works*')
  })
})

describe('cutBefore and cutAfter', () => {
  it('cut at a word boundary, keeping the side nearest the cursor', () => {
    expect(cutBefore('alpha beta gamma', 8)).toBe('gamma')
    expect(cutBefore('alpha beta gamma', 10)).toBe('beta gamma')
    expect(cutBefore('alpha beta gamma', 100)).toBe('alpha beta gamma')
    expect(cutAfter('alpha beta gamma', 8)).toBe('alpha')
    expect(cutAfter('alpha beta gamma', 10)).toBe('alpha beta')
    expect(cutAfter('alpha beta gamma', 0)).toBe('')
  })
})

describe('actions', () => {
  it('take the context when they start, within the extension’s budgets', () => {
    const editor = editorWith('<p>One two three four five six seven.</p><p>Rewrite this part please.</p><p>End.</p>', {
      context: { before: 16, after: 0 },
    })
    const { transport, requests } = recordingTransport()
    editor.storage.streaming.transport = transport
    select(editor, 'this part')
    expect(editor.commands.aiShorten()).toBe(true)
    expect(requests).toHaveLength(1)
    expect(requests[0]?.start).toEqual({
      action: 'shorten',
      context: { format: 'markdown', selection: 'this part', before: 'seven.\n\nRewrite ' },
    })
  })

  it('send their prompt and options', () => {
    const editor = editorWith('<p>Bonjour tout le monde.</p>')
    const { transport, requests } = recordingTransport()
    editor.storage.streaming.transport = transport
    select(editor, 'Bonjour')
    expect(editor.commands.aiTranslate('German', { prompt: 'Keep it short' })).toBe(true)
    expect(requests[0]?.start).toMatchObject({
      action: 'translate',
      prompt: 'Keep it short',
      options: { language: 'German' },
      context: { selection: 'Bonjour' },
    })
  })

  it('are refused without what they need', () => {
    const editor = editorWith('<p>Some text</p>')
    expect(editor.can().aiContinue()).toBe(false)
    const { transport, requests } = recordingTransport()
    editor.storage.streaming.transport = transport
    expect(editor.can().aiContinue()).toBe(true)
    expect(editor.can().aiShorten()).toBe(false)
    expect(editor.commands.runAction('custom')).toBe(false)
    select(editor, 'Some')
    expect(editor.can().aiShorten()).toBe(true)
    expect(editor.commands.runAction('translate')).toBe(false)
    expect(requests).toEqual([])
    expect(streamingNodes(editor)).toEqual([])
  })

  it('put a rewrite in place of the selection, reviewed as tracked changes', () => {
    const editor = editorWith('<p>Keep this. Rewrite me. Keep that.</p>')
    const { transport, requests } = recordingTransport()
    editor.storage.streaming.transport = transport
    select(editor, 'Rewrite me.')
    editor.commands.aiImprove()
    const record = editor.storage.streaming.streamManager.get(requests[0]?.streamId)
    expect(record).toMatchObject({ trackChanges: true, review: true, original: 'Rewrite me.' })
    expect(editor.getText()).not.toContain('Rewrite me.')
  })

  it('write a continuation at the cursor and a summary after the selected block', () => {
    const editor = editorWith('<p>First paragraph.</p><p>Second paragraph.</p>')
    const { transport } = recordingTransport()
    editor.storage.streaming.transport = transport
    editor.commands.setTextSelection(positionAfter(editor, 'First paragraph.'))
    editor.commands.aiContinue()
    const [continued] = streamingNodes(editor)
    expect(editor.state.doc.child(1).type.name).toBe('streamingNode')
    expect(continued?.node.attrs.isActive).toBe(true)

    const other = editorWith('<p>First paragraph.</p><p>Second paragraph.</p>')
    other.storage.streaming.transport = transport
    select(other, 'First')
    other.commands.aiSummarize()
    expect(other.state.doc.child(0).textContent).toBe('First paragraph.')
    expect(other.state.doc.child(1).type.name).toBe('streamingNode')
    expect(other.state.doc.child(2).textContent).toBe('Second paragraph.')
  })

  it('follow the insert of an action the server listed', () => {
    const editor = editorWith('<p>Alpha. Beta.</p><p>Gamma.</p>')
    const { transport, requests } = recordingTransport()
    editor.storage.streaming.transport = transport
    editor.storage.streaming.actions = [
      { id: 'bulletize', label: 'As a list', needsSelection: true, options: [], insert: 'after' },
    ]
    expect(editor.commands.runAction('bulletize')).toBe(false)
    select(editor, 'Beta.')
    expect(editor.commands.runAction('bulletize')).toBe(true)
    expect(requests[0]?.start.action).toBe('bulletize')
    expect(editor.state.doc.child(0).textContent).toBe('Alpha. Beta.')
    expect(editor.state.doc.child(1).type.name).toBe('streamingNode')
  })
})
