/**
 * Ghost-text autocomplete. When the writer stops typing with the cursor at the end of a
 * text block, the plugin asks the transport for a `complete` session and shows its text
 * after the cursor as a decoration: outside the document (not in `getJSON()`, not in the
 * undo history, never sent to collaborators). Tab accepts it, Mod-ArrowRight accepts its
 * next word, Escape dismisses it; typing its own next characters keeps the rest, and any
 * other change at the cursor dismisses it and cancels its session, while a change elsewhere
 * in the document (a collaborator's edit) only moves it along. Only typing asks for a
 * completion: not a click, an undo, or text an AI stream wrote.
 */
import { closeHistory } from '@tiptap/pm/history'
import { type EditorState, Plugin, type Transaction } from '@tiptap/pm/state'
import { Decoration, DecorationSet, type EditorView } from '@tiptap/pm/view'

import { autocompletePluginKey, STREAMING_NODE_NAME } from './constants'
import { captureContext, type ContextBudgets, type FragmentSerializer } from './document-context'
import type { AutocompleteAction, GhostText } from './plugin-types'
import type { StreamManager } from './stream-manager'
import type { AutocompleteOptions } from './streaming-options'
import type { CompletionHandle, StreamingTransport } from './types'

declare module '@tiptap/core' {
  interface Commands<ReturnType> {
    streamingAutocomplete: {
      /**
       * Writes the ghost text into the document at the cursor (Tab).
       * @example editor.commands.acceptAutocomplete()
       */
      acceptAutocomplete: () => ReturnType
      /**
       * Writes the ghost text's next word into the document; the rest stays (Mod-ArrowRight).
       * @example editor.commands.acceptAutocompleteWord()
       */
      acceptAutocompleteWord: () => ReturnType
      /**
       * Hides the ghost text and cancels its session (Escape).
       * @example editor.commands.dismissAutocomplete()
       */
      dismissAutocomplete: () => ReturnType
    }
  }
}

/** Milliseconds the cursor rests after typing before a completion starts, unless configured. */
export const DEFAULT_AUTOCOMPLETE_DEBOUNCE_MS = 300

/** What the autocomplete plugin needs from its editor. */
export interface AutocompleteHost {
  options: AutocompleteOptions
  budgets: () => ContextBudgets
  serializer: () => FragmentSerializer
  transport: () => StreamingTransport | null
  manager: () => StreamManager
}

/** The ghost text shown in `state`, if any. */
export function ghostOf(state: EditorState): GhostText | null {
  return autocompletePluginKey.getState(state) ?? null
}

function withAction(tr: Transaction, action: AutocompleteAction): Transaction {
  return tr.setMeta(autocompletePluginKey, action)
}

/**
 * Where the ghost at `pos` is after a change of the document that leaves it in place: a
 * change elsewhere (a collaborator's edit, a stream writing in another block) moves it
 * along. Null when a step touches it (text written or deleted right there: the writer
 * typed on, or someone edited at the cursor) or it no longer ends its text block.
 */
function mappedGhostPosition(tr: Transaction, pos: number): number | null {
  let at: number | null = pos
  for (const map of tr.mapping.maps) {
    map.forEach((oldStart, oldEnd) => {
      if (at !== null && oldStart <= at && at <= oldEnd) {
        at = null
      }
    })
    if (at === null) {
      return null
    }
    at = map.map(at, 1)
  }
  const $at = tr.doc.resolve(at)
  return $at.parent.isTextblock && $at.parentOffset === $at.parent.content.size ? at : null
}

/** The ghost after a transaction (see the module's comment for the rules). */
function nextGhost(tr: Transaction, ghost: GhostText | null, action: AutocompleteAction | undefined): GhostText | null {
  if (action?.type === 'show') {
    return { id: action.id, pos: action.pos, text: '', sessionId: null, streaming: true }
  }
  if (!ghost || action?.type === 'dismiss') {
    return null
  }
  let next = ghost
  if (action?.type === 'consume') {
    next = { ...ghost, pos: tr.mapping.map(ghost.pos, 1), text: ghost.text.slice(action.count) }
  } else if (tr.docChanged) {
    const pos = mappedGhostPosition(tr, ghost.pos)
    if (pos === null) {
      return null
    }
    next = { ...ghost, pos }
  }
  if (action && 'id' in action && action.id === ghost.id) {
    if (action.type === 'append') next = { ...next, text: next.text + action.text }
    if (action.type === 'session') next = { ...next, sessionId: action.sessionId }
    if (action.type === 'end') next = { ...next, streaming: false }
  }
  const { selection } = tr
  if (!selection.empty || selection.head !== next.pos || (!next.streaming && next.text === '')) {
    return null
  }
  return next
}

/** Whether a completion may start at the cursor of `state`: the end of a text block with text, no AI stream around. */
export function canComplete(state: EditorState, manager: StreamManager): boolean {
  const { selection } = state
  const { $head } = selection
  if (!selection.empty || !$head.parent.isTextblock || $head.parent.type.spec.code) {
    return false
  }
  if ($head.parentOffset !== $head.parent.content.size || $head.parent.textContent.trim() === '') {
    return false
  }
  for (let depth = $head.depth; depth > 0; depth -= 1) {
    if ($head.node(depth).type.name === STREAMING_NODE_NAME) {
      return false
    }
  }
  return manager.live().length === 0 && !manager.pendingReview()
}

function ghostWidget(ghost: GhostText): (view: EditorView) => HTMLElement {
  return view => {
    const element = view.dom.ownerDocument.createElement('span')
    element.className = 'ghost-text'
    element.setAttribute('data-testid', 'ghost')
    element.setAttribute('data-streaming', ghost.streaming ? 'true' : 'false')
    if (ghost.sessionId) {
      element.setAttribute('data-session-id', ghost.sessionId)
    }
    element.textContent = ghost.text
    return element
  }
}

/** Starts completions when the writer rests after typing, and stops the session of every ghost that goes away. */
class AutocompleteView {
  /** Set when the writer typed: the next update starts the wait for them to rest. */
  typed = false
  private timer: ReturnType<typeof setTimeout> | null = null
  private readonly handles = new Map<number, CompletionHandle>()
  private counter = 0

  constructor(
    private readonly view: EditorView,
    private readonly host: AutocompleteHost,
  ) {}

  update(view: EditorView, previous: EditorState): void {
    const before = ghostOf(previous)
    if (before && before.id !== ghostOf(view.state)?.id) {
      this.stop(before.id)
    }
    if (this.typed) {
      this.typed = false
      this.schedule()
    } else if (view.state.doc !== previous.doc || !view.state.selection.eq(previous.selection)) {
      // Anything else (a click, an undo, a command) ends the rest the writer was taking.
      this.clearTimer()
    }
  }

  destroy(): void {
    this.clearTimer()
    for (const id of [...this.handles.keys()]) {
      this.stop(id)
    }
  }

  private clearTimer(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer)
      this.timer = null
    }
  }

  private schedule(): void {
    this.clearTimer()
    this.timer = setTimeout(() => {
      this.timer = null
      this.start()
    }, this.host.options.debounceMs ?? DEFAULT_AUTOCOMPLETE_DEBOUNCE_MS)
  }

  private start(): void {
    const { view, host } = this
    const transport = host.transport()
    const { state } = view
    if (view.isDestroyed || !view.hasFocus() || ghostOf(state) || !transport?.complete) {
      return
    }
    if (!canComplete(state, host.manager())) {
      return
    }
    this.counter += 1
    const id = this.counter
    const pos = state.selection.head
    const context = captureContext(state.doc, pos, pos, host.budgets(), host.serializer())
    view.dispatch(withAction(state.tr, { type: 'show', id, pos }))
    const send = (action: AutocompleteAction): void => {
      if (!view.isDestroyed && ghostOf(view.state)?.id === id) {
        view.dispatch(withAction(view.state.tr, action))
      }
    }
    const handle = transport.complete(
      { context, ...(host.options.config ? { config: host.options.config } : {}) },
      {
        session: sessionId => send({ type: 'session', id, sessionId }),
        chunk: text => send({ type: 'append', id, text }),
        end: () => {
          this.handles.delete(id)
          send({ type: 'end', id })
        },
      },
    )
    if (ghostOf(view.state)?.id === id) {
      this.handles.set(id, handle)
    } else {
      handle.cancel()
    }
  }

  private stop(id: number): void {
    const handle = this.handles.get(id)
    this.handles.delete(id)
    handle?.cancel()
  }
}

/** The autocomplete plugin: the ghost's state, its decoration, typing through it, and the view that starts completions. */
export function createAutocompletePlugin(host: AutocompleteHost): Plugin<GhostText | null> {
  let completions: AutocompleteView | null = null
  return new Plugin<GhostText | null>({
    key: autocompletePluginKey,
    state: {
      init: () => null,
      apply: (tr, ghost) => nextGhost(tr, ghost, tr.getMeta(autocompletePluginKey) as AutocompleteAction | undefined),
    },
    props: {
      decorations: state => {
        const ghost = ghostOf(state)
        if (!ghost?.text) {
          return null
        }
        return DecorationSet.create(state.doc, [
          Decoration.widget(ghost.pos, ghostWidget(ghost), {
            side: 1,
            marks: [],
            ignoreSelection: true,
            key: `ghost:${ghost.id}:${ghost.streaming}:${ghost.sessionId}:${ghost.text}`,
          }),
        ])
      },
      handleTextInput: (view, from, to, text) => {
        const ghost = ghostOf(view.state)
        if (!ghost || from !== to || from !== ghost.pos || text === '' || !ghost.text.startsWith(text)) {
          // The text goes in as usual (input rules included); the writer rests after it.
          if (completions) completions.typed = true
          return false
        }
        view.dispatch(withAction(view.state.tr.insertText(text, from, to), { type: 'consume', count: text.length }))
        return true
      },
    },
    view: view => (completions = new AutocompleteView(view, host)),
  })
}

/** Writes the ghost text (or its next word) into the document, as an undo step of its own (see acceptAutocomplete). */
export function acceptGhostIn(
  { state, tr, dispatch }: { state: EditorState; tr: Transaction; dispatch: unknown },
  wordOnly: boolean,
): boolean {
  const ghost = ghostOf(state)
  if (!ghost?.text || tr.selection.head !== ghost.pos || !tr.selection.empty) {
    return false
  }
  if (dispatch) {
    const text = wordOnly ? (/^\s*\S+/.exec(ghost.text)?.[0] ?? ghost.text) : ghost.text
    closeHistory(tr).insertText(text, ghost.pos)
    withAction(tr, wordOnly ? { type: 'consume', count: text.length } : { type: 'dismiss' })
  }
  return true
}

/** Hides the ghost text (see dismissAutocomplete). */
export function dismissGhostIn({ state, tr, dispatch }: { state: EditorState; tr: Transaction; dispatch: unknown }): boolean {
  if (!ghostOf(state)) {
    return false
  }
  if (dispatch) {
    withAction(tr, { type: 'dismiss' })
  }
  return true
}
