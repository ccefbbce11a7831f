import type { Editor } from '@tiptap/core'
import { afterEach, describe, expect, it, vi } from 'vitest'

import type { StreamAck, StreamingTransport } from '../../src/streaming'
import { createEditor, positionAfter, renderEditor, streamingNodes } from './helpers'

let editors: Editor[] = []

function editorWith(content?: string, options?: Parameters<typeof createEditor>[1]): Editor {
  const editor = createEditor(content, options)
  editors.push(editor)
  return editor
}

afterEach(() => {
  editors.forEach(editor => editor.destroy())
  editors = []
})

/** Selects the first occurrence of `text`. */
function select(editor: Editor, text: string): void {
  const to = positionAfter(editor, text)
  editor.commands.setTextSelection({ from: to - text.length, to })
}

function stream(editor: Editor, chunks: string[], config: Parameters<Editor['commands']['startStream']>[0]): void {
  editor.commands.startStream({ sessionId: 's', ...config })
  chunks.forEach(chunk => editor.commands.writeChunk(chunk))
  editor.commands.finishStream(config.streamId ?? 's')
}

const ok = (): Promise<StreamAck> => Promise.resolve({ ok: true })

describe('insertAt', () => {
  it("'end' (the default) streams after the last block", () => {
    const editor = editorWith('<p>One</p><p>Two</p>')
    editor.commands.startStream({ sessionId: 's', insertAt: 'end' })
    expect(streamingNodes(editor)[0]?.pos).toBe(editor.state.doc.content.size - streamingNodes(editor)[0]!.node.nodeSize)
  })

  it("'cursor' streams at the cursor, splitting its paragraph, and settles there", () => {
    const editor = editorWith('<p>Hello world</p>')
    editor.commands.setTextSelection(positionAfter(editor, 'Hello'))
    stream(editor, ['**Bold** answer'], { insertAt: 'cursor', review: true })
    expect(editor.state.doc.child(0).textContent).toBe('Hello')
    expect(editor.state.doc.child(1).type.name).toBe('streamingNode')
    expect(editor.state.doc.child(2).textContent).toBe(' world')

    editor.commands.acceptStream()
    // A one-paragraph answer joins the text around the cursor.
    expect(editor.getHTML()).toBe('<p>Hello<strong>Bold</strong> answer world</p>')
  })

  it('a number streams at that position', () => {
    const editor = editorWith('<p>One</p><p>Two</p>')
    editor.commands.startStream({ sessionId: 's', insertAt: positionAfter(editor, 'One') + 1 })
    expect(editor.state.doc.child(1).type.name).toBe('streamingNode')
  })

  it("'selection' replaces the selected text, which comes back exactly on reject", () => {
    const editor = editorWith('<p>Keep this <em>old words</em> here.</p><p>Next</p>')
    const before = editor.getJSON()
    select(editor, 'old words')
    stream(editor, ['new ', 'words'], { insertAt: 'selection', review: true })

    expect(editor.getText()).not.toContain('old words')
    expect(editor.storage.streaming.streamManager.get('s')).toMatchObject({ original: 'old words', decision: 'pending' })
    expect(editor.commands.rejectStream()).toBe(true)
    expect(editor.getJSON()).toEqual(before)
    expect(editor.commands.rejectStream()).toBe(false)
  })

  it("'selection' accepted puts the response in place of the selection as one undo step", () => {
    const editor = editorWith('<p>Keep this old words here.</p>')
    const before = editor.getJSON()
    select(editor, 'old words')
    stream(editor, ['fresh ', '_text_'], { insertAt: 'selection', review: true })
    editor.commands.acceptStream('s')

    expect(editor.getHTML()).toBe('<p>Keep this fresh <em>text</em> here.</p>')
    expect(JSON.stringify(editor.getJSON())).not.toContain('streamingNode')
    editor.commands.undo()
    expect(editor.getJSON()).toEqual(before)
    editor.commands.redo()
    expect(editor.getHTML()).toBe('<p>Keep this fresh <em>text</em> here.</p>')
  })

  it("'selection' with a multi-block answer splits the paragraph around it", () => {
    const editor = editorWith('<p>Keep this old words here.</p>')
    select(editor, 'old words')
    stream(editor, ['# Title\n\n', '- one\n- two'], { insertAt: 'selection', review: true })
    editor.commands.acceptStream()
    expect(editor.getHTML()).toBe(
      '<p>Keep this </p><h1>Title</h1><ul><li><p>one</p></li><li><p>two</p></li></ul><p> here.</p>',
    )
  })
})

describe('review commands', () => {
  it('finishStream with review waits for a decision in the live node', () => {
    const editor = editorWith('<p>Intro</p>')
    stream(editor, ['# Answer\n\n', 'Text'], { review: true })
    const [entry] = streamingNodes(editor)
    expect(entry?.node.attrs.isActive).toBe(true)
    expect(editor.storage.streaming.streamManager.get('s')).toMatchObject({
      finished: true,
      status: 'complete',
      decision: 'pending',
      responses: ['# Answer\n\nText'],
    })
    expect(editor.can().acceptStream()).toBe(true)
    expect(editor.can().regenerateStream()).toBe(false)
  })

  it('accept and reject are keyboard shortcuts: Mod-Enter and Escape', () => {
    const editor = editorWith('<p>Intro</p>')
    const press = (key: string, ctrlKey = false): boolean =>
      !editor.view.dom.dispatchEvent(new KeyboardEvent('keydown', { key, ctrlKey, bubbles: true, cancelable: true }))
    const before = editor.getJSON()
    stream(editor, ['Kept'], { review: true })
    expect(press('Enter', true)).toBe(true)
    expect(editor.getHTML()).toBe('<p>Intro</p><p>Kept</p>')

    editor.commands.undo()
    expect(editor.getJSON()).toEqual(before)
    stream(editor, ['Dropped'], { review: true, streamId: 'second' })
    expect(press('Escape')).toBe(true)
    expect(editor.getJSON()).toEqual(before)
    expect(press('Escape')).toBe(false)
  })

  it('regenerate empties the node, asks the transport for a new response, and keeps the previous ones', () => {
    const editor = editorWith('<p>Intro</p>')
    const regenerate = vi.fn(() => Promise.resolve())
    const transport: StreamingTransport = { pause: ok, resume: ok, cancel: ok, regenerate }
    editor.storage.streaming.transport = transport
    stream(editor, ['First answer'], { review: true })

    expect(editor.commands.regenerateStream()).toBe(true)
    expect(regenerate).toHaveBeenCalledTimes(1)
    const manager = editor.storage.streaming.streamManager
    expect(manager.get('s')).toMatchObject({ finished: false, status: 'streaming', decision: null, responseIndex: 1 })
    expect(streamingNodes(editor)[0]?.node.textContent).toBe('')

    editor.commands.streamToNode('s', 'Second answer')
    editor.commands.finishStream('s')
    expect(manager.get('s')).toMatchObject({ responses: ['First answer', 'Second answer'], responseIndex: 1 })
    expect(editor.commands.showStreamResponse(0)).toBe(true)
    expect(streamingNodes(editor)[0]?.node.textContent).toBe('First answer')
    editor.commands.acceptStream()
    expect(editor.getHTML()).toBe('<p>Intro</p><p>First answer</p>')
  })

  it('takes back a trailing paragraph another plugin added after the stream', async () => {
    const { editor, unmount } = await renderEditor('<p>Intro</p>')
    const before = editor.getJSON()
    stream(editor, ['- a list at the end'], { review: true })
    expect(editor.state.doc.lastChild?.type.name).toBe('paragraph')
    editor.commands.rejectStream()
    expect(editor.getJSON()).toEqual(before)

    stream(editor, ['- a list at the end'], { review: true, streamId: 'again' })
    editor.commands.acceptStream()
    expect(editor.getHTML()).toBe('<p>Intro</p><ul><li><p>a list at the end</p></li></ul><p></p>')
    editor.commands.undo()
    expect(editor.getJSON()).toEqual(before)
    await unmount()
  })

  it('rebuilds a live stream from a snapshot or from nothing (resetStream)', () => {
    const editor = editorWith('<p>Intro</p>')
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.writeChunk('Old **text**')
    expect(editor.commands.resetStream('s', '# Snapshot\n\nso far')).toBe(true)
    editor.commands.writeChunk(' and more')
    expect(editor.getHTML()).toContain('<h1>Snapshot</h1><p>so far and more</p>')
    editor.commands.resetStream('s')
    editor.commands.writeChunk('Again')
    editor.commands.finishStream('s')
    expect(editor.getHTML()).toContain('<p>Again</p>')
    expect(editor.getText()).not.toContain('Snapshot')
  })
})
