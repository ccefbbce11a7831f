// A collaborator for the tests: the npm `y-websocket` WebsocketProvider on the server's
// /collab, joined to one document, driven over stdin and reporting on stdout, one JSON
// object a line each way (tests/test_collab_server.py drives several at once).
//
// Usage: node tests/collab_client.mjs <ws://host:port/collab> <documentId>
//          [--token T] [--name N] [--validate] [--no-reconnect]
//
// Commands, {"id": n, "op": ..., ...}; each is answered {"event": "done", "id": n, ...}
// (or {"event": "failed", "id": n, "error"}):
//   paragraph {text}           append a paragraph holding `text` to the `default` fragment
//   type {text, block, offset} insert `text` at `offset` of the text of top-level block `block`
//   delete {block}             delete top-level block `block`
//   wait {contains?, synced?, peer?, value?, timeout?}
//                              until the document's text contains `contains`, the provider
//                              synced, and another client's awareness state has `user[peer]`
//                              (equal to `value` when given); `timeout` ms (default 10000)
//   waitNoPeer {peer, value?, timeout?}
//                              until no other client's awareness state has `user[peer]`
//                              (equal to `value` when given)
//   user {fields}              merge `fields` into this client's awareness `user`
//   dump                       -> {text, xml, json, state}: plain text (blocks joined by "\n"),
//                              the fragment's XML, ProseMirror JSON for StarterKit's schema,
//                              the whole document as a base64 update
//   awareness                  -> {states: {clientId: state}}, the others' states
//   authors                    -> {clients: {clientId: {chars, session}}, shared}: per client
//                              that made visible content of the `default` fragment, its
//                              characters there and the AI session its awareness last named
//                              (`user.aiInstanceId`, kept after the state went, as the editor
//                              package's AiPeers does), and `shared`: how many remote
//                              transactions since the sync inserted items of several clients
//                              one of which named an AI session
//   reject {client}            delete every item `client` made in the `default` fragment, in
//                              one transaction, keeping an element that holds someone else's
//                              content (what the editor package's reject deletes)
//   raw {base64}               send these bytes on the socket as one binary frame
//   anchor {index}             -> {anchor}: base64 of Y.encodeRelativePosition of `index` in the
//                              `default` fragment, assoc -1 (after block index-1), as the editor
//                              package sends it in a start's `target`
//   close                      leave (destroy the provider) and exit
// Events: {"event": "status", "status"}, {"event": "synced"},
//   {"event": "closed", "code", "reason"} (the server closed the socket),
//   {"event": "invalid", "error"} (--validate: after an update the document does not convert
//   to a valid document of StarterKit's schema without changes), {"event": "error", "error"}
//   (an exception, e.g. yjs's "Unexpected case").
import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'

const require = createRequire(new URL('../frontend/package.json', import.meta.url))
const Y = require('yjs')
const { WebsocketProvider } = require('y-websocket')
const WebSocket = require('ws')
const { getSchema } = require('@tiptap/core')
const { StarterKit } = require('@tiptap/starter-kit')
const { yXmlFragmentToProseMirrorRootNode } = require('@tiptap/y-tiptap')

const [serverUrl, documentId, ...rest] = process.argv.slice(2)
const option = (name) => {
  const at = rest.indexOf(name)
  return at >= 0 ? rest[at + 1] : undefined
}
const token = option('--token')
const name = option('--name') ?? 'tester'
const validate = rest.includes('--validate')
const reconnect = !rest.includes('--no-reconnect')

const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')
process.on('uncaughtException', (error) => emit({ event: 'error', error: String(error?.stack ?? error) }))

const schema = getSchema([StarterKit])
const doc = new Y.Doc()
const fragment = doc.getXmlFragment('default')
const provider = new WebsocketProvider(serverUrl, documentId, doc, {
  WebSocketPolyfill: WebSocket,
  params: token ? { token } : {},
  disableBc: true,
  shouldReconnect: () => reconnect,
})
provider.awareness.setLocalStateField('user', { name, color: '#0ea5e9' })

provider.on('status', ({ status }) => emit({ event: 'status', status }))
provider.on('sync', (synced) => synced && emit({ event: 'synced' }))
provider.on('connection-close', (event) => {
  if (event) emit({ event: 'closed', code: event.code, reason: String(event.reason) })
})

/** The text of a type: its texts' characters, top-level blocks joined by "\n". */
const plainText = (type) =>
  type
    .toArray()
    .map((child) =>
      child instanceof Y.XmlText
        ? child.toDelta().map((d) => (typeof d.insert === 'string' ? d.insert : '')).join('')
        : plainText(child),
    )
    .join(type === fragment ? '\n' : '')

/** The document as StarterKit's schema reads it, from a copy: reading may change a document. */
const toProseMirror = () => {
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(doc))
  let changed = false
  copy.on('update', () => {
    changed = true
  })
  const node = yXmlFragmentToProseMirrorRootNode(copy.getXmlFragment('default'), schema)
  node.check()
  if (changed) throw new Error('the document changed when read for the schema (an invalid node was dropped)')
  return node
}

const listeners = new Set()
const changed = () => {
  for (const listener of [...listeners]) listener()
}
doc.on('update', () => {
  if (validate) {
    try {
      toProseMirror()
    } catch (error) {
      emit({ event: 'invalid', error: String(error?.message ?? error) })
    }
  }
  changed()
})
provider.on('sync', changed)
provider.awareness.on('change', changed)

// The AI session each client last named in its awareness, and the remote transactions
// whose insertions came from several clients, one of them an AI's (an editor attributes a
// transaction to an AI session only when that session's client is its sole author).
const sessions = new Map()
let shared = 0
const noteSessions = () => {
  for (const [clientId, state] of provider.awareness.getStates()) {
    const session = state?.user?.aiInstanceId
    if (typeof session === 'string') sessions.set(clientId, session)
  }
}
provider.awareness.on('change', noteSessions)
doc.on('afterTransaction', (transaction) => {
  if (transaction.local || !provider.synced) return
  const authors = [...transaction.afterState].filter(
    ([client, clock]) => clock > (transaction.beforeState.get(client) ?? 0),
  )
  if (authors.length > 1 && authors.some(([client]) => sessions.has(client))) shared += 1
})

/** Each client's visible characters in a type (an element or an embed counts one). */
const countAuthors = (type, counts) => {
  for (let item = type._start; item !== null; item = item.right) {
    if (item.deleted) continue
    counts.set(item.id.client, (counts.get(item.id.client) ?? 0) + (item.countable ? item.length : 0))
    if (item.content instanceof Y.ContentType) countAuthors(item.content.type, counts)
  }
  return counts
}

/** Whether a type holds visible content some other client than `client` made. */
const holdsOthers = (type, client) => {
  for (let item = type._start; item !== null; item = item.right) {
    if (item.deleted) continue
    if (item.id.client !== client) return true
    if (item.content instanceof Y.ContentType && holdsOthers(item.content.type, client)) return true
  }
  return false
}

/** The items `client` made in a type and below, not deleted. */
const itemsOf = (type, client, found) => {
  for (let item = type._start; item !== null; item = item.right) {
    if (item.content instanceof Y.ContentType) itemsOf(item.content.type, client, found)
    if (!item.deleted && item.id.client === client) found.push(item)
  }
  return found
}

const peers = () =>
  [...provider.awareness.getStates().entries()].filter(([clientId]) => clientId !== doc.clientID)

const hasPeer = (key, value) =>
  peers().some(([, state]) => {
    const found = state?.user?.[key]
    return found !== undefined && (value === undefined || found === value)
  })

const until = (predicate, timeout) =>
  new Promise((resolve, reject) => {
    if (predicate()) return resolve()
    const listener = () => {
      if (!predicate()) return
      listeners.delete(listener)
      clearTimeout(timer)
      resolve()
    }
    const timer = setTimeout(() => {
      listeners.delete(listener)
      reject(new Error(`timed out after ${timeout} ms`))
    }, timeout)
    listeners.add(listener)
  })

const textOf = (block) => {
  const element = fragment.get(block)
  const text = element.toArray().find((child) => child instanceof Y.XmlText)
  if (!text) throw new Error(`block ${block} holds no text`)
  return text
}

const ops = {
  paragraph: ({ text }) => {
    doc.transact(() => {
      const paragraph = new Y.XmlElement('paragraph')
      paragraph.insert(0, [new Y.XmlText(text)])
      fragment.insert(fragment.length, [paragraph])
    })
  },
  type: ({ text, block, offset }) => {
    textOf(block).insert(offset, text)
  },
  delete: ({ block }) => {
    fragment.delete(block, 1)
  },
  wait: async ({ contains, synced, peer, value, timeout = 10000 }) => {
    await until(
      () =>
        (contains === undefined || plainText(fragment).includes(contains)) &&
        (!synced || provider.synced) &&
        (peer === undefined || hasPeer(peer, value)),
      timeout,
    )
  },
  waitNoPeer: async ({ peer, value, timeout = 10000 }) => {
    await until(() => !hasPeer(peer, value), timeout)
  },
  user: ({ fields }) => {
    provider.awareness.setLocalStateField('user', { ...provider.awareness.getLocalState()?.user, ...fields })
  },
  dump: () => ({
    text: plainText(fragment),
    xml: fragment.toString(),
    // An empty fragment is no document for the schema yet (an editor would add a paragraph).
    json: fragment.length ? toProseMirror().toJSON() : null,
    state: Buffer.from(Y.encodeStateAsUpdate(doc)).toString('base64'),
  }),
  awareness: () => ({ states: Object.fromEntries(peers()) }),
  authors: () => {
    noteSessions()
    const clients = {}
    for (const [client, chars] of countAuthors(fragment, new Map())) {
      clients[client] = { chars, session: sessions.get(client) ?? null }
    }
    return { clients, shared }
  },
  reject: ({ client }) => {
    const items = itemsOf(fragment, client, []).filter(
      (item) => !(item.content instanceof Y.ContentType && holdsOthers(item.content.type, client)),
    )
    doc.transact((transaction) => {
      for (const item of items) item.delete(transaction)
    })
    return { deleted: items.length }
  },
  anchor: ({ index }) => ({
    anchor: Buffer.from(
      Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(fragment, index, -1)),
    ).toString('base64'),
  }),
  raw: ({ base64 }) => {
    provider.ws.send(Buffer.from(base64, 'base64'))
  },
  close: () => {
    provider.destroy()
    setImmediate(() => process.exit(0))
  },
}

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue
  const command = JSON.parse(line)
  try {
    const result = (await ops[command.op](command)) ?? {}
    emit({ event: 'done', id: command.id, ...result })
  } catch (error) {
    emit({ event: 'failed', id: command.id, error: String(error?.message ?? error) })
  }
}
provider.destroy()
process.exit(0)
