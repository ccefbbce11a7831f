/**
 * Collaborative documents, the editor's side: Y.Docs wired to each other in memory stand
 * in for the `/collab` server, the fake session server for the streaming API, and a peer
 * doc whose awareness names the session plays the server's AI peer. The anchor names the
 * right block, a start sends `target`, chunks are not written by the editor, the AI's text
 * fades in for every collaborator, and reject deletes exactly what the AI wrote.
 */
import type { Editor } from '@tiptap/core'
import { TextSelection } from '@tiptap/pm/state'
import { afterEach, describe, expect, it, vi } from 'vitest'
import * as Y from 'yjs'

import { StreamingWebSocketService, type StreamTarget } from '../../src/streaming'
import { aiRevealPluginKey, anchorAfterBlock } from '../../src/streaming/collab'
import { StreamingController, type StreamingControllerOptions } from '../../src/streaming/streaming-controller'
import {
  AiWriter,
  anchorIndex,
  blockTexts,
  collabEditor,
  createPeers,
  destroyPeers,
  DOCUMENT_ID,
  type Peer,
  sharedDocument,
} from './collab-peers'
import { type FakeServer, type FakeServerOptions, startFakeServer } from './fake-server'
import { streamingNodes } from './helpers'

let cleanups: (() => Promise<void> | void)[] = []

afterEach(async () => {
  for (const cleanup of cleanups.reverse()) {
    await cleanup()
  }
  cleanups = []
})

/**
 * `count` editors on wired copies of one document (the first is the writer who asks), and
 * one more copy with no editor, where the AI peer writes as the server would.
 */
function collaborators(count: number): { peers: Peer[]; editors: Editor[]; server: Peer } {
  const peers = createPeers(count + 1)
  const server = peers[count] as Peer
  const editors = peers.slice(0, count).map(peer => collabEditor(peer))
  cleanups.push(() => {
    editors.forEach(editor => editor.destroy())
    destroyPeers(peers)
  })
  return { peers, editors, server }
}

async function fakeServer(options: FakeServerOptions = {}): Promise<FakeServer> {
  const server = await startFakeServer(options)
  cleanups.push(() => server.close())
  return server
}

function drive(
  editor: Editor,
  fake: FakeServer,
  options: Partial<StreamingControllerOptions> = {},
): StreamingController {
  const service = new StreamingWebSocketService({ baseUrl: fake.wsUrl, reconnectDelay: 10 })
  const controller = new StreamingController({ editor, service, apiBaseUrl: fake.url, review: true, ...options })
  const detach = controller.attach()
  cleanups.push(() => {
    detach()
    controller.dispose()
    service.disconnect()
  })
  return controller
}

/** Puts the cursor at the end of the textblock holding `text`. */
function cursorIn(editor: Editor, text: string): void {
  let at: number | null = null
  editor.state.doc.descendants((node, pos) => {
    if (at === null && node.isTextblock && node.textContent === text) {
      at = pos + node.nodeSize - 1
    }
    return at === null
  })
  if (at === null) {
    throw new Error(`no block "${text}"`)
  }
  editor.view.dispatch(editor.state.tr.setSelection(TextSelection.create(editor.state.doc, at)))
}

/** The text every reveal decoration covers, in the editor's document. */
function revealed(editor: Editor): string[] {
  const decorations = aiRevealPluginKey.getState(editor.state)?.decorations
  return (decorations?.find() ?? []).map(({ from, to }) => editor.state.doc.textBetween(from, to, '|'))
}

function startBody(fake: FakeServer, sessionId: string | null): Record<string, unknown> {
  const body = fake.sessions.get(sessionId ?? '')?.startBody
  if (!body) {
    throw new Error('the session was not started')
  }
  return body
}

const SCRIPT = ['## Plan', '\n\nFirst **do** this.']

describe('the anchor', () => {
  it('names the block after which the answer goes, and keeps naming it', () => {
    const { peers, editors, server } = collaborators(2)
    const [writer, other] = editors as [Editor, Editor]
    writer.commands.setContent('<p>One</p><p>Two</p><p>Three</p>')
    const fragment = peers[0]?.doc.getXmlFragment('default') as Y.XmlFragment

    cursorIn(writer, 'Two')
    const anchor = anchorAfterBlock(fragment, writer.state.doc, writer.state.selection.$to.pos)
    expect(anchorIndex(anchor, server.doc)).toBe(2)

    // Someone adds a block above and types into "Two": the anchor still means "after Two".
    other.commands.insertContentAt(0, '<p>Zero</p>')
    cursorIn(other, 'Two')
    other.commands.insertContent(' and a half')
    expect(blockTexts(writer)).toEqual(['Zero', 'One', 'Two and a half', 'Three'])
    expect(anchorIndex(anchor, server.doc)).toBe(3)

    // Between two top-level blocks: after the one before; at the very start: before everything.
    const between = writer.state.doc.child(0).nodeSize
    expect(anchorIndex(anchorAfterBlock(fragment, writer.state.doc, between), server.doc)).toBe(1)
    expect(anchorIndex(anchorAfterBlock(fragment, writer.state.doc, 0), server.doc)).toBe(0)
  })

  it('comes from the cursor or the end of the selection, and is left out for the end', () => {
    const { editors } = collaborators(1)
    const [writer] = editors as [Editor]
    writer.commands.setContent('<p>One</p><p>Two</p><p>Three</p>')
    const shared = sharedDocument(writer)
    const one = writer.state.doc.child(0).nodeSize
    const two = writer.state.doc.child(1).nodeSize
    writer.view.dispatch(writer.state.tr.setSelection(TextSelection.create(writer.state.doc, 2, one + two - 2)))
    const { tr } = writer.state
    const peerDoc = shared.sync.doc

    expect(shared.targetAt(tr, 'end')).toEqual({ documentId: DOCUMENT_ID })
    expect(anchorIndex(shared.targetAt(tr, 'selection').anchor ?? '', peerDoc)).toBe(2)
    expect(anchorIndex(shared.targetAt(tr, 'cursor').anchor ?? '', peerDoc)).toBe(2)
    expect(anchorIndex(shared.targetAt(tr, 3).anchor ?? '', peerDoc)).toBe(1)
  })
})

describe('a session that writes into the shared document', () => {
  it('sends target with the anchor, shows the session, and writes no chunk itself', async () => {
    const fake = await fakeServer({ script: SCRIPT, version2: true })
    const { editors, server } = collaborators(1)
    const [writer] = editors as [Editor]
    writer.commands.setContent('<p>One</p><p>Two</p>')
    cursorIn(writer, 'One')
    const chunks = vi.fn()
    const controller = drive(writer, fake, { review: false, onChunk: chunks })

    await controller.startStreaming('Plan my day', { insertAt: 'cursor' })
    const { sessionId, streamId } = controller.getSnapshot()
    const target = startBody(fake, sessionId).target as StreamTarget
    expect(target.documentId).toBe(DOCUMENT_ID)
    expect(anchorIndex(target.anchor ?? '', server.doc)).toBe(1)
    expect(startBody(fake, sessionId).prompt).toBe('Plan my day')

    await vi.waitFor(() => expect(controller.getSnapshot().state).toBe('completed'))
    expect(chunks).toHaveBeenCalledTimes(SCRIPT.length)
    // The text arrives through Yjs, from the server: the editor wrote none of it.
    expect(blockTexts(writer)).toEqual(['One', 'Two'])
    expect(streamingNodes(writer)).toHaveLength(0)
    const record = writer.storage.streaming.streamManager.get(streamId)
    expect(record).toMatchObject({ target, finished: true, status: 'complete', decision: null })
    expect(writer.storage.streaming.streamManager.text(streamId ?? '').text).toBe(SCRIPT.join(''))
  })

  it('goes to the end of the document without an anchor, and pauses and resumes the session', async () => {
    const fake = await fakeServer({ script: Array.from({ length: 40 }, (_, i) => `w${i} `), intervalMs: 20 })
    const { editors } = collaborators(1)
    const [writer] = editors as [Editor]
    const controller = drive(writer, fake, { review: false })

    await controller.startStreaming('Go on')
    const { sessionId } = controller.getSnapshot()
    expect(startBody(fake, sessionId).target).toEqual({ documentId: DOCUMENT_ID })

    expect(controller.pauseStreaming()).toBe(true)
    await vi.waitFor(() => expect(controller.getSnapshot().state).toBe('paused'))
    expect(controller.resumeStreaming()).toBe(true)
    await vi.waitFor(() => expect(controller.getSnapshot().state).toBe('streaming'))
    expect(fake.sessions.get(sessionId ?? '')?.commands.map(command => command.event)).toEqual([
      'pause-stream',
      'resume-stream',
    ])
    expect(await controller.cancelStreaming()).toBe(true)
    expect(controller.getSnapshot().state).toBe('cancelled')
    expect(streamingNodes(writer)).toHaveLength(0)
  })

  it('runs an action with the anchor after the selection', async () => {
    const fake = await fakeServer({ script: SCRIPT })
    const { editors, server } = collaborators(1)
    const [writer] = editors as [Editor]
    writer.commands.setContent('<p>One</p><p>Two long sentence</p><p>Three</p>')
    const one = writer.state.doc.child(0).nodeSize
    writer.view.dispatch(writer.state.tr.setSelection(TextSelection.create(writer.state.doc, one + 1, one + 9)))
    const controller = drive(writer, fake)

    expect(await controller.runAction('shorten')).toBe(true)
    const body = startBody(fake, controller.getSnapshot().sessionId)
    expect(body).toMatchObject({ action: 'shorten', context: { selection: 'Two long' } })
    expect(anchorIndex((body.target as StreamTarget).anchor ?? '', server.doc)).toBe(2)
    expect(streamingNodes(writer)).toHaveLength(0)
  })
})

describe("the AI peer's text", () => {
  it('fades in for every collaborator, and what people type does not', () => {
    const { editors, server } = collaborators(2)
    const [writer, reader] = editors as [Editor, Editor]
    writer.commands.setContent('<p>Intro</p>')
    const ai = new AiWriter(server, 'session-1')

    ai.block('heading', 'Plan', { level: 2 })
    ai.append(' for ')
    ai.append('today', { bold: {} })
    for (const editor of [writer, reader]) {
      expect(blockTexts(editor)).toEqual(['Intro', 'Plan for today'])
      expect(revealed(editor)).toEqual(['Plan', ' for ', 'today'])
      expect(editor.view.dom.querySelectorAll('.streaming-chunk').length).toBeGreaterThan(0)
    }
    expect(writer.getHTML()).toContain('<h2>Plan for <strong>today</strong></h2>')

    // A person's typing, on either side, is not the AI's.
    cursorIn(reader, 'Intro')
    reader.commands.insertContent('!')
    expect(revealed(writer)).toEqual(['Plan', ' for ', 'today'])
  })

  it('does not fade in a document sync that brings many blocks', () => {
    const { editors, server } = collaborators(1)
    const [editor] = editors as [Editor]
    const [elsewhere] = createPeers(1) as [Peer]
    cleanups.push(() => destroyPeers([elsewhere]))
    // The AI wrote a whole answer the editor has not seen yet: it joins, and gets it at once.
    const ai = new AiWriter(elsewhere, 'session-2')
    for (let index = 0; index < 6; index += 1) {
      ai.block('paragraph', `Block ${index}`)
    }
    server.awareness.setLocalState({ user: { name: 'AI', aiInstanceId: 'session-2' } })
    Y.applyUpdate(server.doc, Y.encodeStateAsUpdate(elsewhere.doc), 'sync')
    expect(blockTexts(editor)).toHaveLength(6)
    expect(revealed(editor)).toEqual([])
  })
})

describe('review of an answer in the shared document', () => {
  async function reviewedAnswer() {
    const fake = await fakeServer({ script: SCRIPT })
    const { editors, server } = collaborators(2)
    const [writer, other] = editors as [Editor, Editor]
    writer.commands.setContent('<p>Before</p><p>After</p>')
    cursorIn(writer, 'Before')
    const controller = drive(writer, fake)
    await controller.startStreaming('Plan my day', { insertAt: 'cursor' })
    const { sessionId } = controller.getSnapshot()
    const target = startBody(fake, sessionId).target as StreamTarget
    const ai = new AiWriter(server, sessionId ?? '', target.anchor)
    const heading = ai.block('heading', 'Plan', { level: 2 })
    ai.block('paragraph', 'First ')
    ai.append('do', { bold: {} })
    ai.append(' this.')
    ai.end()
    await vi.waitFor(() => expect(controller.getSnapshot().state).toBe('completed'))
    expect(controller.getSnapshot().isStreaming).toBe(false)
    expect(writer.storage.streaming.streamManager.pendingReview()?.id).toBe(controller.getSnapshot().streamId)
    return { fake, writer, other, controller, ai, heading, sessionId, server }
  }

  it('rejects exactly what the AI wrote, for everyone, around and inside what others typed', async () => {
    const { writer, other, controller, heading } = await reviewedAnswer()
    expect(blockTexts(writer)).toEqual(['Before', 'Plan', 'First do this.', 'After'])

    // A collaborator types above the answer, inside its paragraph, and after it.
    cursorIn(other, 'Before')
    other.commands.insertContent(' (edited)')
    cursorIn(other, 'First do this.')
    other.commands.insertContent(' Mine.')
    other.commands.insertContentAt(other.state.doc.content.size, '<p>Also mine</p>')
    expect(heading.length).toBe(4)
    expect(blockTexts(writer)).toEqual(['Before (edited)', 'Plan', 'First do this. Mine.', 'After', 'Also mine'])

    expect(controller.reject()).toBe(true)
    const expected = ['Before (edited)', ' Mine.', 'After', 'Also mine']
    expect(blockTexts(writer)).toEqual(expected)
    expect(blockTexts(other)).toEqual(expected)
    expect(writer.storage.streaming.streamManager.pendingReview()).toBeUndefined()
    expect(streamingNodes(writer)).toHaveLength(0)
  })

  it('removes whole the blocks nobody else touched, and nothing outside the fragment', async () => {
    const { writer, other, controller, server } = await reviewedAnswer()
    const notes = server.doc.getArray('aiWriters').length
    expect(controller.reject()).toBe(true)
    expect(blockTexts(writer)).toEqual(['Before', 'After'])
    expect(blockTexts(other)).toEqual(['Before', 'After'])
    expect(server.doc.getArray('aiWriters').length).toBe(notes)
  })

  it("counts the AI's last update even when it comes after the AI left the awareness", async () => {
    const { other, controller, ai } = await reviewedAnswer()
    ai.append(' Late.')
    expect(blockTexts(other)).toEqual(['Before', 'Plan', 'First do this. Late.', 'After'])
    expect(controller.reject()).toBe(true)
    expect(blockTexts(other)).toEqual(['Before', 'After'])
  })

  it('keeps the answer on accept, and forgets what the AI wrote', async () => {
    const { writer, other, controller, sessionId } = await reviewedAnswer()
    expect(controller.accept()).toBe(true)
    expect(writer.storage.streaming.streamManager.pendingReview()).toBeUndefined()
    expect(sharedDocument(writer).reject(sessionId ?? '')).toBe(false)
    expect(blockTexts(other)).toEqual(['Before', 'Plan', 'First do this.', 'After'])
  })

  it('regenerates: the answer goes, and a new session is asked for with the same target', async () => {
    const { fake, writer, other, controller, sessionId } = await reviewedAnswer()
    const first = startBody(fake, sessionId)

    expect(controller.regenerate()).toBe(true)
    expect(blockTexts(other)).toEqual(['Before', 'After'])
    await vi.waitFor(() => expect(controller.getSnapshot().sessionId).not.toBe(sessionId))
    const second = controller.getSnapshot().sessionId
    await vi.waitFor(() => expect(fake.sessions.get(second ?? '')?.startBody).not.toBeNull())
    expect(startBody(fake, second)).toEqual(first)
    await vi.waitFor(() => expect(controller.getSnapshot().state).toBe('completed'))
    expect(writer.storage.streaming.streamManager.pendingReview()?.responses).toEqual([
      SCRIPT.join(''),
      SCRIPT.join(''),
    ])
  })
})

describe('several AI sessions writing into one document', () => {
  it('tells them apart by client, and rejects one whole, written by two clients (a takeover)', () => {
    // The server writes each session as a client of its own; a process that takes a
    // session over writes it as a new client, named by the same session.
    const peers = createPeers(4)
    const [mine, first, successor, other] = peers as [Peer, Peer, Peer, Peer]
    const editor = collabEditor(mine)
    cleanups.push(() => {
      editor.destroy()
      destroyPeers(peers)
    })
    editor.commands.setContent('<p>Top</p>')
    const shared = sharedDocument(editor)
    shared.follow('session-a')
    shared.follow('session-b')

    const a = new AiWriter(first, 'session-a')
    a.block('paragraph', 'A one')
    const b = new AiWriter(other, 'session-b')
    b.block('paragraph', 'B one')
    a.append(', more.')
    a.end() // its process dies
    const taken = new AiWriter(successor, 'session-a')
    taken.block('paragraph', 'A two.')
    b.append(', more.')
    taken.end()
    b.end()

    expect(blockTexts(editor)).toEqual(['Top', 'A one, more.', 'B one, more.', 'A two.'])
    expect(shared.peers.sessionOf(first.doc.clientID)).toBe('session-a')
    expect(shared.peers.sessionOf(successor.doc.clientID)).toBe('session-a')
    expect(shared.peers.sessionOf(other.doc.clientID)).toBe('session-b')

    expect(shared.reject('session-a')).toBe(true)
    expect(blockTexts(editor)).toEqual(['Top', 'B one, more.'])
    expect(shared.reject('session-b')).toBe(true)
    expect(blockTexts(editor)).toEqual(['Top'])
  })
})
