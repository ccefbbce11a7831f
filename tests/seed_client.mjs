// The seed's client, unchanged in substance: create a session with the seed hook's body,
// connect with the seed's io(...) call, start with the seed's fetch, collect until complete.
// Usage: node tests/seed_client.mjs http://127.0.0.1:PORT [late]
// "late" starts the stream and lets it finish before connecting: the replay must arrive whole.
import { createRequire } from 'node:module'

const require = createRequire(new URL('../frontend/package.json', import.meta.url))
const { io } = require('socket.io-client')

const base = process.argv[2]
const wsBase = base.replace(/^http/, 'ws')

const response = await fetch(`${base}/api/streaming/session`, {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ userId: 'current-user', config: { animationType: 'wave' } }),
})
const { sessionId, wsEndpoint } = await response.json()
const late = process.argv[3] === 'late'
const start = () =>
  fetch(`${base}/api/streaming/${sessionId}/start`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'Write about the sea' }),
  })
if (late) {
  await start()
  while ((await (await fetch(`${base}/api/streaming/${sessionId}`)).json()).state !== 'completed') {
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

const socket = io(`${wsBase}/stream/${sessionId}`, { transports: ['websocket'], timeout: 5000 })
const chunks = []
const done = new Promise((resolve) => {
  socket.on('chunk', (data) => chunks.push(data))
  socket.on('complete', resolve)
})
await new Promise((resolve, reject) => {
  socket.on('connect', resolve)
  socket.on('connect_error', reject)
})
if (!late) await start()
const complete = await done
socket.disconnect()
console.log(JSON.stringify({ sessionId, wsEndpoint, chunks, complete }))
