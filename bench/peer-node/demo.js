'use strict';
// A faithful port of providers/demo.py (the offline demo provider) so that the peer
// sends exactly the same text as our server. That includes CPython's random.Random:
// MT19937 seeded from bytes (version 2 seeding), _randbelow via getrandbits,
// choice() and sample(). bench/check_demo_parity.py compares both outputs.
const crypto = require('crypto');

const DEFAULT_TOKENS_PER_SECOND = 40.0;

// Python: re.compile(r"\s*\S+") and r"[A-Za-z0-9][A-Za-z0-9'-]*"
const TOKEN = /\s*\S+/g;
const WORD = /[A-Za-z0-9][A-Za-z0-9'-]*/g;

const OPENINGS = [
  'Here is a short overview of {topic}, written by the offline demo provider.',
  'This answer about {topic} comes from the offline demo provider, not a language model.',
  'The offline demo provider put together these notes on {topic}.',
];
const SENTENCES = [
  'Start with the **core idea** of {topic} and keep every step small enough to check.',
  'A good first draft of {topic} names the goal, the audience and the _one_ thing that matters most.',
  'When {topic} grows, split it into parts that can change without touching each other.',
  'Measure before you optimise: a number beats a hunch about {topic} every time.',
  'Write down the assumptions behind {topic}, because they are the first thing to break.',
  'Examples make {topic} concrete; a `worked example` is worth a page of theory.',
  'Feedback loops matter: the faster you see the result, the better {topic} gets.',
  'Keep the vocabulary of {topic} consistent so readers never wonder whether two words mean one thing.',
  'Edge cases in {topic} deserve a test of their own, not a comment.',
  'Read the [Tiptap documentation](https://tiptap.dev) for how rich text is structured.',
  'Small, reversible steps make {topic} safe to change on a busy day.',
  'Explain _why_ a choice about {topic} was made, not only _what_ it is.',
];
const POINTS = [
  '**Clarity**: say what {topic} is for in one sentence.',
  '**Scope**: decide what {topic} will _not_ do.',
  '**Evidence**: collect a few facts before deciding.',
  '**Structure**: headings, lists and short paragraphs.',
  '**Tools**: prefer the well-kept ones, like `pytest` and `ruff`.',
  '**Review**: ask someone else to read it once.',
  '**Iteration**: ship a small version, then improve it.',
];
const SECTIONS = ['Background', 'How it works', 'In practice', 'Common pitfalls', 'Next steps'];
const FILLER = new Set(['a', 'about', 'an', 'describe', 'explain', 'give', 'me', 'please', 'some', 'tell', 'the', 'write']);

// ---- CPython's Mersenne Twister (Modules/_randommodule.c) --------------------------
const N = 624;
const M = 397;

class PyRandom {
  constructor(seedBytes) {
    this.mt = new Uint32Array(N);
    this.index = N + 1;
    this.seedBytes(seedBytes);
  }

  initGenrand(s) {
    const mt = this.mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.index = N;
  }

  initByArray(key) {
    const mt = this.mt;
    this.initGenrand(19650218);
    let i = 1;
    let j = 0;
    for (let k = Math.max(N, key.length); k; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1664525)) + key[j] + j) >>> 0;
      i++;
      j++;
      if (i >= N) { mt[0] = mt[N - 1]; i = 1; }
      if (j >= key.length) j = 0;
    }
    for (let k = N - 1; k; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1566083941)) - i) >>> 0;
      i++;
      if (i >= N) { mt[0] = mt[N - 1]; i = 1; }
    }
    mt[0] = 0x80000000;
  }

  // random.Random(bytes): a = int.from_bytes(a + sha512(a).digest(), "big"), then the
  // C seed splits abs(a) into 32-bit words, least significant first, dropping leading zeros.
  seedBytes(bytes) {
    const all = Buffer.concat([bytes, crypto.createHash('sha512').update(bytes).digest()]);
    let start = 0;
    while (start < all.length && all[start] === 0) start++;
    const sig = all.subarray(start); // big-endian, no leading zero bytes
    const words = [];
    for (let end = sig.length; end > 0; end -= 4) {
      let w = 0;
      for (let b = Math.max(0, end - 4); b < end; b++) w = ((w << 8) | sig[b]) >>> 0;
      words.push(w);
    }
    if (words.length === 0) words.push(0);
    this.initByArray(words);
  }

  genrandUint32() {
    const mt = this.mt;
    if (this.index >= N) {
      let kk = 0;
      let y;
      for (; kk < N - M; kk++) {
        y = (mt[kk] & 0x80000000) | (mt[kk + 1] & 0x7fffffff);
        mt[kk] = mt[kk + M] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      for (; kk < N - 1; kk++) {
        y = (mt[kk] & 0x80000000) | (mt[kk + 1] & 0x7fffffff);
        mt[kk] = mt[kk + (M - N)] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      y = (mt[N - 1] & 0x80000000) | (mt[0] & 0x7fffffff);
      mt[N - 1] = mt[M - 1] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      this.index = 0;
    }
    let y = mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  getrandbits(k) { // 0 < k <= 32 is all the demo needs
    if (k <= 0 || k > 32) throw new RangeError('getrandbits: k must be in 1..32');
    return this.genrandUint32() >>> (32 - k);
  }

  randbelow(n) {
    const k = 32 - Math.clz32(n); // n.bit_length()
    let r = this.getrandbits(k);
    while (r >= n) r = this.getrandbits(k);
    return r;
  }

  choice(seq) {
    return seq[this.randbelow(seq.length)];
  }

  sample(population, k) {
    const n = population.length;
    if (!(k >= 0 && k <= n)) throw new RangeError('Sample larger than population or is negative');
    const result = new Array(k);
    let setsize = 21;
    if (k > 5) setsize += 4 ** Math.ceil(Math.log(k * 3) / Math.log(4));
    if (n <= setsize) {
      const pool = population.slice();
      for (let i = 0; i < k; i++) {
        const j = this.randbelow(n - i);
        result[i] = pool[j];
        pool[j] = pool[n - i - 1];
      }
    } else {
      const selected = new Set();
      for (let i = 0; i < k; i++) {
        let j = this.randbelow(n);
        while (selected.has(j)) j = this.randbelow(n);
        selected.add(j);
        result[i] = population[j];
      }
    }
    return result;
  }
}

// ---- providers/demo.py ----------------------------------------------------------------
function topicOf(prompt) {
  const words = prompt.match(WORD) || [];
  while (words.length && FILLER.has(words[0].toLowerCase())) words.shift();
  return words.length ? words.slice(0, 8).join(' ').toLowerCase() : 'your request';
}

const END = '\x00end';

function fmt(s, topic) {
  return s.split('{topic}').join(topic);
}

function* sections(prompt) {
  const rng = new PyRandom(crypto.createHash('sha256').update(prompt, 'utf8').digest());
  const topic = topicOf(prompt);
  const title = topic.slice(0, 1).toUpperCase() + topic.slice(1);
  const paragraph = (n) => rng.sample(SENTENCES, n).map((s) => fmt(s, topic)).join(' ');
  const bullets = (n) => rng.sample(POINTS, n).map((p) => '- ' + fmt(p, topic)).join('\n');

  yield `# ${title}`;
  yield '\n\n' + fmt(rng.choice(OPENINGS), topic) + ' ' + paragraph(2);
  yield '\n\n## Key points\n\n' + bullets(4);
  yield `\n\n## ${rng.choice(SECTIONS)}\n\n` + paragraph(3);
  yield '\n\n## Summary\n\n' + paragraph(2);
  yield END;
  let part = 1;
  for (;;) {
    part += 1;
    const head = `\n\n## ${rng.choice(SECTIONS)} (${part})\n\n`;
    const body = paragraph(3);
    yield head + body + '\n\n' + bullets(3);
  }
}

/** The demo answer as tokens: the natural answer, or exactly maxTokens tokens. */
function* demoTokens(prompt, maxTokens) {
  const limited = maxTokens !== undefined && maxTokens !== null;
  let count = 0;
  for (const block of sections(prompt)) {
    if (block === END) {
      if (!limited) return;
      continue;
    }
    for (const token of block.match(TOKEN) || []) {
      if (limited && count >= maxTokens) return;
      count += 1;
      yield token;
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const nextTick = () => new Promise((resolve) => setImmediate(resolve));

/** DemoProvider.create_stream: paced at tokensPerSecond (0 = as fast as possible). */
class DemoStreamingProvider {
  constructor(tokensPerSecond = DEFAULT_TOKENS_PER_SECOND) {
    this.tokensPerSecond = tokensPerSecond;
  }

  async* createStream(prompt, config) {
    let tps = config.tokensPerSecond;
    if (tps === undefined || tps === null) tps = this.tokensPerSecond;
    const started = performance.now();
    let count = 0;
    for (const token of demoTokens(prompt, config.maxTokens)) {
      if (tps > 0) {
        const delay = started + (count * 1000) / tps - performance.now();
        if (delay > 0) await sleep(delay); else await nextTick();
      } else {
        await nextTick();
      }
      count += 1;
      yield { content: token, metadata: { provider: 'demo', model: 'demo', demo: true, tokens: count } };
    }
    const limited = config.maxTokens !== undefined && config.maxTokens !== null;
    const finishReason = limited && count >= config.maxTokens ? 'length' : 'stop';
    const promptTokens = (prompt.match(TOKEN) || []).length;
    yield {
      content: '',
      metadata: { provider: 'demo', model: 'demo', demo: true },
      usage: { promptTokens, completionTokens: count, totalTokens: promptTokens + count },
      finishReason,
    };
  }
}

module.exports = { PyRandom, demoTokens, DemoStreamingProvider, topicOf };

// `node demo.js <maxTokens|-> <prompt>...`: print the token stream as JSON (parity check).
if (require.main === module) {
  const [max, ...prompts] = process.argv.slice(2);
  const maxTokens = max === '-' ? null : Number(max);
  const out = prompts.map((p) => Array.from(demoTokens(p, maxTokens)));
  process.stdout.write(JSON.stringify(out));
}
