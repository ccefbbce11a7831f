// Load for bench/collab.py: N collaborative documents, C collaborators on each (the npm
// y-websocket provider, as Tiptap's Collaboration uses it), one AI answer written into each
// document by the server while every collaborator watches.
//
// Latency: a chunk's `timestamp` (when the server made it from the provider's text) to the
// moment a collaborator's document holds the chunk's last character: the AI writer's state
// in the document (`aiWriters[sessionId]`: `start` + the length of `source`) says how many
// characters of the answer are in it, and changes in the same transaction as the text.
//
// Usage: node bench/collab_load.mjs <http://host:port> [--docs 50] [--collaborators 5]
//          [--tokens 200] [--tps 40] [--ramp 1] [--timeout 60]
// Prints one JSON line: {documents, collaborators, completed, updates, aiUpdates,
//   latencyMs: {n, p50, p90, p99, max, mean}, errors}.
import { createRequire } from 'node:module'

const require = createRequire(new URL('../frontend/package.json', import.meta.url))
const Y = require('yjs')
const { WebsocketProvider } = require('y-websocket')
const WebSocket = require('ws')

const [base, ...rest] = process.argv.slice(2)
const option = (name, fallback) => {
  const at = rest.indexOf(name)
  return at >= 0 ? Number(rest[at + 1]) : fallback
}
const DOCS = option('--docs', 50)
const COLLABORATORS = option('--collaborators', 5)
const TOKENS = option('--tokens', 200)
const TPS = option('--tps', 40)
const RAMP = option('--ramp', 1)
const TIMEOUT = option('--timeout', 60) * 1000
const run = Math.random().toString(36).slice(2, 8)
const errors = {}
const fail = (kind) => (errors[kind] = (errors[kind] ?? 0) + 1)

const post = async (path, body) => {
  const response = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  })
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`)
  return response.json()
}
const get = async (path) => {
  const response = await fetch(`${base}${path}`)
  if (!response.ok) throw new Error(`${path}: ${response.status}`)
  return response.json()
}

/** One collaborator: its document, and when each count of the answer's characters arrived. */
function collaborator(documentId) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`${base.replace(/^http/, 'ws')}/collab`, documentId, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
  })
  const seen = { doc, provider, arrivals: [], updates: 0, aiUpdates: 0, sessionId: null }
  const writers = doc.getMap('aiWriters')
  doc.on('update', (_update, origin) => {
    if (origin !== provider) return
    seen.updates += 1
    const state = seen.sessionId && writers.get(seen.sessionId)
    if (!state) return
    const written = Number(state.get('start') ?? 0) + (state.get('source')?.length ?? 0)
    const last = seen.arrivals.at(-1)
    if (!last || written > last[1]) {
      seen.aiUpdates += 1
      seen.arrivals.push([Date.now(), written])
    }
  })
  seen.synced = new Promise((resolve) => provider.on('sync', (synced) => synced && resolve()))
  return seen
}

const documents = []
for (let i = 0; i < DOCS; i++) {
  const documentId = `bench-${run}-${i}`
  documents.push({ documentId, collaborators: Array.from({ length: COLLABORATORS }, () => collaborator(documentId)) })
}
await Promise.all(documents.flatMap((d) => d.collaborators.map((c) => c.synced)))

for (const d of documents) {
  const { sessionId } = await post('/api/streaming/session', {
    userId: `collab-${d.documentId}`,
    config: { maxTokens: TOKENS, tokensPerSecond: TPS },
  })
  d.sessionId = sessionId
  for (const c of d.collaborators) c.sessionId = sessionId
}
const started = Date.now()
await Promise.all(
  documents.map(
    (d, i) =>
      new Promise((resolve) =>
        setTimeout(() => {
          post(`/api/streaming/${d.sessionId}/start`, {
            prompt: 'Explain collaborative editing',
            target: { documentId: d.documentId },
          })
            .catch(() => fail('start'))
            .then(resolve)
        }, (RAMP * 1000 * i) / DOCS),
      ),
  ),
)

// Until every answer is in every collaborator's document (the writer marks it done).
const done = (c) => c.doc.getMap('aiWriters').get(c.sessionId)?.get('done') === true
while (Date.now() - started < TIMEOUT && !documents.every((d) => d.collaborators.every(done))) {
  await new Promise((resolve) => setTimeout(resolve, 50))
}

const latencies = []
let completed = 0
let updates = 0
let aiUpdates = 0
for (const d of documents) {
  if (d.collaborators.every(done)) completed += 1
  else fail('incomplete')
  let chunks = []
  for (let after = -1; ; ) {
    const page = await get(`/api/streaming/${d.sessionId}/chunks?after=${after}&limit=1000`)
    chunks = chunks.concat(page.chunks)
    if (!page.chunks.length || page.chunks.at(-1).seq >= page.lastSeq) break
    after = page.chunks.at(-1).seq
  }
  let end = 0
  const ends = chunks.map((chunk) => [chunk.timestamp, (end += chunk.content.length)])
  for (const c of d.collaborators) {
    updates += c.updates
    aiUpdates += c.aiUpdates
    let at = 0
    for (const [timestamp, chunkEnd] of ends) {
      while (at < c.arrivals.length && c.arrivals[at][1] < chunkEnd) at += 1
      if (at < c.arrivals.length) latencies.push(c.arrivals[at][0] - timestamp)
      else fail('chunk never arrived')
    }
  }
  for (const c of d.collaborators) c.provider.destroy()
}

latencies.sort((a, b) => a - b)
const pick = (q) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : null)
const mean = latencies.length ? latencies.reduce((a, b) => a + b, 0) / latencies.length : null
process.stdout.write(
  JSON.stringify({
    documents: DOCS,
    collaborators: COLLABORATORS,
    completed,
    updates,
    aiUpdates,
    latencyMs: { n: latencies.length, p50: pick(0.5), p90: pick(0.9), p99: pick(0.99), max: latencies.at(-1) ?? null, mean },
    seconds: (Date.now() - started) / 1000,
    errors,
  }) + '\n',
)
process.exit(0)
