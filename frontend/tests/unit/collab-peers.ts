/**
 * Collaborative documents without a server, for the unit tests: Y.Docs wired to each other
 * in memory (each update reaches every other doc at once, with the receiver's provider as
 * its origin, as y-websocket applies them), their awareness relayed the same way, editors
 * bound to them with Tiptap's Collaboration extension, and a stand-in for the server's AI
 * peer that writes blocks in the shapes y-tiptap gives StarterKit nodes (research §1.1).
 */
import { Editor } from '@tiptap/core'
import Collaboration from '@tiptap/extension-collaboration'
import StarterKit from '@tiptap/starter-kit'
import { applyAwarenessUpdate, Awareness, encodeAwarenessUpdate } from 'y-protocols/awareness'
import * as Y from 'yjs'

import { StreamingExtension, StreamingNode } from '../../src/streaming'
import { streamingCollaboration } from '../../src/streaming/collab'
import { SharedDocument } from '../../src/streaming/collab-document'

export const DOCUMENT_ID = 'team-notes'

/** One participant's copy of the document: its Y.Doc, awareness and provider. */
export interface Peer {
  doc: Y.Doc
  awareness: Awareness
  /** What the editor is given as its provider; the origin of the updates it receives. */
  provider: { awareness: Awareness }
}

/** `count` copies of one document, each update and awareness change relayed to all others. */
export function createPeers(count: number): Peer[] {
  const peers: Peer[] = Array.from({ length: count }, () => {
    const doc = new Y.Doc()
    const awareness = new Awareness(doc)
    return { doc, awareness, provider: { awareness } }
  })
  for (const peer of peers) {
    peer.doc.on('update', (update: Uint8Array, origin: unknown) => {
      if (origin === peer.provider) {
        return
      }
      for (const other of peers) {
        if (other !== peer) Y.applyUpdate(other.doc, update, other.provider)
      }
    })
    peer.awareness.on(
      'update',
      ({ added, updated, removed }: { added: number[]; updated: number[]; removed: number[] }, origin: unknown) => {
        if (origin === 'remote') {
          return
        }
        const update = encodeAwarenessUpdate(peer.awareness, [...added, ...updated, ...removed])
        for (const other of peers) {
          if (other !== peer) applyAwarenessUpdate(other.awareness, update, 'remote')
        }
      },
    )
  }
  return peers
}

/** Stops the awareness timers and the docs. */
export function destroyPeers(peers: Peer[]): void {
  for (const peer of peers) {
    peer.awareness.destroy()
    peer.doc.destroy()
  }
}

const PlainStreamingNode = StreamingNode.extend({ addNodeView: () => null })

/** An editor bound to a peer's document, with the streaming extension in collaboration mode. */
export function collabEditor(peer: Peer): Editor {
  return new Editor({
    element: document.createElement('div'),
    extensions: [
      StarterKit.configure({ undoRedo: false, trailingNode: false }),
      PlainStreamingNode,
      StreamingExtension.configure({
        collaboration: streamingCollaboration({ documentId: DOCUMENT_ID, provider: peer.provider }),
      }),
      Collaboration.configure({ document: peer.doc }),
    ],
  })
}

/** Every textblock's text, in document order. */
export function blockTexts(editor: Editor): string[] {
  const texts: string[] = []
  editor.state.doc.descendants(node => {
    if (node.isTextblock) {
      texts.push(node.textContent)
      return false
    }
    return true
  })
  return texts
}

/** Base64 as the anchor carries it, back to bytes. */
export function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), character => character.charCodeAt(0))
}

/** The fragment index an anchor stands for in `doc` (the server decodes it the same way). */
export function anchorIndex(anchor: string, doc: Y.Doc): number | null {
  return Y.createAbsolutePositionFromRelativePosition(Y.decodeRelativePosition(fromBase64(anchor)), doc)?.index ?? null
}

type Marks = Record<string, Record<string, unknown>> | null

/**
 * The server's AI peer, played in a peer's doc: it names its session in its awareness,
 * creates each block whole in one transaction and appends text to its last text run; like
 * the server's writer, each transaction also notes what it did outside the fragment.
 */
export class AiWriter {
  private index: number
  private text: Y.XmlText | null = null

  constructor(
    private readonly peer: Peer,
    sessionId: string,
    anchor?: string,
  ) {
    const fragment = peer.doc.getXmlFragment('default')
    this.index = anchor === undefined ? fragment.length : (anchorIndex(anchor, peer.doc) ?? fragment.length)
    peer.awareness.setLocalState({ user: { name: 'AI', color: '#7c3aed', aiInstanceId: sessionId } })
  }

  /** A new block holding `text`, after the last one this peer wrote (or at the anchor). */
  block(name: string, text: string, attributes: Record<string, unknown> = {}, marks: Marks = null): Y.XmlText {
    const fragment = this.peer.doc.getXmlFragment('default')
    const element = new Y.XmlElement(name)
    const run = new Y.XmlText()
    this.peer.doc.transact(() => {
      this.note(`block ${name}`)
      for (const [key, value] of Object.entries(attributes)) {
        // Typed as strings by Yjs; a heading's level goes in as the number y-tiptap reads.
        element.setAttribute(key, value as string)
      }
      run.insert(0, text, marks ?? {})
      element.insert(0, [run])
      fragment.insert(this.index, [element])
      this.note(text)
    }, 'ai')
    this.index += 1
    this.text = run
    return run
  }

  /** More text at the end of the last block's text run. */
  append(text: string, marks: Marks = null): void {
    const run = this.text
    if (!run) {
      throw new Error('no block yet')
    }
    this.peer.doc.transact(() => {
      this.note('append')
      run.insert(run.length, text, marks ?? {})
      this.note(text)
    }, 'ai')
  }

  /** The server's bookkeeping, in a root type of its own. */
  private note(entry: string): void {
    this.peer.doc.getArray<string>('aiWriters').push([entry])
  }

  /** The peer is done: its awareness state goes (as the server clears it). */
  end(): void {
    this.peer.awareness.setLocalState(null)
  }
}

/** The editor's shared document (the binding the collaboration option made). */
export function sharedDocument(editor: Editor): SharedDocument {
  const binding = editor.storage.streaming.collaboration
  if (!(binding instanceof SharedDocument)) {
    throw new Error('the editor has no shared document')
  }
  return binding
}
