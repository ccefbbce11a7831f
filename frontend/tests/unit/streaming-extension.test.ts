import type { Editor } from '@tiptap/core'
import { TextSelection } from '@tiptap/pm/state'
import { act } from 'react'
import { afterEach, describe, expect, it, vi } from 'vitest'

import { type StreamAck, streamingPluginKey, type StreamingTransport } from '../../src/streaming'
import { createEditor, positionAfter, renderEditor, streamingNodes, streamText } from './helpers'

let editors: Editor[] = []

function editorWith(content?: string, options?: Parameters<typeof createEditor>[1]): Editor {
  const editor = createEditor(content, options)
  editors.push(editor)
  return editor
}

afterEach(() => {
  editors.forEach(editor => editor.destroy())
  editors = []
  vi.useRealTimers()
})

function fakeTransport(ack: StreamAck = { ok: true }): StreamingTransport & { calls: string[] } {
  const calls: string[] = []
  return {
    calls,
    pause: () => {
      calls.push('pause')
      return Promise.resolve({ ...ack, state: ack.ok ? 'paused' : undefined })
    },
    resume: () => {
      calls.push('resume')
      return Promise.resolve({ ...ack, state: ack.ok ? 'streaming' : undefined })
    },
    cancel: () => {
      calls.push('cancel')
      return Promise.resolve({ ...ack, state: ack.ok ? 'cancelled' : undefined })
    },
  }
}

describe('startStream', () => {
  it('inserts an active streaming node at the end of the document, named after the session', () => {
    const editor = editorWith()
    expect(editor.commands.startStream({ sessionId: 'session-1', animationType: 'fade', speed: 50 })).toBe(true)

    const [entry] = streamingNodes(editor)
    expect(entry?.node.attrs).toEqual({ streamId: 'session-1', isActive: true, chunkCount: 0, animationType: 'fade' })
    expect(editor.state.doc.lastChild).toBe(entry?.node)
    expect(editor.storage.streaming.streamManager.active()?.id).toBe('session-1')
  })

  it('inserts at config.position, splitting the paragraph there', () => {
    const editor = editorWith('<p>Hello world</p>')
    editor.commands.startStream({ streamId: 'middle', position: positionAfter(editor, 'Hello') })
    editor.commands.writeChunk('X')

    expect(editor.state.doc.childCount).toBe(3)
    expect(editor.state.doc.child(0).textContent).toBe('Hello')
    expect(editor.state.doc.child(1).textContent).toBe('X')
    expect(editor.state.doc.child(2).textContent).toBe(' world')
  })

  it('gives two streams of one session distinct ids', () => {
    const editor = editorWith()
    editor.commands.startStream({ sessionId: 'same' })
    editor.commands.startStream({ sessionId: 'same' })
    expect(streamingNodes(editor).map(({ node }) => node.attrs.streamId)).toEqual(['same', 'same-2'])
  })

  it('is a dry run under can(): nothing is registered or inserted', () => {
    const editor = editorWith()
    expect(editor.can().startStream({ sessionId: 'dry' })).toBe(true)
    expect(streamingNodes(editor)).toHaveLength(0)
    expect(editor.storage.streaming.streamManager.get('dry')).toBeUndefined()
  })
})

describe('writeChunk', () => {
  it("appends at the stream's end, not at the cursor, and turns newlines into blocks (plain text)", () => {
    const editor = editorWith('<p>Hello world</p>')
    editor.commands.startStream({ sessionId: 's', format: 'text' })
    editor.commands.setTextSelection(2)

    expect(editor.commands.writeChunk('# Title')).toBe(true)
    expect(editor.commands.writeChunk('\n\nFirst ')).toBe(true)
    expect(editor.commands.writeChunk('line')).toBe(true)

    expect(streamText(editor, 's')).toBe('# Title\n\nFirst line')
    expect(editor.state.doc.firstChild?.textContent).toBe('Hello world')
    expect(streamingNodes(editor)[0]?.node.attrs.chunkCount).toBe(3)
    expect(editor.state.selection.from).toBe(2)
  })

  it('renders Markdown as it arrives, at the stream end, leaving the cursor alone', () => {
    const editor = editorWith('<p>Hello world</p>')
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.setTextSelection(2)

    editor.commands.writeChunk('# Title')
    expect(editor.getHTML()).toContain('<h1>Title</h1>')
    editor.commands.writeChunk('\n\nSome **bo')
    expect(editor.getHTML()).toContain('<h1>Title</h1><p>Some <strong>bo</strong></p>')
    editor.commands.writeChunk('ld** text')
    expect(editor.getHTML()).toContain('<h1>Title</h1><p>Some <strong>bold</strong> text</p>')
    expect(editor.state.selection.from).toBe(2)
    expect(streamingNodes(editor)[0]?.node.attrs.chunkCount).toBe(3)
  })

  it('marks the live paragraphs of a plain-text stream with the streaming attribute, rendered as data-streaming', () => {
    const editor = editorWith()
    editor.commands.startStream({ sessionId: 's', format: 'text' })
    editor.commands.writeChunk('live')
    expect(editor.getHTML()).toContain('<p data-streaming="true">live</p>')
    expect(editor.getHTML()).toContain('<p>Hello world</p>')
  })

  it('returns false when no stream is active', () => {
    const editor = editorWith()
    expect(editor.commands.writeChunk('nothing')).toBe(false)
  })

  it('writes at an explicit position when one is given', () => {
    const editor = editorWith('<p>Hello world</p>')
    expect(editor.commands.writeChunk(' big', positionAfter(editor, 'Hello'))).toBe(true)
    expect(editor.getText()).toBe('Hello big world')
  })

  it('keeps landing at the stream end while the user types and edits elsewhere', () => {
    const editor = editorWith('<p>Before</p><p>After</p>')
    editor.commands.startStream({ sessionId: 's', position: positionAfter(editor, 'Before') + 1 })
    editor.commands.writeChunk('one ')

    // The user types at the start of the document, before the stream...
    editor.chain().setTextSelection(1).insertContent('Typed ').run()
    editor.commands.writeChunk('two ')
    // ...adds a whole paragraph before it...
    editor.chain().setTextSelection(1).splitBlock().run()
    editor.commands.writeChunk('three ')
    // ...deletes text before it...
    editor.commands.deleteRange({ from: 2, to: 8 })
    editor.commands.writeChunk('four ')
    // ...and edits the paragraph after it, with a non-empty selection that must survive.
    const after = positionAfter(editor, 'After')
    editor.chain().setTextSelection(after).insertContent('wards').run()
    editor.commands.setTextSelection({ from: after - 5, to: after })
    editor.commands.writeChunk('five')

    expect(streamText(editor, 's')).toBe('one two three four five')
    expect(editor.state.doc.lastChild?.textContent).toBe('Afterwards')
    expect(editor.state.selection.empty).toBe(false)
    expect(editor.state.doc.textBetween(editor.state.selection.from, editor.state.selection.to)).toBe('After')
  })

  it('loses the stream (and says so) when the user deletes its node', () => {
    const editor = editorWith()
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.writeChunk('doomed')
    const [entry] = streamingNodes(editor)
    if (!entry) {
      throw new Error('no streaming node')
    }
    editor.commands.deleteRange({ from: entry.pos, to: entry.pos + entry.node.nodeSize })

    expect(editor.commands.writeChunk('more')).toBe(false)
    expect(editor.storage.streaming.streamManager.get('s')).toMatchObject({ status: 'error', finished: true })
  })
})

describe('batchWrite and streamToNode', () => {
  it('writes every chunk in one transaction', () => {
    const editor = editorWith()
    editor.commands.startStream({ sessionId: 's', format: 'text' })
    const transactions = vi.fn()
    editor.on('transaction', transactions)

    expect(editor.commands.batchWrite(['a', 'b\n', 'c'])).toBe(true)

    expect(transactions).toHaveBeenCalledTimes(1)
    expect(streamText(editor, 's')).toBe('ab\nc')
    expect(streamingNodes(editor)[0]?.node.attrs.chunkCount).toBe(3)
  })

  it('streams into the node whose streamId is given, with two streams live', () => {
    const editor = editorWith()
    editor.commands.startStream({ streamId: 'first' })
    editor.commands.startStream({ streamId: 'second' })

    expect(editor.commands.streamToNode('first', 'to first')).toBe(true)
    expect(editor.commands.streamToNode('second', 'to second')).toBe(true)
    expect(editor.commands.streamToNode('unknown', 'nowhere')).toBe(false)

    expect(streamText(editor, 'first')).toBe('to first')
    expect(streamText(editor, 'second')).toBe('to second')
  })

  it('keeps each editor’s streams in its own storage', () => {
    const one = editorWith()
    const two = editorWith()
    one.commands.startStream({ streamId: 'only-in-one' })
    expect(two.storage.streaming.streamManager.get('only-in-one')).toBeUndefined()
    expect(two.commands.streamToNode('only-in-one', 'x')).toBe(false)
  })
})

describe('finishStream', () => {
  it('turns the Markdown into rich content in an inactive node', () => {
    const editor = editorWith()
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.batchWrite([
      '# Title\n\n',
      'Some **bold**, _italic_ and `code` with a [link](https://example.com).\n\n',
      '- one\n- two\n',
    ])

    expect(editor.commands.finishStream()).toBe(true)

    const [entry, ...rest] = streamingNodes(editor)
    expect(rest).toHaveLength(0)
    expect(entry?.node.attrs).toMatchObject({ streamId: 's', isActive: false, chunkCount: 3 })
    const html = editor.getHTML()
    expect(html).toContain('<h1>Title</h1>')
    expect(html).toContain('<strong>bold</strong>')
    expect(html).toContain('<em>italic</em>')
    expect(html).toContain('<code>code</code>')
    expect(html).toMatch(/<a[^>]+href="https:\/\/example.com"[^>]*>link<\/a>/)
    expect(html).toMatch(/<ul><li><p>one<\/p><\/li><li><p>two<\/p><\/li><\/ul>/)
    expect(html).not.toContain('data-streaming=')
    expect(editor.storage.streaming.streamManager.get('s')).toMatchObject({ status: 'complete', finished: true })
    expect(editor.storage.streaming.streamManager.active()).toBeUndefined()
  })

  it('keeps the text as it arrived in plain-text mode', () => {
    const editor = editorWith('<p>x</p>', { format: 'text' })
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.batchWrite(['# Not a heading\n', '**not bold**\n\n', 'end'])
    editor.commands.finishStream('s')

    expect(streamText(editor, 's')).toBe('# Not a heading\n**not bold**\n\nend')
    expect(editor.getHTML()).not.toContain('<h1>')
    expect(editor.getHTML()).not.toContain('<strong>')
  })

  it('removes an empty stream without a trace', () => {
    const editor = editorWith()
    const before = editor.getJSON()
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.finishStream('s')
    expect(editor.getJSON()).toEqual(before)
    expect(editor.commands.finishStream('s')).toBe(false)
  })

  it('makes the whole response one undo step, apart from what the user typed meanwhile', () => {
    const editor = editorWith('<p>Hello world</p>')
    const original = editor.getJSON()
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.writeChunk('# Answer\n\n')
    editor.chain().setTextSelection(positionAfter(editor, 'world')).insertContent('!').run()
    editor.commands.writeChunk('Some text ')
    editor.commands.writeChunk('that streams.')
    editor.commands.finishStream()
    const finished = editor.getJSON()
    expect(editor.getHTML()).toContain('<h1>Answer</h1>')

    // Typing right after the stream finished is a step of its own.
    editor.chain().setTextSelection(positionAfter(editor, 'world!')).insertContent('?').run()
    editor.commands.undo()
    expect(editor.getJSON()).toEqual(finished)

    editor.commands.undo()
    expect(streamingNodes(editor)).toHaveLength(0)
    expect(editor.getText()).toBe('Hello world!')

    editor.commands.undo()
    expect(editor.getJSON()).toEqual(original)

    editor.commands.redo()
    editor.commands.redo()
    expect(editor.getJSON()).toEqual(finished)
  })

  it('keeps the content of a node reloaded from HTML', () => {
    const editor = editorWith()
    editor.commands.startStream({ sessionId: 's', animationType: 'slide' })
    editor.commands.batchWrite(['## Saved\n\n', 'text'])
    editor.commands.finishStream()
    const html = editor.getHTML()

    const reloaded = editorWith(html)
    expect(reloaded.getHTML()).toBe(html)
    expect(streamingNodes(reloaded)[0]?.node.attrs).toEqual({
      streamId: 's',
      isActive: false,
      chunkCount: 2,
      animationType: 'slide',
    })
  })
})

describe('chunk animation', () => {
  it('decorates new chunks in the React node view and never in the saved document', async () => {
    const { editor, container, unmount } = await renderEditor()
    await act(async () => {
      editor.commands.startStream({ sessionId: 's', animationType: 'wave' })
      editor.commands.writeChunk('animated ')
      editor.commands.writeChunk('words')
    })

    const view = container.querySelector('[data-streaming-node][data-stream-id="s"]')
    expect(view?.getAttribute('data-status')).toBe('streaming')
    expect(view?.querySelector('[data-testid="stream-chunk-count"]')?.textContent).toBe('2 chunks')
    const chunks = view?.querySelectorAll('.streaming-chunk.streaming-chunk--wave') ?? []
    // Markdown drops a paragraph's trailing space until the next word arrives.
    expect([...chunks].map(chunk => chunk.textContent)).toEqual(['animated', ' words'])
    expect(editor.getHTML()).not.toContain('streaming-chunk')
    expect(JSON.stringify(editor.getJSON())).not.toContain('streaming-chunk')
    await unmount()
  })

  it('shows paused, complete and error in the node view status', async () => {
    const { editor, container, unmount } = await renderEditor()
    const status = () => container.querySelector('[data-testid="stream-status"]')?.textContent
    await act(async () => {
      editor.commands.startStream({ sessionId: 's' })
      editor.commands.writeChunk('text')
      editor.commands.pauseStream()
    })
    expect(status()).toBe('Paused')
    await act(async () => {
      editor.commands.resumeStream()
      editor.commands.finishStream()
    })
    expect(status()).toBe('Complete')
    expect(container.querySelector('.streaming-node__content')?.getAttribute('contenteditable')).toBeNull()

    await act(async () => {
      editor.commands.startStream({ sessionId: 'failing' })
      editor.commands.writeChunk('partial')
    })
    const failing = () => container.querySelector('[data-stream-id="failing"]')
    expect(failing()?.querySelector('.streaming-node__content')?.getAttribute('contenteditable')).toBe('false')
    await act(async () => {
      editor.storage.streaming.streamManager.update('failing', { status: 'error', error: 'provider failed' })
      editor.commands.finishStream('failing')
    })
    expect(failing()?.getAttribute('data-status')).toBe('error')
    expect(failing()?.textContent).toContain('provider failed')
    await unmount()
  })

  it('drops decorations once their animation is over', () => {
    const editor = editorWith()
    editor.commands.startStream({ sessionId: 's', animationType: 'fade' })
    const now = Date.now()
    const spy = vi.spyOn(Date, 'now').mockReturnValue(now)
    editor.commands.writeChunk('old ')
    spy.mockReturnValue(now + 5000)
    editor.commands.writeChunk('new')
    spy.mockRestore()

    const decorations = streamingPluginKey.getState(editor.state)?.decorations.find() ?? []
    expect(decorations).toHaveLength(1)
    expect(editor.view.dom.querySelector('.streaming-chunk--fade')?.textContent).toBe(' new')
  })
})

describe('pauseStream and resumeStream', () => {
  it('reach the server through the transport in storage and track the status', async () => {
    const editor = editorWith()
    const transport = fakeTransport()
    editor.storage.streaming.transport = transport
    editor.commands.startStream({ sessionId: 's' })
    const manager = editor.storage.streaming.streamManager

    expect(editor.can().pauseStream()).toBe(true)
    expect(transport.calls).toEqual([])

    expect(editor.commands.pauseStream()).toBe(true)
    expect(manager.get('s')?.status).toBe('paused')
    expect(editor.commands.pauseStream()).toBe(false)

    expect(editor.commands.resumeStream()).toBe(true)
    expect(manager.get('s')?.status).toBe('streaming')
    await Promise.resolve()
    expect(transport.calls).toEqual(['pause', 'resume'])
  })

  it('reverts the status and reports the error when the server refuses', async () => {
    const editor = editorWith('<p>x</p>', { transport: fakeTransport({ ok: false, error: 'nope' }) })
    editor.commands.startStream({ sessionId: 's' })
    editor.commands.pauseStream()
    await vi.waitFor(() => expect(editor.storage.streaming.streamManager.get('s')?.error).toBe('nope'))
    expect(editor.storage.streaming.streamManager.get('s')?.status).toBe('streaming')
  })

  it('do nothing without an active stream', () => {
    const editor = editorWith()
    expect(editor.commands.pauseStream()).toBe(false)
    expect(editor.commands.resumeStream()).toBe(false)
  })
})

describe('streamWithAnimation and streamContent', () => {
  it('streams local text piece by piece, pausable, then finishes it', () => {
    vi.useFakeTimers()
    const editor = editorWith('<p>x</p>', { format: 'text' })
    expect(editor.commands.streamWithAnimation('one two three', 'slide')).toBe(true)
    const streamId = editor.storage.streaming.streamManager.activeStreamId ?? ''
    expect(streamingNodes(editor)[0]?.node.attrs.animationType).toBe('slide')

    vi.advanceTimersByTime(50)
    expect(streamText(editor, streamId)).toBe('one ')
    editor.commands.pauseStream()
    vi.advanceTimersByTime(500)
    expect(streamText(editor, streamId)).toBe('one ')
    editor.commands.resumeStream()
    vi.advanceTimersByTime(500)

    expect(streamText(editor, streamId)).toBe('one two three')
    expect(streamingNodes(editor)[0]?.node.attrs).toMatchObject({ isActive: false, chunkCount: 3 })
  })

  it('rejects an unknown animation type', () => {
    const editor = editorWith()
    expect(editor.commands.streamWithAnimation('text', 'spin')).toBe(false)
    expect(streamingNodes(editor)).toHaveLength(0)
  })

  it('streams at the given speed into the given position', () => {
    vi.useFakeTimers()
    const editor = editorWith('<p>first</p><p>last</p>', { format: 'text' })
    editor.commands.streamContent('a b', { speed: 10, position: positionAfter(editor, 'first') + 1 })
    vi.advanceTimersByTime(100)
    expect(editor.state.doc.child(1).textContent).toBe('a b')
    expect(editor.state.doc.lastChild?.textContent).toBe('last')
  })

  it('stops local streams when the editor is destroyed', () => {
    vi.useFakeTimers()
    const editor = createEditor()
    editor.commands.streamContent('a b c')
    editor.destroy()
    expect(() => vi.advanceTimersByTime(1000)).not.toThrow()
  })
})

describe('the streaming global attribute', () => {
  it('parses data-streaming on paragraphs and headings and renders only true', () => {
    const editor = editorWith('<h2 data-streaming>Head</h2><p>plain</p>')
    expect(editor.state.doc.child(0).attrs.streaming).toBe(true)
    expect(editor.state.doc.child(1).attrs.streaming).toBe(false)
    expect(editor.getHTML()).toBe('<h2 data-streaming="true">Head</h2><p>plain</p>')
  })
})

describe('insertStreamingNode', () => {
  it('inserts an empty streaming node with the given attributes', () => {
    const editor = editorWith('<p>x</p>')
    editor.commands.setTextSelection(editor.state.doc.content.size)
    expect(editor.commands.insertStreamingNode({ streamId: 'manual', animationType: 'fade' })).toBe(true)
    expect(streamingNodes(editor)[0]?.node.attrs).toMatchObject({ streamId: 'manual', animationType: 'fade' })
  })
})

it('TextSelection is the editor selection type used above', () => {
  const editor = editorWith()
  expect(editor.state.selection).toBeInstanceOf(TextSelection)
})
