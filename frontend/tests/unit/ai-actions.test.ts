/**
 * Actions, follow-ups and completions through the controller behind useStreaming, against
 * the fake server: what each start request carries (PROTOCOL.md version 3), where the
 * answer goes (a follow-up or regenerate into the stream whose controls were used), and
 * the session of a ghost text cancelled when the writer types on. And, without a server,
 * where an answer at the cursor settles: inline in the text there when it is one paragraph.
 */
import type { Editor } from '@tiptap/core'
import { act } from 'react'
import { afterEach, describe, expect, it, vi } from 'vitest'

import { type StreamingOptions, StreamingWebSocketService } from '../../src/streaming'
import { StreamingController } from '../../src/streaming/streaming-controller'
import { ACTIONS, type FakeServer, type FakeServerOptions, startFakeServer } from './fake-server'
import { createEditor, localTransport, positionAfter, renderEditor, streamingNodes, streamText } from './helpers'

const PARAGRAPH = 'This is really quite long, and the words are very easy to shorten.'

let server: FakeServer | null = null
let cleanups: (() => void | Promise<void>)[] = []

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) {
    await cleanup()
  }
  await server?.close()
  server = null
})

/** Answers each action as the demo provider would, in small chunks. */
function answer(body: Record<string, unknown>): string[] | undefined {
  if (body.action === 'shorten') return ['This is long, ', 'and the words ', 'are easy to shorten.']
  if (body.action === 'complete') return ['ld', ', again', ' and', ' again', ' and', ' again', '.']
  if (body.followUp) return ['This is long.']
  return undefined
}

async function drive(
  options: FakeServerOptions = {},
  editorOptions: Partial<StreamingOptions> = {},
  { rendered = false }: { rendered?: boolean } = {},
) {
  server = await startFakeServer({ answer, ...options })
  const fake = server
  const content = `<p>Intro.</p><p>${PARAGRAPH}</p>`
  // A rendered editor has the React node view, with each suggestion's own controls.
  const view = rendered ? await renderEditor(content, editorOptions) : null
  const editor: Editor = view?.editor ?? createEditor(content, editorOptions)
  const service = new StreamingWebSocketService({ baseUrl: fake.wsUrl, reconnectDelay: 10 })
  const controller = new StreamingController({ editor, service, apiBaseUrl: fake.url })
  const detach = controller.attach()
  cleanups.push(async () => {
    detach()
    controller.dispose()
    service.disconnect()
    if (view) {
      await view.unmount()
    } else {
      editor.destroy()
    }
  })
  const sessionOf = (id: string | null) => fake.sessions.get(id ?? '')
  return { fake, editor, controller, sessionOf, root: view?.container ?? null }
}

/** Types at the cursor as the browser does: through handleTextInput, else a plain insert. */
function type(editor: Editor, text: string): void {
  const { view } = editor
  const { from, to } = view.state.selection
  const insert = () => view.state.tr.insertText(text, from, to)
  if (!view.someProp('handleTextInput', handler => handler(view, from, to, text, insert))) {
    view.dispatch(insert())
  }
}

function selectParagraph(editor: Editor): void {
  const to = positionAfter(editor, PARAGRAPH)
  editor.commands.setTextSelection({ from: to - PARAGRAPH.length, to })
}

describe('actions through the controller', () => {
  it('start a session with the action and the document around the selection', async () => {
    const { editor, controller, sessionOf } = await drive()
    selectParagraph(editor)
    expect(await controller.runAction('shorten')).toBe(true)
    const { sessionId, streamId } = controller.getSnapshot()
    expect(sessionOf(sessionId)?.startBody).toEqual({
      action: 'shorten',
      context: { format: 'markdown', selection: PARAGRAPH, before: 'Intro.\n\n' },
    })
    const manager = editor.storage.streaming.streamManager
    await vi.waitFor(() => expect(manager.get(streamId)?.decision).toBe('pending'))
    expect(manager.get(streamId)).toMatchObject({ sessionId, trackChanges: true, transport: controller.transport })
    expect(controller.getSnapshot()).toMatchObject({ state: 'completed', isStreaming: false })

    editor.commands.acceptStream()
    expect(editor.state.doc.child(1).textContent).toBe('This is long, and the words are easy to shorten.')
    expect(streamingNodes(editor)).toEqual([])
  })

  it('are refused without a selection to work on', async () => {
    const { controller, fake } = await drive()
    expect(await controller.runAction('shorten')).toBe(false)
    expect(fake.sessions.size).toBe(0)
  })

  it('regenerate the same request, and follow up with the earlier session as the conversation', async () => {
    const { editor, controller, sessionOf } = await drive()
    selectParagraph(editor)
    await controller.runAction('shorten')
    const first = controller.getSnapshot().sessionId
    const streamId = controller.getSnapshot().streamId
    const manager = editor.storage.streaming.streamManager
    await vi.waitFor(() => expect(manager.get(streamId)?.decision).toBe('pending'))

    expect(controller.regenerate(streamId ?? undefined)).toBe(true)
    await vi.waitFor(() => expect(manager.get(streamId)?.responses).toHaveLength(2))
    const second = controller.getSnapshot().sessionId
    expect(second).not.toBe(first)
    expect(sessionOf(second)?.startBody).toEqual(sessionOf(first)?.startBody)

    expect(await controller.followUp('Shorter still')).toBe(true)
    const third = controller.getSnapshot().sessionId
    expect(sessionOf(third)?.startBody).toEqual({ action: 'custom', prompt: 'Shorter still', followUp: second })
    await vi.waitFor(() => expect(manager.get(streamId)?.responses).toHaveLength(3))
    expect(manager.get(streamId)?.responses.at(-1)).toBe('This is long.')
    expect(controller.getSnapshot().streamId).toBe(streamId)
    editor.commands.acceptStream()
    expect(editor.state.doc.child(1).textContent).toBe('This is long.')
  })

  it('follow up in the suggestion whose box was used, when two wait: with its session, into its node', async () => {
    const { editor, controller, sessionOf, root } = await drive({}, {}, { rendered: true })
    const manager = editor.storage.streaming.streamManager
    const shortened = 'This is long, and the words are easy to shorten.'
    selectParagraph(editor)
    expect(await controller.runAction('shorten')).toBe(true)
    const first = controller.getSnapshot()
    await vi.waitFor(() => expect(manager.get(first.streamId)?.decision).toBe('pending'))
    const intro = positionAfter(editor, 'Intro.')
    editor.commands.setTextSelection({ from: intro - 'Intro.'.length, to: intro })
    expect(await controller.runAction('shorten')).toBe(true)
    const second = controller.getSnapshot()
    await vi.waitFor(() => expect(manager.get(second.streamId)?.decision).toBe('pending'))
    expect(second.streamId).not.toBe(first.streamId)
    expect(second.sessionId).not.toBe(first.sessionId)

    // The box of the first suggestion (not the latest one) sends the instruction.
    const input = root?.querySelector<HTMLInputElement>(`[data-stream-id="${first.streamId}"] [data-testid="follow-up"]`)
    if (!input) {
      throw new Error('no follow-up box on the first suggestion')
    }
    await act(async () => {
      Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value')?.set?.call(input, 'Shorter still')
      input.dispatchEvent(new Event('input', { bubbles: true }))
    })
    await act(async () => {
      input.form?.requestSubmit()
    })
    await vi.waitFor(() => expect(manager.get(first.streamId)?.responses).toHaveLength(2))
    await vi.waitFor(() => expect(manager.get(first.streamId)?.decision).toBe('pending'))

    const followUp = controller.getSnapshot().sessionId
    expect(sessionOf(followUp)?.startBody).toEqual({
      action: 'custom',
      prompt: 'Shorter still',
      followUp: first.sessionId,
    })
    expect(manager.get(first.streamId)).toMatchObject({ sessionId: followUp, responses: [shortened, 'This is long.'] })
    expect(streamText(editor, first.streamId ?? '')).toBe('This is long.')
    expect(manager.get(second.streamId)).toMatchObject({
      sessionId: second.sessionId,
      decision: 'pending',
      responses: [shortened],
    })
    expect(streamText(editor, second.streamId ?? '')).toBe(shortened)
    expect(controller.getSnapshot().streamId).toBe(first.streamId)
  })

  it('regenerate the suggestion whose control was used, with its own request, when two wait', async () => {
    const { editor, controller, sessionOf } = await drive()
    const manager = editor.storage.streaming.streamManager
    selectParagraph(editor)
    await controller.runAction('shorten')
    const first = controller.getSnapshot()
    await vi.waitFor(() => expect(manager.get(first.streamId)?.decision).toBe('pending'))
    editor.commands.setTextSelection(positionAfter(editor, 'Intro.'))
    await controller.runAction('continue')
    const second = controller.getSnapshot()
    await vi.waitFor(() => expect(manager.get(second.streamId)?.decision).toBe('pending'))

    expect(controller.regenerate(first.streamId ?? undefined)).toBe(true)
    await vi.waitFor(() => expect(manager.get(first.streamId)?.responses).toHaveLength(2))
    const again = controller.getSnapshot().sessionId
    expect(again).not.toBe(second.sessionId)
    expect(sessionOf(again)?.startBody).toEqual(sessionOf(first.sessionId)?.startBody)
    expect(manager.get(second.streamId)?.responses).toHaveLength(1)
  })

  it('load the server’s actions, and follow the insert of an operator’s own', async () => {
    const { editor, controller, sessionOf } = await drive()
    expect(await controller.loadActions()).toEqual(ACTIONS)
    expect(editor.storage.streaming.actions).toEqual(ACTIONS)
    editor.commands.setTextSelection({ from: 2, to: 4 })
    expect(await controller.runAction('bulletize')).toBe(true)
    expect(sessionOf(controller.getSnapshot().sessionId)?.startBody).toMatchObject({ action: 'bulletize' })
    expect(editor.state.doc.child(1).type.name).toBe('streamingNode')
  })
})

describe('completions through the controller', () => {
  it('show a complete session’s text as ghost text, and cancel it when the writer types on', async () => {
    const { editor, fake } = await drive({ intervalMs: 40 }, { autocomplete: { debounceMs: 10 } })
    document.body.append(editor.view.dom)
    cleanups.unshift(() => editor.view.dom.remove())
    editor.view.focus()
    editor.commands.setTextSelection(positionAfter(editor, 'Intro.'))
    type(editor, ' Hello wor')

    const ghost = () => editor.view.dom.querySelector<HTMLElement>('[data-testid="ghost"]')
    await vi.waitFor(() => expect(ghost()?.textContent).toMatch(/^ld, again/))
    const sessionId = ghost()?.dataset.sessionId ?? ''
    const session = fake.sessions.get(sessionId)
    expect(session?.startBody).toEqual({
      action: 'complete',
      context: { format: 'markdown', before: 'Intro. Hello wor', after: `\n\n${PARAGRAPH}` },
    })
    expect(JSON.stringify(editor.getJSON())).not.toContain('again')
    expect(session?.state).toBe('streaming')

    type(editor, 'k')
    expect(ghost()).toBeNull()
    await vi.waitFor(() => expect(session?.state).toBe('cancelled'))
    expect(session?.httpCancels).toBe(1)
    expect(editor.state.doc.child(0).textContent).toBe('Intro. Hello work')
  })
})

/** A transport that takes actions and follow-ups without a server; the test feeds the chunks. */
/** An editor with `html` and a local transport, the cursor right after `after`. */
function editorAt(html: string, after: string): Editor {
  const editor = createEditor(html)
  cleanups.push(() => editor.destroy())
  editor.storage.streaming.transport = localTransport().transport
  editor.commands.setTextSelection(positionAfter(editor, after))
  return editor
}

/** Streams `chunks` into the stream an action just began, and finishes it. */
function answerWith(editor: Editor, chunks: string[]): string {
  const id = editor.storage.streaming.streamManager.activeStreamId
  if (!id) {
    throw new Error('no stream')
  }
  chunks.forEach(chunk => editor.commands.streamToNode(id, chunk))
  editor.commands.finishStream(id)
  return id
}

describe('an answer at the cursor', () => {
  it('of one paragraph settles inline at the end of a paragraph (complete), as one undo step', () => {
    const editor = editorAt('<p>Hello wor</p><p>Next.</p>', 'Hello wor')
    const before = editor.getJSON()
    expect(editor.commands.aiComplete()).toBe(true)
    answerWith(editor, ['ld', ', again'])
    expect(editor.commands.acceptStream()).toBe(true)
    expect(editor.getHTML()).toBe('<p>Hello world, again</p><p>Next.</p>')
    editor.commands.undo()
    expect(editor.getJSON()).toEqual(before)
  })

  it('of one paragraph keeps its leading space in the middle of a paragraph (continue)', () => {
    const editor = editorAt('<p>Hello world. The end.</p>', 'Hello world.')
    expect(editor.commands.aiContinue()).toBe(true)
    answerWith(editor, [' It went', ' **on**.'])
    editor.commands.acceptStream()
    expect(editor.getHTML()).toBe('<p>Hello world. It went <strong>on</strong>. The end.</p>')
  })

  it('of one paragraph keeps its trailing space at the start of a paragraph, and settles inline without review', () => {
    const editor = editorAt('<p>One.</p><p>world</p>', 'One.')
    editor.commands.setTextSelection(editor.state.selection.head + 2)
    expect(editor.commands.aiContinue({ review: false })).toBe(true)
    answerWith(editor, ['Big ', 'wide '])
    expect(editor.getHTML()).toBe('<p>One.</p><p>Big wide world</p>')
    expect(streamingNodes(editor)).toEqual([])
  })

  it('of several blocks, or starting a new block, still goes in as blocks', () => {
    const blocks = editorAt('<p>Hello world</p><p>Next</p>', 'Hello world')
    blocks.commands.aiContinue()
    answerWith(blocks, [' More.\n\n## Part two\n\nText.'])
    blocks.commands.acceptStream()
    expect(blocks.getHTML()).toBe('<p>Hello world</p><p>More.</p><h2>Part two</h2><p>Text.</p><p>Next</p>')

    const paragraph = editorAt('<p>Hello world</p>', 'Hello world')
    paragraph.commands.aiContinue()
    answerWith(paragraph, ['\n\nA new paragraph.'])
    paragraph.commands.acceptStream()
    expect(paragraph.getHTML()).toBe('<p>Hello world</p><p>A new paragraph.</p>')
  })
})

describe('a follow-up', () => {
  it('is refused, with nothing emptied, when the suggestion has no earlier session', () => {
    const editor = createEditor('<p>Hello</p>')
    cleanups.push(() => editor.destroy())
    const { transport, followUps } = localTransport()
    editor.commands.startStream({ streamId: 'local', review: true })
    editor.storage.streaming.streamManager.update('local', { transport })
    answerWith(editor, ['An answer.'])
    const before = editor.getJSON()
    expect(editor.storage.streaming.streamManager.get('local')).toMatchObject({ decision: 'pending', sessionId: null })

    expect(editor.commands.followUpStream('Shorter', 'local')).toBe(false)
    expect(followUps).toEqual([])
    expect(editor.getJSON()).toEqual(before)
    expect(editor.storage.streaming.streamManager.get('local')).toMatchObject({ decision: 'pending', finished: true })
  })
})
