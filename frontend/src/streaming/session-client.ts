/**
 * The session routes of the HTTP API (PROTOCOL.md "HTTP"): create, start, read and cancel a
 * streaming session, and list the actions the server offers. Every request carries
 * `Authorization: Bearer <token>` when the token provider gives a token.
 */
import type { ActionDefinition, SessionCreated, SessionStatus, StartRequest, StreamConfig, TokenProvider } from './types'

export interface StreamingSessionClientOptions {
  /**
   * Prefix of the HTTP API routes; '' means relative to the page.
   * @default ''
   * @example 'https://api.example.com'
   */
  baseUrl?: string
  /**
   * Called before every request; its token goes in the Authorization header.
   * @default undefined (no header)
   * @example () => auth.currentToken()
   */
  getToken?: TokenProvider
}

/** The keys of a StreamConfig that only the editor reads; they are not sent to the server. */
const EDITOR_ONLY_KEYS = ['sessionId', 'streamId', 'position', 'insertAt', 'review', 'trackChanges', 'format'] as const

/** The part of a stream's config the server reads. */
export function serverConfig(config: StreamConfig): StreamConfig {
  const copy: StreamConfig = { ...config }
  for (const key of EDITOR_ONLY_KEYS) {
    delete copy[key]
  }
  return copy
}

export class StreamingSessionClient {
  private readonly baseUrl: string
  private readonly getToken: TokenProvider | undefined

  constructor(options: StreamingSessionClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? '').replace(/\/+$/, '')
    this.getToken = options.getToken
  }

  /** `POST /api/streaming/session`. */
  create(userId: string, config: StreamConfig): Promise<SessionCreated> {
    return this.request<SessionCreated>('POST', '/api/streaming/session', { userId, config: serverConfig(config) })
  }

  /**
   * `POST /api/streaming/{id}/start`: the provider starts writing, for a prompt or for an
   * action on the document (`{action, context, options, followUp, prompt}`).
   */
  start(sessionId: string, request: string | StartRequest): Promise<{ status: string }> {
    const body = typeof request === 'string' ? { prompt: request } : request
    return this.request('POST', `/api/streaming/${encodeURIComponent(sessionId)}/start`, body)
  }

  /** `GET /api/streaming/actions`: the actions the server offers, to build a menu from. */
  actions(): Promise<{ actions: ActionDefinition[] }> {
    return this.request('GET', '/api/streaming/actions')
  }

  /** `GET /api/streaming/{id}`: state, provider, model, text so far, usage. */
  get(sessionId: string): Promise<SessionStatus> {
    return this.request('GET', `/api/streaming/${encodeURIComponent(sessionId)}`)
  }

  /** `POST /api/streaming/{id}/cancel`. */
  cancel(sessionId: string): Promise<{ status: string }> {
    return this.request('POST', `/api/streaming/${encodeURIComponent(sessionId)}/cancel`)
  }

  private async request<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {}
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json'
    }
    const token = await this.getToken?.()
    if (token) {
      headers.Authorization = `Bearer ${token}`
    }
    const url = `${this.baseUrl}${path}`
    const response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    const payload = (await response.json().catch(() => null)) as (T & { error?: string }) | null
    if (!response.ok || payload === null) {
      throw new Error(payload?.error ?? `${method} ${url} answered ${response.status}`)
    }
    return payload
  }
}
