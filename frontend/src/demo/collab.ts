/**
 * The demo page's collaborative mode (`?doc=<id>`), loaded only then: a Yjs document
 * joined through the server's `/collab` endpoint with y-websocket's provider (the page's
 * token, if it has one, goes in `?token=`), a name and colour for this tab (`?name=` to
 * choose it), and the editor extensions that bind the editor to the document.
 */
import type { AnyExtension } from '@tiptap/core'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'

import type { StreamingCollaboration } from '../streaming'
import { streamingCollaboration } from '../streaming/collab'

/** How this tab shows in the others' editors (CollaborationCaret's `user`). */
export interface DemoUser {
  name: string
  color: string
}

/** A collaborative page: the document, its provider, this tab's user and the editor's side. */
export interface DemoCollaboration {
  documentId: string
  provider: WebsocketProvider
  user: DemoUser
  /** The streaming extension's `collaboration` option: the server writes the AI's answers. */
  streaming: StreamingCollaboration
  /** Collaboration (bound to the document's `default` fragment) and the others' carets. */
  extensions: AnyExtension[]
}

const COLORS = ['#f97316', '#16a34a', '#2563eb', '#db2777', '#ca8a04', '#0891b2', '#9333ea', '#dc2626']

function randomUser(name: string | null): DemoUser {
  const number = Math.floor(Math.random() * 90) + 10
  return {
    name: name || `Writer ${number}`,
    color: COLORS[number % COLORS.length] ?? '#2563eb',
  }
}

/** Joins the document the query names (`?doc=<id>`). */
export function openCollaboration(params: URLSearchParams, documentId: string): DemoCollaboration {
  const token = params.get('token')
  const doc = new Y.Doc()
  // The server serves this page, so /collab is at the page's own origin.
  const provider = new WebsocketProvider(`${window.location.origin.replace(/^http/, 'ws')}/collab`, documentId, doc, {
    params: token ? { token } : {},
  })
  const user = randomUser(params.get('name'))
  return {
    documentId,
    provider,
    user,
    streaming: streamingCollaboration({ documentId, provider }),
    extensions: [Collaboration.configure({ document: doc }), CollaborationCaret.configure({ provider, user })],
  }
}
