/**
 * The per-editor registry of streams: what each stream is (session, animation, format,
 * review), where it stands (status, error, decision), the text it received and the timers
 * of streams fed from local text. Positions live in the ProseMirror plugin state instead,
 * because they must be mapped through every transaction.
 */
import type { Fragment } from '@tiptap/pm/model'

import type {
  AnimationType,
  ChangeDecision,
  InlineEdge,
  ReviewDecision,
  StreamConfig,
  StreamFormat,
  StreamingTransport,
  StreamStatus,
  StreamTarget,
} from './types'

/** One stream of one editor. Records are immutable: an update replaces the object. */
export interface StreamRecord {
  readonly id: string
  readonly sessionId: string | null
  readonly status: StreamStatus
  /** True once finishStream ran: the stream takes no more chunks. */
  readonly finished: boolean
  readonly animationType: AnimationType
  readonly format: StreamFormat
  readonly speed: number
  /** The transport that carries pause, resume, cancel and regenerate to the server; null for local streams. */
  readonly transport: StreamingTransport | null
  /** The last error reported for this stream (a failed pause, a provider failure...). */
  readonly error: string | null
  /** Whether the finished response waits for acceptStream or rejectStream. */
  readonly review: boolean
  /** The writer's decision on a reviewed response; null while it streams or without review. */
  readonly decision: ReviewDecision | null
  /** The finished responses of this prompt (one per regenerate), as their raw text. */
  readonly responses: readonly string[]
  /** Which of `responses` the node shows. */
  readonly responseIndex: number
  /** The text the stream replaces (the selection it was started on); '' when it replaces nothing. */
  readonly original: string
  /** Whether the response is shown as tracked changes against `originalContent` (a rewrite). */
  readonly trackChanges: boolean
  /** The blocks the stream replaces, kept for tracked changes; null without them. */
  readonly originalContent: Fragment | null
  /** The writer's decisions on single tracked changes, by change index; empty for every new response. */
  readonly changeDecisions: ReadonlyMap<number, ChangeDecision>
  /** Where in its textblock a stream that goes into the text was begun (see StreamConfig.inline); null otherwise. */
  readonly inline: InlineEdge | null
  /**
   * The shared document the server writes this stream's answer into (a collaborative
   * editor): the stream has no node, its chunks only add to its text; null otherwise.
   */
  readonly target: StreamTarget | null
}

/** The values a stream takes when its config leaves them out. */
export interface StreamDefaults {
  animationType: AnimationType
  format: StreamFormat
  speed: number
  review: boolean
  transport: StreamingTransport | null
}

/** Where a new stream stands in the document, besides its config. */
export interface StreamPlacement {
  /** The text it replaces (the selection it was started on). */
  original?: string
  /** The blocks it replaces, kept for tracked changes. */
  originalContent?: Fragment | null
  inline?: InlineEdge | null
  target?: StreamTarget | null
}

/** Callbacks with which a local stream feeds the editor. */
export interface LocalStreamSink {
  /** Writes one piece; returning false (the stream is gone) stops the local stream. */
  write: (piece: string) => boolean
  finish: () => void
}

/**
 * The text a stream received and how much of it is rendered for good: the first
 * `committedLength` characters are complete Markdown blocks, shown as the first
 * `committedChildren` children of the streaming node; only the rest is re-rendered.
 */
export class StreamText {
  text = ''
  committedLength = 0
  committedChildren = 0

  reset(text = ''): void {
    this.text = text
    this.committedLength = 0
    this.committedChildren = 0
  }
}

interface LocalStream {
  pieces: string[]
  index: number
  speed: number
  sink: LocalStreamSink
  timer: ReturnType<typeof setTimeout> | null
}

let idCounter = 0

/** The decisions of a response nobody decided anything about yet. */
export const NO_DECISIONS: ReadonlyMap<number, ChangeDecision> = new Map()

function randomStreamId(): string {
  idCounter += 1
  return `stream-${Math.random().toString(36).slice(2, 10)}-${idCounter}`
}

/** Splits text into word-sized pieces whose concatenation is the text itself. */
export function splitIntoPieces(text: string): string[] {
  return text.match(/\S+\s*|\s+/g) ?? []
}

export class StreamManager {
  private records = new Map<string, StreamRecord>()
  private texts = new Map<string, StreamText>()
  private listeners = new Set<() => void>()
  private localStreams = new Map<string, LocalStream>()

  /** The stream that writeChunk, batchWrite, pauseStream and resumeStream act on. */
  activeStreamId: string | null = null

  /** Registers a new stream and makes it the active one. */
  create(config: StreamConfig, defaults: StreamDefaults, placement: StreamPlacement = {}): StreamRecord {
    const { original = '', originalContent = null, inline = null, target = null } = placement
    const base = config.streamId ?? config.sessionId ?? randomStreamId()
    let id = base
    for (let n = 2; this.records.has(id); n += 1) {
      id = `${base}-${n}`
    }
    const record: StreamRecord = {
      id,
      sessionId: config.sessionId ?? null,
      status: 'streaming',
      finished: false,
      animationType: config.animationType ?? defaults.animationType,
      format: config.format ?? defaults.format,
      speed: config.speed ?? defaults.speed,
      transport: config.sessionId ? defaults.transport : null,
      error: null,
      review: config.trackChanges === true || (config.review ?? defaults.review),
      decision: null,
      responses: [],
      responseIndex: 0,
      original,
      trackChanges: config.trackChanges === true && originalContent !== null,
      originalContent,
      changeDecisions: NO_DECISIONS,
      inline,
      target,
    }
    this.records.set(id, record)
    this.texts.set(id, new StreamText())
    this.activeStreamId = id
    this.notify()
    return record
  }

  get(id: string | null | undefined): StreamRecord | undefined {
    return id ? this.records.get(id) : undefined
  }

  /** The text a stream received so far (or the response it shows, once in review). */
  text(id: string): StreamText {
    let text = this.texts.get(id)
    if (!text) {
      text = new StreamText()
      this.texts.set(id, text)
    }
    return text
  }

  /** The active stream, if it still takes chunks. */
  active(): StreamRecord | undefined {
    const record = this.get(this.activeStreamId)
    return record && !record.finished ? record : undefined
  }

  /** The most recent stream showing the given server session. */
  bySession(sessionId: string): StreamRecord | undefined {
    let found: StreamRecord | undefined
    for (const record of this.records.values()) {
      if (record.sessionId === sessionId) {
        found = record
      }
    }
    return found
  }

  /** Streams that still take chunks. */
  live(): StreamRecord[] {
    return [...this.records.values()].filter(record => !record.finished)
  }

  /** The most recent stream whose response waits for a decision. */
  pendingReview(): StreamRecord | undefined {
    return [...this.records.values()].filter(record => record.decision === 'pending').at(-1)
  }

  update(id: string, patch: Partial<Omit<StreamRecord, 'id'>>): StreamRecord | undefined {
    const record = this.records.get(id)
    if (!record) {
      return undefined
    }
    const next = { ...record, ...patch }
    this.records.set(id, next)
    this.notify()
    return next
  }

  /**
   * Marks a stream finished: it keeps an `error` or `cancelled` status it was given,
   * anything else becomes `complete`. The most recent live stream becomes active.
   */
  finish(id: string, patch: Partial<Omit<StreamRecord, 'id'>> = {}): void {
    const record = this.records.get(id)
    if (!record) {
      return
    }
    this.stopLocal(id)
    const status = record.status === 'error' || record.status === 'cancelled' ? record.status : 'complete'
    this.records.set(id, { ...record, status, finished: true, ...patch })
    if (this.activeStreamId === id) {
      this.activeStreamId = this.live().at(-1)?.id ?? null
    }
    this.notify()
  }

  /** Makes a finished stream take chunks again (a regenerated response), as the active stream. */
  restart(id: string, patch: Partial<Omit<StreamRecord, 'id'>> = {}): void {
    const record = this.records.get(id)
    if (!record) {
      return
    }
    this.records.set(id, {
      ...record,
      status: 'streaming',
      finished: false,
      error: null,
      decision: null,
      changeDecisions: NO_DECISIONS,
      ...patch,
    })
    this.text(id).reset()
    this.activeStreamId = id
    this.notify()
  }

  /** Starts feeding pieces of local text to a stream, one every `speed` milliseconds. */
  playLocal(id: string, pieces: string[], speed: number, sink: LocalStreamSink): void {
    this.stopLocal(id)
    this.localStreams.set(id, { pieces, index: 0, speed: Math.max(0, speed), sink, timer: null })
    this.scheduleLocal(id)
  }

  pauseLocal(id: string): void {
    const local = this.localStreams.get(id)
    if (local?.timer != null) {
      clearTimeout(local.timer)
      local.timer = null
    }
  }

  resumeLocal(id: string): void {
    const local = this.localStreams.get(id)
    if (local && local.timer == null) {
      this.scheduleLocal(id)
    }
  }

  stopLocal(id: string): void {
    this.pauseLocal(id)
    this.localStreams.delete(id)
  }

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener)
    return () => {
      this.listeners.delete(listener)
    }
  }

  /** Stops every local stream and forgets every record and listener. */
  destroy(): void {
    for (const id of [...this.localStreams.keys()]) {
      this.stopLocal(id)
    }
    this.records.clear()
    this.texts.clear()
    this.listeners.clear()
    this.activeStreamId = null
  }

  private scheduleLocal(id: string): void {
    const local = this.localStreams.get(id)
    if (!local) {
      return
    }
    local.timer = setTimeout(() => {
      local.timer = null
      if (local.index >= local.pieces.length) {
        this.localStreams.delete(id)
        local.sink.finish()
        return
      }
      const piece = local.pieces[local.index]
      local.index += 1
      if (piece === undefined || !local.sink.write(piece)) {
        this.localStreams.delete(id)
        return
      }
      this.scheduleLocal(id)
    }, local.speed)
  }

  private notify(): void {
    for (const listener of this.listeners) {
      listener()
    }
  }
}
