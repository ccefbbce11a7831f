'use strict';
// The benchmark peer: the seed's "Streaming API Server" (Express + Socket.IO) written
// literally, with only what the bench needs from PROTOCOL.md added: `seq`/`sessionId` on
// chunks, a `complete` payload, the /stream/<id> dynamic namespace, and GET /healthz.
// Sessions live in a Map and are never removed (as in the seed); the stream is a
// `for await` over the demo provider with shouldPause()/waitForResume() after each emit.
//
//   node server.js --host 127.0.0.1 --port 3101
const express = require('express');
const { Server } = require('socket.io');
const { createServer } = require('http');
const { randomUUID } = require('crypto');
const { DemoStreamingProvider } = require('./demo');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const HOST = arg('host', process.env.HOST || '127.0.0.1');
const PORT = Number(arg('port', process.env.PORT || 3001));

const app = express();
app.use(express.json({ limit: '256kb' }));
const server = createServer(app);
const io = new Server(server, {
  cors: { origin: '*' },
  transports: ['websocket', 'polling'],
});

class StreamingSession {
  constructor(id, userId, config) {
    this.id = id;
    this.userId = userId;
    this.config = config || {};
    this.clients = new Set();
    this.paused = false;
    this.resumeWaiters = [];
    this.seq = 0;
    this.started = false;
  }

  addClient(socket) {
    this.clients.add(socket);
    socket.on('disconnect', () => this.clients.delete(socket));
  }

  emit(event, payload) {
    for (const socket of this.clients) socket.emit(event, payload);
  }

  shouldPause() {
    return this.paused;
  }

  waitForResume() {
    return new Promise((resolve) => this.resumeWaiters.push(resolve));
  }

  pause() {
    this.paused = true;
  }

  resume() {
    this.paused = false;
    const waiters = this.resumeWaiters;
    this.resumeWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

class StreamingSessionManager {
  constructor() {
    this.sessions = new Map();
    this.aiService = new DemoStreamingProvider();
  }

  async createSession(userId, config) {
    const sessionId = randomUUID();
    const session = new StreamingSession(sessionId, userId, config);
    this.sessions.set(sessionId, session);
    return sessionId;
  }

  getSession(sessionId) {
    return this.sessions.get(sessionId);
  }

  async startStreaming(sessionId, prompt) {
    const session = this.sessions.get(sessionId);
    if (!session) throw new Error('Session not found');

    // Initialize AI streaming
    const aiStream = this.aiService.createStream(prompt, session.config);
    let usage = null;
    let finishReason = 'stop';

    // Process chunks and emit to client
    for await (const chunk of aiStream) {
      if (chunk.usage) usage = chunk.usage;
      if (chunk.finishReason) finishReason = chunk.finishReason;
      if (!chunk.content) continue;
      session.emit('chunk', {
        content: chunk.content,
        timestamp: Date.now(),
        metadata: chunk.metadata,
        seq: session.seq++,
        sessionId,
      });

      // Rate limiting and backpressure
      if (session.shouldPause()) {
        await session.waitForResume();
      }
    }

    session.emit('complete', { sessionId, totalChunks: session.seq, finishReason, usage });
  }
}

const sessionManager = new StreamingSessionManager();

// API endpoints
app.post('/api/streaming/session', async (req, res) => {
  try {
    const { userId, config } = req.body || {};
    if (typeof userId !== 'string' || !userId) {
      return res.status(400).json({ error: 'Invalid request: userId is required' });
    }
    const sessionId = await sessionManager.createSession(userId, config);

    res.json({
      sessionId,
      wsEndpoint: `/ws/stream/${sessionId}`,
    });
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

app.post('/api/streaming/:sessionId/start', async (req, res) => {
  try {
    const { sessionId } = req.params;
    const { prompt } = req.body || {};
    const session = sessionManager.getSession(sessionId);
    if (!session) return res.status(404).json({ error: 'Session not found' });
    if (session.started) return res.status(409).json({ error: 'Session already started' });
    session.started = true;

    // Start streaming asynchronously
    sessionManager.startStreaming(sessionId, String(prompt ?? '')).catch((error) => {
      session.emit('stream-error', { sessionId, error: error.message, code: 'internal' });
    });

    res.json({ status: 'started' });
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

app.get('/healthz', (req, res) => res.json({ status: 'ok' }));

// WebSocket handling: namespace "/" as in the seed...
io.on('connection', (socket) => {
  socket.on('join-stream', (sessionId) => {
    const session = sessionManager.getSession(sessionId);
    if (session) {
      session.addClient(socket);
      socket.join(`stream-${sessionId}`);
    }
  });

  socket.on('pause-stream', (sessionId) => {
    const session = sessionManager.getSession(sessionId);
    if (session) session.pause();
  });

  socket.on('resume-stream', (sessionId) => {
    const session = sessionManager.getSession(sessionId);
    if (session) session.resume();
  });
});

// ...and the seed's client side: io("ws://host/stream/<sessionId>") joins that session.
const streams = io.of(/^\/stream\/.+$/);
const sessionOf = (socket) => sessionManager.getSession(socket.nsp.name.slice('/stream/'.length));
streams.use((socket, next) => (sessionOf(socket) ? next() : next(new Error('Session not found'))));
streams.on('connection', (socket) => {
  const session = sessionOf(socket);
  session.addClient(socket);
  socket.on('pause-stream', () => session.pause());
  socket.on('resume-stream', () => session.resume());
});

server.listen(PORT, HOST, () => {
  console.log(`Peer streaming server on http://${HOST}:${PORT}`);
});

const stop = () => {
  io.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
