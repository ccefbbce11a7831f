/**
 * The actions the AI can take on a document (PROTOCOL.md "Document context, actions and
 * follow-ups"): the built-ins the server knows without configuration, and where each
 * one's answer goes in the editor.
 */
import type { Node as ProseMirrorNode } from '@tiptap/pm/model'
import type { Selection } from '@tiptap/pm/state'

import type { ActionDefinition, ActionInsert, StreamConfig } from './types'

/** The built-in actions, as `GET /api/streaming/actions` lists them on a server with no prompts file. */
export const BUILT_IN_ACTIONS: readonly ActionDefinition[] = [
  { id: 'continue', label: 'Continue writing', needsSelection: false, options: [], insert: 'cursor' },
  { id: 'complete', label: 'Autocomplete', needsSelection: false, options: [], insert: 'cursor' },
  { id: 'improve', label: 'Improve writing', needsSelection: true, options: [], insert: 'replace' },
  { id: 'fix', label: 'Fix spelling and grammar', needsSelection: true, options: [], insert: 'replace' },
  { id: 'shorten', label: 'Make shorter', needsSelection: true, options: [], insert: 'replace' },
  { id: 'expand', label: 'Make longer', needsSelection: true, options: [], insert: 'replace' },
  { id: 'simplify', label: 'Simplify', needsSelection: true, options: [], insert: 'replace' },
  { id: 'summarize', label: 'Summarize', needsSelection: true, options: [], insert: 'after' },
  { id: 'translate', label: 'Translate', needsSelection: true, options: ['language'], insert: 'replace' },
  { id: 'tone', label: 'Change tone', needsSelection: true, options: ['tone'], insert: 'replace' },
  { id: 'custom', label: 'Ask AI', needsSelection: false, options: [], insert: 'cursor' },
]

/** The action with this id: as the server listed it, else the built-in, else a cursor action. */
export function findAction(id: string, listed: readonly ActionDefinition[]): ActionDefinition {
  return (
    listed.find(action => action.id === id) ??
    BUILT_IN_ACTIONS.find(action => action.id === id) ?? {
      id,
      label: id,
      needsSelection: false,
      options: [],
      insert: 'cursor',
    }
  )
}

/** Where an action's answer goes: the action's own `insert`, except that `custom` on a selection rewrites it. */
export function insertOf(action: ActionDefinition, selectionEmpty: boolean): ActionInsert {
  return action.id === 'custom' && !selectionEmpty ? 'replace' : action.insert
}

/** The end of the top-level block holding `pos`: where a block goes "after the selection". */
function afterBlock(doc: ProseMirrorNode, pos: number): number {
  const $pos = doc.resolve(pos)
  return $pos.depth > 0 ? $pos.after(1) : pos
}

/**
 * The editor side of an action's stream: a rewrite replaces the selection and is reviewed
 * as tracked changes; a cursor action writes at the end of the selection (the cursor when
 * it is empty), into the text there (an answer of one paragraph settles inline); an
 * `after` action writes after the block where the selection ends.
 */
export function placement(insert: ActionInsert, selection: Selection, doc: ProseMirrorNode): StreamConfig {
  if (insert === 'replace' && !selection.empty) {
    return { insertAt: 'selection', trackChanges: true }
  }
  if (insert === 'after') {
    return { position: afterBlock(doc, selection.to) }
  }
  return { position: selection.to, inline: true }
}
