/**
 * The AI actions as editor commands: one per built-in action and `runAction` for any
 * action id, the follow-up on a reviewed answer, and the decisions on a rewrite's single
 * tracked changes. An action takes its context from the editor when it starts (the
 * selection can be gone by the time the server answers), begins its stream where the
 * action's answer goes, and hands the start request to the transport.
 */
import type { CommandProps, RawCommands } from '@tiptap/core'

import { findAction, insertOf, placement } from './actions'
import {
  beginStream,
  type CommandContext,
  restartIn,
  reviewedNode,
  settleReview,
  targetOf,
} from './commands'
import { STREAMING_NODE_NAME } from './constants'
import { captureContext, type FragmentSerializer } from './document-context'
import type { StreamingOptions, StreamingStorage } from './streaming-options'
import { diffContent } from './tracked-changes'
import type { ActionOptions, ChangeDecision, RunActionOptions, StartRequest } from './types'

declare module '@tiptap/core' {
  interface Commands<ReturnType> {
    streamingActions: {
      /**
       * Runs an action (a built-in or an operator's) on the selection, or at the cursor: the
       * selection and the text around it go to the server as Markdown, and the answer streams
       * in where the action puts it (a rewrite replaces the selection, as tracked changes to
       * review; continue writes at the cursor; summarize after the selection). False when the
       * action needs a selection and there is none, or no transport can run it.
       * @example editor.commands.runAction('translate', { language: 'German' })
       */
      runAction: (id: string, options?: RunActionOptions) => ReturnType
      /**
       * Continues the text at the cursor (or after the selection), following on from what comes before.
       * @example editor.commands.aiContinue()
       */
      aiContinue: (options?: RunActionOptions) => ReturnType
      /**
       * Completes the sentence at the cursor with a few words.
       * @example editor.commands.aiComplete()
       */
      aiComplete: (options?: RunActionOptions) => ReturnType
      /**
       * Rewrites the selection: clearer, more fluent, same meaning.
       * @example editor.commands.aiImprove()
       */
      aiImprove: (options?: RunActionOptions) => ReturnType
      /**
       * Fixes the selection's spelling, grammar and punctuation.
       * @example editor.commands.aiFix()
       */
      aiFix: (options?: RunActionOptions) => ReturnType
      /**
       * Makes the selection shorter.
       * @example editor.commands.aiShorten()
       */
      aiShorten: (options?: RunActionOptions) => ReturnType
      /**
       * Makes the selection longer.
       * @example editor.commands.aiExpand()
       */
      aiExpand: (options?: RunActionOptions) => ReturnType
      /**
       * Rewrites the selection in simpler words.
       * @example editor.commands.aiSimplify()
       */
      aiSimplify: (options?: RunActionOptions) => ReturnType
      /**
       * Summarizes the selection in a block after it.
       * @example editor.commands.aiSummarize()
       */
      aiSummarize: (options?: RunActionOptions) => ReturnType
      /**
       * Translates the selection into `language`.
       * @example editor.commands.aiTranslate('French')
       */
      aiTranslate: (language: string, options?: RunActionOptions) => ReturnType
      /**
       * Rewrites the selection in another tone.
       * @example editor.commands.aiTone('formal')
       */
      aiTone: (tone: string, options?: RunActionOptions) => ReturnType
      /**
       * Sends an instruction about a reviewed answer ("make it shorter"): the server gets the
       * earlier request and answer as the conversation so far, and the new answer replaces
       * the suggestion; the earlier answers stay in the stream's responses.
       * @example editor.commands.followUpStream('Make it more formal')
       */
      followUpStream: (instruction: string, streamId?: string) => ReturnType
      /**
       * Accepts one tracked change of a reviewed rewrite (by its index, in document order);
       * once every change is decided, the chosen words go into the document as one undo step.
       * @example editor.commands.acceptChange(0)
       */
      acceptChange: (index: number, streamId?: string) => ReturnType
      /**
       * Rejects one tracked change of a reviewed rewrite: its original text stays.
       * @example editor.commands.rejectChange(1)
       */
      rejectChange: (index: number, streamId?: string) => ReturnType
    }
  }
}

/** What the action commands need from the extension. */
export interface ActionCommandsHost {
  options: StreamingOptions
  storage: StreamingStorage
  /** Writes document content as Markdown. */
  serializer: () => FragmentSerializer
}

/** The action's options the server reads (PROTOCOL.md `options`). */
function actionOptions(run: RunActionOptions): ActionOptions | undefined {
  const options: ActionOptions = {}
  if (run.language) options.language = run.language
  if (run.tone) options.tone = run.tone
  return Object.keys(options).length > 0 ? options : undefined
}

/** Runs an action (see the runAction command). */
export function runActionIn(
  context: CommandContext,
  options: StreamingOptions,
  serializer: () => FragmentSerializer,
  id: string,
  run: RunActionOptions = {},
): boolean {
  const { tr, dispatch, storage } = context
  const runAction = storage.transport?.runAction?.bind(storage.transport)
  const action = findAction(id, storage.actions)
  const { selection } = tr
  const prompt = run.prompt?.trim()
  const refused =
    !runAction ||
    !tr.doc.type.schema.nodes[STREAMING_NODE_NAME] ||
    (action.needsSelection && selection.empty) ||
    (id === 'custom' && !prompt) ||
    // PROTOCOL.md: translate without options.language is refused (400).
    (id === 'translate' && !run.language)
  if (!runAction || refused) {
    return false
  }
  if (!dispatch) {
    return true
  }
  const documentContext = captureContext(tr.doc, selection.from, selection.to, options.context, serializer())
  // In a collaborative editor the server writes the answer after the selection's block.
  const target = targetOf(context, options, selection.to)
  const record = beginStream(
    tr,
    storage,
    options,
    {
      animationType: run.config?.animationType,
      format: run.config?.format,
      ...placement(run.insert ?? insertOf(action, selection.empty), selection, tr.doc),
      review: run.review ?? true,
    },
    target,
  )
  if (!record) {
    return false
  }
  const start: StartRequest = { action: id, context: documentContext }
  if (target) start.target = target
  const extra = actionOptions(run)
  if (prompt) start.prompt = prompt
  if (extra) start.options = extra
  void runAction({ streamId: record.id, start, ...(run.config ? { config: run.config } : {}) })
  return true
}

/**
 * Sends a follow-up instruction about a reviewed answer (see followUpStream), into that
 * answer's own stream; refused, with nothing emptied, when the stream has no earlier
 * session to follow up on.
 */
export function followUpIn(context: CommandContext, instruction: string, streamId: string | undefined): boolean {
  const text = instruction.trim()
  return (
    text !== '' &&
    restartIn(context, streamId, (transport, record) => {
      const followUp = transport.followUp?.bind(transport)
      return followUp && record.sessionId ? () => followUp(text, record.id) : undefined
    })
  )
}

/**
 * Decides one tracked change of a reviewed rewrite; the decision that leaves no change
 * pending settles the rewrite (see settleReview).
 */
export function decideChangeIn(
  context: CommandContext,
  index: number,
  streamId: string | undefined,
  decision: ChangeDecision,
): boolean {
  const found = reviewedNode(context, streamId)
  const original = found?.record.trackChanges ? found.record.originalContent : null
  if (!found || !original) {
    return false
  }
  const changes = diffContent(original, found.live.content)
  if (!changes[index] || found.record.changeDecisions.has(index)) {
    return false
  }
  if (context.dispatch) {
    const changeDecisions = new Map(found.record.changeDecisions).set(index, decision)
    const record = context.storage.streamManager.update(found.record.id, { changeDecisions })
    if (record && changeDecisions.size === changes.length) {
      settleReview(context, record, found.live, decision)
    }
  }
  return true
}

/** The action commands, for the extension's addCommands. */
export function createActionCommands(host: ActionCommandsHost): Partial<RawCommands> {
  const context = ({ state, tr, dispatch }: CommandProps): CommandContext => ({
    state,
    tr,
    dispatch,
    storage: host.storage,
  })
  const { serializer } = host
  const run =
    (id: string, fixed: RunActionOptions = {}) =>
    (options: RunActionOptions = {}) =>
    (props: CommandProps) =>
      runActionIn(context(props), host.options, serializer, id, { ...options, ...fixed })

  return {
    runAction: (id, options) => props => runActionIn(context(props), host.options, serializer, id, options),
    aiContinue: run('continue'),
    aiComplete: run('complete'),
    aiImprove: run('improve'),
    aiFix: run('fix'),
    aiShorten: run('shorten'),
    aiExpand: run('expand'),
    aiSimplify: run('simplify'),
    aiSummarize: run('summarize'),
    aiTranslate: (language, options) => run('translate', { language })(options),
    aiTone: (tone, options) => run('tone', { tone })(options),
    followUpStream: (instruction, streamId) => props => followUpIn(context(props), instruction, streamId),
    acceptChange: (index, streamId) => props => decideChangeIn(context(props), index, streamId, 'accepted'),
    rejectChange: (index, streamId) => props => decideChangeIn(context(props), index, streamId, 'rejected'),
  }
}
