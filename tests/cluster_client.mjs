// socket.io-client through nginx: create a session, watch it on /stream/<id> with the given
// transport, pause and resume it mid-stream from that socket, collect until complete.
// Usage: node tests/cluster_client.mjs http://127.0.0.1:PORT websocket|polling
import { createRequire } from 'node:module'

const require = createRequire(new URL('../frontend/package.json', import.meta.url))
const { io } = require('socket.io-client')

const [base, transport] = process.argv.slice(2)
const post = (path, body) =>
  fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  }).then((r) => r.json())

const { sessionId } = await post('/api/streaming/session', {
  userId: `nginx-${transport}`,
  config: { maxTokens: 150, tokensPerSecond: 200 },
})
const socket = io(`${base}/stream/${sessionId}`, { transports: [transport], timeout: 5000 })
const chunks = []
let paused = null
const done = new Promise((resolve, reject) => {
  socket.on('chunk', async (chunk) => {
    chunks.push(chunk)
    if (chunks.length === 5) {
      paused = await socket.timeout(5000).emitWithAck('pause-stream')
      await socket.timeout(5000).emitWithAck('resume-stream')
    }
  })
  socket.on('complete', resolve)
  socket.on('stream-error', reject)
})
await new Promise((resolve, reject) => {
  socket.on('connect', resolve)
  socket.on('connect_error', reject)
})
await post(`/api/streaming/${sessionId}/start`, { prompt: 'Explain load balancing' })
const complete = await done
socket.disconnect()
console.log(JSON.stringify({ sessionId, chunks, complete, paused }))
// A long-poll still in flight would keep Node running.
process.exit(0)
