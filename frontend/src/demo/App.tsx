/**
 * The demo page: an editor with some text, a prompt, Start / Pause / Resume / Stop, review
 * controls, the provider, model, tokens and time to first token, and the live session
 * state, announced to screen readers; AI actions on the selection (a menu built from the
 * server's list, rewrites reviewed as tracked changes, follow-ups on the suggestion),
 * "Continue writing" at the cursor and ghost-text autocomplete. `?session=<id>` watches a
 * session started elsewhere (another tab); settings for the server's demo provider can be
 * given in the query string (?tokensPerSecond=20&maxTokens=200&format=text&review=1&insertAt=selection).
 *
 * `?doc=<id>` makes the page collaborative: the editor shows the shared document `<id>`
 * (Tiptap's Collaboration and CollaborationCaret on the server's `/collab`), every tab has
 * a name and colour, and the server writes the AI's answers into the document, for everyone.
 */
import type { AnyExtension, Editor } from '@tiptap/core'
import { EditorContent, useEditor } from '@tiptap/react'
import StarterKit from '@tiptap/starter-kit'
import { useEffect, useRef, useState } from 'react'
import type { WebsocketProvider } from 'y-websocket'

import {
  type ActionDefinition,
  type AnimationType,
  BUILT_IN_ACTIONS,
  type RunActionOptions,
  type StreamConfig,
  StreamingExtension,
  StreamingNode,
  StreamingWebSocketService,
  useStreaming,
} from '../streaming'
import { AiMenu } from './AiMenu'
import type { DemoCollaboration } from './collab'

declare global {
  interface Window {
    /** The page's editor, service and (collaborative) provider, for end-to-end tests and the console. */
    __streaming?: { editor: Editor; service: StreamingWebSocketService; provider?: WebsocketProvider }
  }
}

const INITIAL_CONTENT = `
<h1>Streaming into Tiptap</h1>
<p>This document already has some text. Type a prompt below and press <strong>Start</strong>:
the answer streams in at the end of the document, while you keep editing anywhere.</p>
<p>Select this paragraph to ask the AI about it: it is really quite long, and teh words in it
are very easy to shorten. It basically says the same thing twice. It just says it again, with
more words than it needs.</p>
`

const params = new URLSearchParams(window.location.search)
const watchedSession = params.get('session')

function numberParam(name: string): number | undefined {
  const value = params.get(name)
  return value === null || value === '' || Number.isNaN(Number(value)) ? undefined : Number(value)
}

function insertAtParam(): 'end' | 'cursor' | 'selection' {
  const value = params.get('insertAt')
  return value === 'cursor' || value === 'selection' ? value : 'end'
}

/** The server settings given in the query string. */
function serverConfig(animationType: AnimationType): StreamConfig {
  const config: StreamConfig = { animationType }
  const provider = params.get('provider')
  if (provider === 'openai' || provider === 'anthropic' || provider === 'demo') {
    config.provider = provider
  }
  const model = params.get('model')
  if (model) {
    config.model = model
  }
  config.tokensPerSecond = numberParam('tokensPerSecond')
  config.maxTokens = numberParam('maxTokens')
  return config
}

/** The server settings of autocomplete sessions: the query's provider, model and pace (the server keeps them short). */
function completionConfig(): StreamConfig {
  const { provider, model, tokensPerSecond } = serverConfig('fade')
  return { provider, model, tokensPerSecond }
}

const ANNOUNCEMENTS: Record<string, string> = {
  created: 'Starting the stream.',
  streaming: 'Streaming.',
  paused: 'Stream paused.',
  completed: 'Stream complete.',
  cancelled: 'Stream stopped.',
  failed: 'The stream failed.',
}

const DECISIONS: Record<string, string> = {
  pending: 'Suggestion ready: accept with Control+Enter, reject with Escape.',
  accepted: 'Suggestion accepted.',
  rejected: 'Suggestion rejected.',
}

// With access control on (AUTH_JWT_SECRET), the page takes a token in ?token= (see the
// README) and acts as the token's subject.
const token = params.get('token') ?? undefined
const tokenUser = token ? subjectOf(token) : undefined

function subjectOf(jwt: string): string | undefined {
  try {
    const payload = jwt.split('.')[1] ?? ''
    const claims = JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/'))) as { sub?: unknown }
    return typeof claims.sub === 'string' ? claims.sub : undefined
  } catch {
    return undefined
  }
}

// The server serves this page, so its WebSocket is at the page's own origin.
const service = new StreamingWebSocketService({
  baseUrl: window.location.origin.replace(/^http/, 'ws'),
  getToken: token === undefined ? undefined : () => token,
})

/**
 * The editor's extensions: with a shared document, Collaboration (which brings its own
 * undo, so StarterKit's is off), the others' carets, and answers written by the server.
 */
function editorExtensions(collab: DemoCollaboration | null): AnyExtension[] {
  const autocomplete = { debounceMs: 400, config: completionConfig() }
  if (!collab) {
    return [StarterKit, StreamingNode, StreamingExtension.configure({ autocomplete })]
  }
  return [
    StarterKit.configure({ undoRedo: false }),
    StreamingNode,
    StreamingExtension.configure({ autocomplete, collaboration: collab.streaming }),
    ...collab.extensions,
  ]
}

/** Whether the page's document is connected and in sync, and who is in it (an AI peer too). */
function useCollaborators(collab: DemoCollaboration | null): { synced: boolean; people: DemoPerson[] } {
  const [synced, setSynced] = useState(collab?.provider.synced ?? false)
  const [people, setPeople] = useState<DemoPerson[]>([])
  useEffect(() => {
    if (!collab) {
      return undefined
    }
    const { provider } = collab
    const onSync = (isSynced: boolean) => setSynced(isSynced)
    const onChange = () => setPeople(peopleIn(provider))
    provider.on('sync', onSync)
    provider.awareness.on('change', onChange)
    setSynced(provider.synced)
    onChange()
    return () => {
      provider.off('sync', onSync)
      provider.awareness.off('change', onChange)
    }
  }, [collab])
  return { synced, people }
}

/** Someone in the shared document, as their awareness names them. */
interface DemoPerson {
  clientId: number
  name: string
  color: string
  ai: boolean
}

function peopleIn(provider: WebsocketProvider): DemoPerson[] {
  const people: DemoPerson[] = []
  provider.awareness.getStates().forEach((state, clientId) => {
    const user = state.user as { name?: unknown; color?: unknown; aiInstanceId?: unknown } | undefined
    if (user && typeof user.name === 'string') {
      people.push({
        clientId,
        name: user.name,
        color: typeof user.color === 'string' ? user.color : '#6b7280',
        ai: typeof user.aiInstanceId === 'string',
      })
    }
  })
  return people
}

export function App({ collaboration }: { collaboration: DemoCollaboration | null }) {
  const [prompt, setPrompt] = useState('Explain how AI text streams into a rich text editor')
  const [animationType, setAnimationType] = useState<AnimationType>('wave')
  const [markdown, setMarkdown] = useState(params.get('format') !== 'text')
  const [review, setReview] = useState(params.get('review') === '1')
  const [insertAt, setInsertAt] = useState<'end' | 'cursor' | 'selection'>(insertAtParam)
  const [chunkCount, setChunkCount] = useState(0)
  const [announcement, setAnnouncement] = useState('')

  const [actions, setActions] = useState<readonly ActionDefinition[]>([])

  // A shared document's content is the document's own: no initial content goes into it.
  const editor = useEditor({
    extensions: editorExtensions(collaboration),
    ...(collaboration ? {} : { content: INITIAL_CONTENT }),
  })
  const { synced, people } = useCollaborators(collaboration)

  const streaming = useStreaming({
    editor,
    service,
    animationType,
    format: markdown ? 'markdown' : 'text',
    onChunk: () => setChunkCount(count => count + 1),
    ...(tokenUser === undefined ? {} : { userId: tokenUser }),
  })

  useEffect(() => {
    window.__streaming = { editor, service, ...(collaboration ? { provider: collaboration.provider } : {}) }
  }, [editor, collaboration])

  const { loadActions } = streaming
  useEffect(() => {
    let current = true
    loadActions().then(
      listed => current && setActions(listed),
      () => current && setActions(BUILT_IN_ACTIONS),
    )
    return () => {
      current = false
    }
  }, [loadActions])

  const watching = useRef(false)
  useEffect(() => {
    if (watchedSession && !watching.current) {
      watching.current = true
      void streaming.watchStreaming(watchedSession)
    }
  }, [streaming])

  const state = streaming.state ?? 'idle'
  const { decision } = streaming
  useEffect(() => {
    const announced = decision ? DECISIONS[decision] : ANNOUNCEMENTS[state]
    if (announced) {
      setAnnouncement(announced)
    }
  }, [state, decision])

  const start = () => {
    setChunkCount(0)
    void streaming.startStreaming(prompt, { ...serverConfig(animationType), insertAt, review })
  }

  const runAction = (id: string, options: RunActionOptions = {}) => {
    setChunkCount(0)
    void streaming.runAction(id, { ...options, config: serverConfig(animationType) })
  }

  const watchUrl = streaming.sessionId
    ? `${window.location.origin}${window.location.pathname}?session=${streaming.sessionId}`
    : null

  return (
    <main className="demo">
      <header className="demo__header">
        <h1>Tiptap streaming demo</h1>
        <dl className="demo__status">
          <dt>State</dt>
          <dd data-testid="state" id="state">
            {state}
          </dd>
          <dt>Provider</dt>
          <dd data-testid="provider" id="provider">
            {streaming.provider ?? '—'}
          </dd>
          <dt>Model</dt>
          <dd data-testid="model" id="model">
            {streaming.model ?? '—'}
          </dd>
          <dt>Tokens</dt>
          <dd data-testid="tokens" id="tokens">
            {streaming.tokens ?? '—'}
          </dd>
          <dt>First token</dt>
          <dd data-testid="ttft" id="ttft">
            {streaming.timeToFirstToken === null ? '—' : `${streaming.timeToFirstToken} ms`}
          </dd>
          <dt>Chunks</dt>
          <dd data-testid="chunk-count" id="chunk-count">
            {chunkCount}
          </dd>
          <dt>Session</dt>
          <dd data-testid="session-id" id="session-id">
            {streaming.sessionId ?? '—'}
          </dd>
          {collaboration ? (
            <>
              <dt>Document</dt>
              <dd data-testid="collab-status" id="collab-status" title={collaboration.documentId}>
                {synced ? 'synced' : 'connecting'}
              </dd>
            </>
          ) : null}
        </dl>
        {collaboration ? (
          <ul className="demo__people" aria-label="People in this document" data-testid="people">
            {people.map(person => (
              <li key={person.clientId} style={{ borderColor: person.color }} data-ai={person.ai ? 'true' : undefined}>
                {person.name}
                {person.clientId === collaboration.provider.awareness.clientID ? ' (you)' : ''}
                {person.ai ? ' (writing)' : ''}
              </li>
            ))}
          </ul>
        ) : null}
        <p className="demo__announcer" role="status" aria-live="polite" data-testid="announcer">
          {announcement}
        </p>
      </header>

      <section className="demo__controls" aria-label="Stream controls">
        <label className="demo__prompt">
          Prompt
          <textarea
            id="prompt"
            data-testid="prompt"
            rows={2}
            value={prompt}
            onChange={event => setPrompt(event.target.value)}
          />
        </label>
        <div className="demo__buttons">
          <button
            type="button"
            id="start"
            data-testid="start"
            disabled={streaming.isStreaming || prompt.trim() === ''}
            onClick={start}
          >
            Start
          </button>
          <button
            type="button"
            id="continue"
            data-testid="continue"
            disabled={streaming.isStreaming}
            title="Continue writing at the cursor"
            onMouseDown={event => event.preventDefault()}
            onClick={() => runAction('continue')}
          >
            Continue writing
          </button>
          <button
            type="button"
            id="pause"
            data-testid="pause"
            disabled={!streaming.isStreaming || state !== 'streaming'}
            onClick={() => streaming.pauseStreaming()}
          >
            Pause
          </button>
          <button
            type="button"
            id="resume"
            data-testid="resume"
            disabled={!streaming.isStreaming || state !== 'paused'}
            onClick={() => streaming.resumeStreaming()}
          >
            Resume
          </button>
          <button
            type="button"
            id="stop"
            data-testid="stop"
            disabled={!streaming.isStreaming}
            onClick={() => void streaming.cancelStreaming()}
          >
            Stop
          </button>
          <label>
            Animation
            <select
              id="animation"
              data-testid="animation"
              value={animationType}
              onChange={event => setAnimationType(event.target.value as AnimationType)}
            >
              <option value="wave">wave</option>
              <option value="fade">fade</option>
              <option value="slide">slide</option>
            </select>
          </label>
          <label>
            Insert at
            <select
              id="insert-at"
              data-testid="insert-at"
              value={insertAt}
              onChange={event => setInsertAt(event.target.value as 'end' | 'cursor' | 'selection')}
            >
              <option value="end">end of document</option>
              <option value="cursor">cursor</option>
              <option value="selection">selection (rewrite)</option>
            </select>
          </label>
          <label>
            <input
              type="checkbox"
              id="markdown"
              data-testid="markdown"
              checked={markdown}
              onChange={event => setMarkdown(event.target.checked)}
            />
            Render Markdown
          </label>
          <label>
            <input
              type="checkbox"
              id="review"
              data-testid="review"
              checked={review}
              onChange={event => setReview(event.target.checked)}
            />
            Review before keeping
          </label>
        </div>
        {streaming.isReviewing ? (
          <div className="demo__buttons" role="group" aria-label="Review the suggestion">
            <button type="button" data-testid="accept" onClick={() => streaming.accept()}>
              Accept
            </button>
            <button type="button" data-testid="reject" onClick={() => streaming.reject()}>
              Reject
            </button>
            <button type="button" data-testid="regenerate" onClick={() => streaming.regenerate()}>
              Regenerate
            </button>
            {streaming.responses.length > 1 && !collaboration ? (
              <label>
                Response
                <select
                  data-testid="response"
                  value={streaming.responseIndex}
                  onChange={event => streaming.showResponse(Number(event.target.value))}
                >
                  {streaming.responses.map((_response, index) => (
                    <option key={index} value={index}>
                      {index + 1} of {streaming.responses.length}
                    </option>
                  ))}
                </select>
              </label>
            ) : null}
          </div>
        ) : null}
        {watchUrl ? (
          <p className="demo__watch">
            Watch this stream from another tab:{' '}
            <a href={watchUrl} target="_blank" rel="noreferrer" data-testid="watch-link">
              {watchUrl}
            </a>
          </p>
        ) : null}
        {streaming.error ? (
          <p className="demo__error" role="alert" data-testid="error" id="error">
            {streaming.error}
          </p>
        ) : null}
      </section>

      <AiMenu editor={editor} actions={actions} run={runAction} />
      <EditorContent editor={editor} className="demo__editor" data-testid="editor" id="editor" />
    </main>
  )
}
