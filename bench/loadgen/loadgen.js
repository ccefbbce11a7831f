'use strict';
// Load generator for the streaming benchmark: real socket.io-client viewers, one per
// session, each on its own connection to namespace /stream/<sessionId> (websocket only).
//
//   node loadgen.js --url http://127.0.0.1:3001 --mode stream --sessions 50 --tokens 2000 \
//        --tps 0 [--pid <server pid>] [--concurrency 100] [--timeout 120] [--label x]
//
// Modes:
//   stream  create N sessions, connect N viewers, start all, wait for every `complete`;
//           measures throughput, per-chunk latency (receive time - chunk.timestamp),
//           start->first chunk, seq gaps/duplicates, and the server's RSS.
//   ttfc    N sessions one after the other (create, connect, start, complete, disconnect):
//           start->first chunk with no other load.
//   idle    create N sessions (not started), measure RSS, connect N viewers, measure RSS
//           again: bytes per idle viewer.
// Options: --stream-timeout S bounds the streaming phase (from the first start);
// --ramp S spreads the starts over S seconds (stream mode); --deflate 0 stops
// offering permessage-deflate (socket.io-client offers it by default, as browsers do).
// Prints one JSON object on stdout; progress goes to stderr. Every wait is bounded.
const http = require('http');
const fs = require('fs');
const crypto = require('crypto');
const { io } = require('socket.io-client');

// ---- arguments -----------------------------------------------------------------------
function parseArgs(argv) {
  const opts = {
    url: 'http://127.0.0.1:3001', mode: 'stream', sessions: 1, tokens: 100, tps: 0,
    concurrency: 100, timeout: 120, pid: 0, label: 'bench', settle: 2, connectTimeout: 20, ramp: 0, deflate: 1, streamTimeout: 0,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in opts)) throw new Error(`unknown option ${argv[i]}`);
    const value = argv[i + 1];
    opts[key] = typeof opts[key] === 'number' ? Number(value) : value;
  }
  const u = new URL(opts.url);
  if (u.hostname !== '127.0.0.1') throw new Error('the load generator only talks to 127.0.0.1');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const log = (...a) => process.stderr.write(`[loadgen ${opts.label}] ${a.join(' ')}\n`);
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const deadline = now() + opts.timeout * 1000;
const remaining = () => Math.max(0, deadline - now());

// ---- server memory ---------------------------------------------------------------------
function procStatus(pid) {
  if (!pid) return null;
  try {
    const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name) => {
      const m = text.match(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm'));
      return m ? Number(m[1]) * 1024 : null;
    };
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
  } catch {
    return null;
  }
}

class RssSampler {
  constructor(pid) {
    this.pid = pid;
    this.peak = 0;
    this.timer = null;
  }
  sample() {
    const s = procStatus(this.pid);
    if (s && s.rss > this.peak) this.peak = s.rss;
    return s;
  }
  start() {
    if (!this.pid) return;
    this.sample();
    this.timer = setInterval(() => this.sample(), 100);
    this.timer.unref();
  }
  stop() {
    if (this.timer) clearInterval(this.timer);
    const s = this.sample();
    return { peakRssSampled: this.peak || null, vmHWM: s ? s.hwm : null, rssEnd: s ? s.rss : null };
  }
}

async function steadyRss(pid, ms) {
  // Median of samples over `ms` after a pause, to smooth allocator noise.
  await sleep(ms);
  const values = [];
  for (let i = 0; i < 5; i++) {
    const s = procStatus(pid);
    if (s) values.push(s.rss);
    await sleep(100);
  }
  values.sort((a, b) => a - b);
  return values.length ? values[Math.floor(values.length / 2)] : null;
}

// ---- HTTP ------------------------------------------------------------------------------
const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(1, opts.concurrency) });

function postJSON(path, body, timeoutMs = 30000) {
  const data = Buffer.from(JSON.stringify(body));
  const u = new URL(path, opts.url);
  return new Promise((resolve) => {
    const req = http.request({
      host: u.hostname, port: u.port, path: u.pathname, method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': data.length },
      timeout: timeoutMs,
    }, (res) => {
      const parts = [];
      res.on('data', (c) => parts.push(c));
      res.on('end', () => {
        let json = null;
        try { json = JSON.parse(Buffer.concat(parts).toString('utf8')); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, json });
      });
      res.on('error', (e) => resolve({ status: 0, error: String(e) }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, error: String(e) }));
    req.end(data);
  });
}

/** Run `fn(i)` for i in [0, n) with at most `limit` in flight; stops at the deadline. */
async function pool(n, limit, fn) {
  let next = 0;
  const worker = async () => {
    while (next < n && remaining() > 0) {
      const i = next++;
      await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, Math.max(1, limit)) }, worker));
}

// ---- sessions and viewers ------------------------------------------------------------
const errors = {};
const countError = (kind, detail) => {
  errors[kind] = (errors[kind] || 0) + 1;
  if (errors[kind] <= 3) log(`error ${kind}: ${detail}`);
};

const promptFor = (i) => `Explain streaming benchmark topic number ${i}`;

class Session {
  constructor(index) {
    this.index = index;
    this.id = null;
    this.socket = null;
    this.connected = false;
    this.nextSeq = 0;
    this.chunks = 0;
    this.chars = 0;
    this.gaps = 0;
    this.dups = 0;
    this.noSeq = 0;
    this.hash = crypto.createHash('sha1');
    this.digest = null;
    this.startSent = null;
    this.firstChunk = null;
    this.lastChunk = null;
    this.done = false;
    this.completed = false;
    this.completePayload = null;
  }
}

class Run {
  constructor() {
    this.latencies = [];
    this.sessions = [];
    this.finished = 0;
    this.onFinished = null;
    this.extensions = null;
  }

  finish(s) {
    if (s.done) return;
    s.done = true;
    this.finished += 1;
    if (this.onFinished && this.finished >= this.sessions.length) this.onFinished();
  }

  async create(s) {
    const res = await postJSON('/api/streaming/session', {
      userId: `${opts.label}-${process.pid}-${s.index}`,
      config: { provider: 'demo', maxTokens: opts.tokens, tokensPerSecond: opts.tps },
    });
    if (res.status === 200 && res.json && res.json.sessionId) s.id = res.json.sessionId;
    else countError('create', `${res.status} ${res.error || JSON.stringify(res.json)}`);
  }

  connect(s) {
    return new Promise((resolve) => {
      if (!s.id) return resolve();
      const socket = io(`${opts.url}/stream/${s.id}`, {
        transports: ['websocket'], forceNew: true, reconnection: false,
        timeout: opts.connectTimeout * 1000,
        // socket.io-client offers permessage-deflate by default, as browsers do.
        ...(opts.deflate ? {} : { perMessageDeflate: false }),
      });
      s.socket = socket;
      const timer = setTimeout(() => {
        countError('connect-timeout', s.id);
        resolve();
      }, opts.connectTimeout * 1000 + 1000);
      socket.on('connect', () => {
        clearTimeout(timer);
        s.connected = true;
        if (this.extensions === null) {
          const ws = socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.ws;
          this.extensions = ws && typeof ws.extensions === 'string' ? ws.extensions : '';
        }
        resolve();
      });
      socket.on('connect_error', (err) => {
        clearTimeout(timer);
        countError('connect', err && err.message);
        resolve();
      });
      socket.on('chunk', (c) => {
        const t = Date.now();
        if (s.firstChunk === null) s.firstChunk = now();
        s.lastChunk = now();
        if (typeof c.timestamp === 'number') this.latencies.push(t - c.timestamp);
        if (typeof c.seq !== 'number') s.noSeq += 1;
        else if (c.seq === s.nextSeq) s.nextSeq += 1;
        else if (c.seq > s.nextSeq) { s.gaps += c.seq - s.nextSeq; s.nextSeq = c.seq + 1; }
        else s.dups += 1;
        s.chunks += 1;
        const content = typeof c.content === 'string' ? c.content : '';
        s.chars += content.length;
        s.hash.update(content);
      });
      socket.on('complete', (payload) => {
        s.completed = true;
        s.completePayload = payload || null;
        this.finish(s);
      });
      socket.on('stream-error', (e) => {
        countError('stream-error', JSON.stringify(e));
        this.finish(s);
      });
      socket.on('disconnect', (reason) => {
        if (!s.done && !this.closing) {
          countError('disconnect', reason);
          this.finish(s);
        }
      });
    });
  }

  async start(s) {
    if (!s.connected) {
      this.finish(s);
      return;
    }
    s.startSent = now();
    const res = await postJSON(`/api/streaming/${s.id}/start`, { prompt: promptFor(s.index) });
    if (res.status !== 200) {
      countError('start', `${res.status} ${res.error || JSON.stringify(res.json)}`);
      this.finish(s);
    }
  }

  waitAll(limitMs = Infinity) {
    return new Promise((resolve) => {
      if (this.finished >= this.sessions.length) return resolve(true);
      const timer = setTimeout(() => resolve(false), Math.min(remaining(), limitMs));
      this.onFinished = () => { clearTimeout(timer); resolve(true); };
    });
  }

  async closeAll() {
    this.closing = true;
    for (const s of this.sessions) if (s.socket) s.socket.disconnect();
    await sleep(200);
  }
}

// ---- statistics ------------------------------------------------------------------------
function percentiles(values) {
  if (!values.length) return { n: 0, p50: null, p90: null, p99: null, max: null, mean: null };
  const v = Float64Array.from(values).sort();
  const at = (q) => v[Math.min(v.length - 1, Math.max(0, Math.ceil(q * v.length) - 1))];
  let sum = 0;
  for (const x of v) sum += x;
  const r = (x) => Math.round(x * 1000) / 1000;
  return { n: v.length, p50: r(at(0.5)), p90: r(at(0.9)), p99: r(at(0.99)), max: r(v[v.length - 1]), mean: r(sum / v.length) };
}

function summarize(run, t0, t1, cpu) {
  const sessions = run.sessions;
  const sum = (f) => sessions.reduce((a, s) => a + f(s), 0);
  const chars = sum((s) => s.chars);
  const chunks = sum((s) => s.chunks);
  let lastChunk = t0;
  for (const s of sessions) if (s.lastChunk !== null && s.lastChunk > lastChunk) lastChunk = s.lastChunk;
  const window = Math.max(1e-3, (lastChunk - t0) / 1000);
  const digest = crypto.createHash('sha1');
  for (const s of sessions) {
    s.digest = s.hash.digest('hex');
    digest.update(`${s.index}:${s.digest};`);
  }
  const totalChunksMismatch = sessions.filter(
    (s) => s.completed && s.completePayload && typeof s.completePayload.totalChunks === 'number'
      && s.completePayload.totalChunks !== s.chunks,
  ).length;
  return {
    sessions: sessions.length,
    created: sessions.filter((s) => s.id).length,
    connected: sessions.filter((s) => s.connected).length,
    completed: sessions.filter((s) => s.completed).length,
    chars,
    chunks,
    tokensPerChunk: chunks ? Math.round(((opts.tokens * sessions.filter((s) => s.completed).length) / chunks) * 100) / 100 : null,
    seconds: Math.round(window * 1000) / 1000,
    wallSeconds: Math.round(((t1 - t0) / 1000) * 1000) / 1000,
    charsPerSec: Math.round(chars / window),
    chunksPerSec: Math.round(chunks / window),
    latencyMs: percentiles(run.latencies),
    firstChunkMs: percentiles(sessions.filter((s) => s.firstChunk !== null && s.startSent !== null)
      .map((s) => s.firstChunk - s.startSent)),
    gaps: sum((s) => s.gaps),
    duplicates: sum((s) => s.dups),
    chunksWithoutSeq: sum((s) => s.noSeq),
    totalChunksMismatch,
    contentDigest: digest.digest('hex').slice(0, 16),
    loadgenCpu: cpu,
    wsExtensions: run.extensions,
  };
}

function cpuMeter() {
  const c0 = process.cpuUsage();
  const w0 = now();
  return () => {
    const c = process.cpuUsage(c0);
    return Math.round(((c.user + c.system) / 1000 / Math.max(1, now() - w0)) * 100) / 100;
  };
}

// ---- modes -----------------------------------------------------------------------------
async function modeStream() {
  const sampler = new RssSampler(opts.pid);
  sampler.start();
  const run = new Run();
  run.sessions = Array.from({ length: opts.sessions }, (_, i) => new Session(i));
  const tc = now();
  await pool(run.sessions.length, opts.concurrency, (i) => run.create(run.sessions[i]));
  const created = run.sessions.filter((s) => s.id).length;
  log(`created ${created}/${opts.sessions} sessions in ${((now() - tc) / 1000).toFixed(2)} s`);
  const tv = now();
  await pool(run.sessions.length, opts.concurrency, (i) => run.connect(run.sessions[i]));
  const connectSeconds = (now() - tv) / 1000;
  log(`connected ${run.sessions.filter((s) => s.connected).length} viewers in ${connectSeconds.toFixed(2)} s`);
  const cpu = cpuMeter();
  const t0 = now();
  if (opts.ramp > 0) {
    // Spread the starts evenly over `ramp` seconds instead of one burst.
    const n = run.sessions.length;
    await Promise.all(run.sessions.map((s, i) => sleep((i * opts.ramp * 1000) / n).then(() => run.start(s))));
  } else {
    await pool(run.sessions.length, opts.concurrency, (i) => run.start(run.sessions[i]));
  }
  const all = await run.waitAll(opts.streamTimeout > 0 ? opts.streamTimeout * 1000 - (now() - t0) : Infinity);
  const t1 = now();
  const loadgenCpu = cpu();
  if (!all) countError('timeout', `${run.sessions.length - run.finished} sessions unfinished at the deadline`);
  const result = summarize(run, t0, t1, loadgenCpu);
  result.connectSeconds = Math.round(connectSeconds * 1000) / 1000;
  Object.assign(result, sampler.stop());
  await run.closeAll();
  return result;
}

async function modeTtfc() {
  const firsts = [];
  const latencies = [];
  let completed = 0;
  let gaps = 0;
  let dups = 0;
  const digest = crypto.createHash('sha1');
  for (let i = 0; i < opts.sessions && remaining() > 0; i++) {
    const run = new Run();
    const s = new Session(i);
    run.sessions = [s];
    await run.create(s);
    await run.connect(s);
    await run.start(s);
    if (!(await run.waitAll(10000))) countError('timeout', `ttfc session ${i} did not finish in 10 s`);
    if (s.firstChunk !== null && s.startSent !== null) firsts.push(s.firstChunk - s.startSent);
    for (const l of run.latencies) latencies.push(l);
    if (s.completed) completed += 1;
    gaps += s.gaps;
    dups += s.dups;
    digest.update(`${i}:${s.hash.digest('hex')};`);
    run.closing = true;
    if (s.socket) s.socket.disconnect();
  }
  const status = procStatus(opts.pid);
  return {
    sessions: opts.sessions, completed, gaps, duplicates: dups,
    firstChunkMs: percentiles(firsts), latencyMs: percentiles(latencies),
    contentDigest: digest.digest('hex').slice(0, 16), vmHWM: status ? status.hwm : null,
  };
}

async function modeIdle() {
  const run = new Run();
  run.sessions = Array.from({ length: opts.sessions }, (_, i) => new Session(i));
  const rssBaseline = await steadyRss(opts.pid, 500);
  await pool(run.sessions.length, opts.concurrency, (i) => run.create(run.sessions[i]));
  const created = run.sessions.filter((s) => s.id).length;
  const rssSessions = await steadyRss(opts.pid, opts.settle * 1000);
  const tv = now();
  await pool(run.sessions.length, opts.concurrency, (i) => run.connect(run.sessions[i]));
  const connectSeconds = (now() - tv) / 1000;
  const connected = run.sessions.filter((s) => s.connected).length;
  log(`connected ${connected}/${opts.sessions} idle viewers in ${connectSeconds.toFixed(2)} s`);
  const rssViewers = await steadyRss(opts.pid, opts.settle * 1000);
  const stillConnected = run.sessions.filter((s) => s.socket && s.socket.connected).length;
  const status = procStatus(opts.pid);
  await run.closeAll();
  const per = (a, b, n) => (a !== null && b !== null && n > 0 ? Math.round((b - a) / n) : null);
  return {
    sessions: opts.sessions, created, connected, stillConnected,
    connectSeconds: Math.round(connectSeconds * 1000) / 1000,
    connectsPerSec: connectSeconds > 0 ? Math.round(connected / connectSeconds) : null,
    rssBaseline, rssSessions, rssViewers,
    bytesPerSession: per(rssBaseline, rssSessions, created),
    bytesPerViewer: per(rssSessions, rssViewers, connected),
    vmHWM: status ? status.hwm : null,
    wsExtensions: run.extensions,
    loadgenRss: process.memoryUsage().rss,
  };
}

async function main() {
  const modes = { stream: modeStream, ttfc: modeTtfc, idle: modeIdle };
  if (!modes[opts.mode]) throw new Error(`unknown mode ${opts.mode}`);
  const hard = setTimeout(() => {
    process.stdout.write(JSON.stringify({ mode: opts.mode, fatal: 'hard timeout', errors }) + '\n');
    process.exit(2);
  }, opts.timeout * 1000 + 15000);
  hard.unref();
  const result = await modes[opts.mode]();
  result.mode = opts.mode;
  result.params = { sessions: opts.sessions, tokens: opts.tokens, tps: opts.tps };
  result.errors = errors;
  process.stdout.write(JSON.stringify(result) + '\n');
  agent.destroy();
  setTimeout(() => process.exit(0), 100).unref();
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ mode: opts.mode, fatal: String(e && e.stack || e), errors }) + '\n');
  process.exit(1);
});
