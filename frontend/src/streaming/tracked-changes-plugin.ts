/**
 * Draws a rewrite's tracked changes over its streaming node, while it streams and while it
 * waits for review: the deleted words (a widget, never in the document) and the inserted
 * ones (an inline decoration), each change with its own accept and reject buttons once the
 * response is complete. The decorations are drawn from the stream's record (decisions,
 * review) and its node's content, at most once per animation frame while an answer streams.
 */
import type { Fragment } from '@tiptap/pm/model'
import { type EditorState, Plugin } from '@tiptap/pm/state'
import { Decoration, DecorationSet } from '@tiptap/pm/view'

import { streamingPluginKey, trackedChangesPluginKey } from './constants'
import type { TrackedChangesState } from './plugin-types'
import type { StreamManager, StreamRecord } from './stream-manager'
import { diffContent, positionedText, type TrackedChange } from './tracked-changes'
import type { ChangeDecision } from './types'

/** What a click on a change's button asks for. */
export type DecideChange = (streamId: string, index: number, decision: ChangeDecision) => void

/** The part of a deleted text shown in its widget: block breaks as spaces. */
function shownText(text: string): string {
  return text.replace(/\n/g, ' ')
}

function deletionWidget(text: string, index: number, restored: boolean): (view: { dom: HTMLElement }) => HTMLElement {
  return view => {
    const element = view.dom.ownerDocument.createElement(restored ? 'span' : 'del')
    element.className = restored ? 'tracked-change tracked-change--restored' : 'tracked-change tracked-change--delete'
    if (!restored) {
      element.setAttribute('data-change', 'delete')
    }
    element.setAttribute('data-change-index', String(index))
    element.textContent = shownText(text)
    return element
  }
}

function controlsWidget(
  streamId: string,
  index: number,
  decide: DecideChange,
): (view: { dom: HTMLElement }) => HTMLElement {
  return view => {
    const document = view.dom.ownerDocument
    const controls = document.createElement('span')
    controls.className = 'tracked-change__controls'
    controls.contentEditable = 'false'
    controls.setAttribute('data-change-index', String(index))
    const buttons: [ChangeDecision, string, string, string][] = [
      ['accepted', '✓', 'change-accept', 'Accept this change'],
      ['rejected', '✕', 'change-reject', 'Reject this change'],
    ]
    for (const [decision, label, testId, title] of buttons) {
      const button = document.createElement('button')
      button.type = 'button'
      button.textContent = label
      button.title = title
      button.setAttribute('aria-label', title)
      button.setAttribute('data-testid', testId)
      // The editor keeps its selection; the click decides.
      button.addEventListener('mousedown', event => event.preventDefault())
      button.addEventListener('click', event => {
        event.preventDefault()
        decide(streamId, index, decision)
      })
      controls.append(button)
    }
    return controls
  }
}

/**
 * The changes to draw for a stream: all of them once it is complete; while it streams, a
 * deletion of the original's end is left out (the answer has not got there yet).
 */
export function shownChanges(changes: readonly TrackedChange[], original: Fragment, finished: boolean): TrackedChange[] {
  const last = changes.at(-1)
  if (finished || !last || last.inserted !== '' || last.toA < positionedText(original).end) {
    return [...changes]
  }
  return changes.slice(0, -1)
}

/** The decorations of one stream's changes; `base` is where its node's content starts. */
export function changeDecorations(
  record: StreamRecord,
  changes: readonly TrackedChange[],
  base: number,
  decide: DecideChange,
): Decoration[] {
  const reviewing = record.decision === 'pending'
  const decorations: Decoration[] = []
  changes.forEach((change, index) => {
    const decision = record.changeDecisions.get(index)
    const from = base + change.fromB
    const to = base + change.toB
    const key = `${record.id}:${index}:${decision ?? 'pending'}`
    if (change.deleted && decision !== 'accepted') {
      decorations.push(
        Decoration.widget(from, deletionWidget(change.deleted, index, decision === 'rejected'), {
          side: -1,
          marks: [],
          ignoreSelection: true,
          key: `${key}:delete:${change.deleted}`,
        }),
      )
    }
    if (to > from && decision !== 'accepted') {
      const attrs: Record<string, string> =
        decision === 'rejected'
          ? { class: 'tracked-change tracked-change--dropped' }
          : { class: 'tracked-change tracked-change--insert', 'data-change': 'insert' }
      decorations.push(Decoration.inline(from, to, { ...attrs, 'data-change-index': String(index) }))
    }
    if (reviewing && decision === undefined) {
      decorations.push(
        Decoration.widget(to, controlsWidget(record.id, index, decide), {
          side: 1,
          ignoreSelection: true,
          stopEvent: () => true,
          key: `${key}:controls`,
        }),
      )
    }
  })
  return decorations
}

/** The meta of the transaction a new animation frame dispatches: a diff may run again. */
const FRAME = 'frame'

const EMPTY: TrackedChangesState = { set: DecorationSet.empty, records: [], stale: false, throttled: false }

/** The streams of `state` shown as tracked changes, with their nodes' positions. */
function trackedStreams(state: EditorState, manager: StreamManager): [StreamRecord, number][] {
  const tracked: [StreamRecord, number][] = []
  for (const [streamId, pos] of streamingPluginKey.getState(state)?.positions ?? []) {
    const record = manager.get(streamId)
    if (record?.trackChanges && record.originalContent && record.decision !== 'accepted') {
      tracked.push([record, pos])
    }
  }
  return tracked
}

function sameRecords(a: readonly StreamRecord[], b: readonly StreamRecord[]): boolean {
  return a.length === b.length && a.every((record, index) => record === b[index])
}

/**
 * The plugin that draws every tracked stream's changes of this editor. While an answer
 * streams, a diff runs at most once per animation frame: the chunks that arrive within a
 * frame move the changes drawn last along (mapped through the transaction), and the frame
 * draws them anew. Any change of a stream's record (its end, a decision, a new answer) is
 * drawn at once, so the changes of a finished answer are always its exact diff.
 */
export function createTrackedChangesPlugin(manager: () => StreamManager, decide: DecideChange): Plugin {
  const draw = (state: EditorState, tracked: [StreamRecord, number][]): DecorationSet => {
    const found: Decoration[] = []
    for (const [record, pos] of tracked) {
      const node = state.doc.nodeAt(pos)
      if (node && record.originalContent) {
        const { originalContent, finished } = record
        const changes = shownChanges(diffContent(originalContent, node.content), originalContent, finished)
        found.push(...changeDecorations(record, changes, pos + 1, decide))
      }
    }
    return found.length > 0 ? DecorationSet.create(state.doc, found) : DecorationSet.empty
  }

  return new Plugin<TrackedChangesState>({
    key: trackedChangesPluginKey,
    state: {
      init: (_config, state) => {
        const tracked = trackedStreams(state, manager())
        return { ...EMPTY, set: draw(state, tracked), records: tracked.map(([record]) => record) }
      },
      apply: (tr, value, _old, state) => {
        const tracked = trackedStreams(state, manager())
        const records = tracked.map(([record]) => record)
        const same = sameRecords(value.records, records)
        const frame = tr.getMeta(trackedChangesPluginKey) === FRAME
        if (same && !tr.docChanged && (!frame || !value.stale)) {
          return frame ? { ...value, throttled: false } : value
        }
        const streaming = tracked.some(([record]) => !record.finished)
        if (same && !frame && value.throttled && streaming) {
          return { set: value.set.map(tr.mapping, tr.doc), records, stale: true, throttled: true }
        }
        return { set: draw(state, tracked), records, stale: false, throttled: streaming }
      },
    },
    props: {
      decorations: state => trackedChangesPluginKey.getState(state)?.set,
    },
    view: view => {
      const window = view.dom.ownerDocument.defaultView
      let frame: number | null = null
      const schedule = (): void => {
        const throttled = trackedChangesPluginKey.getState(view.state)?.throttled
        if (frame !== null || !throttled || !window) {
          return
        }
        frame = window.requestAnimationFrame(() => {
          frame = null
          if (!view.isDestroyed) {
            view.dispatch(view.state.tr.setMeta(trackedChangesPluginKey, FRAME).setMeta('addToHistory', false))
          }
        })
      }
      return {
        update: schedule,
        destroy: () => {
          if (frame !== null) {
            window?.cancelAnimationFrame(frame)
          }
        },
      }
    },
  })
}
