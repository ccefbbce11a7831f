export { BUILT_IN_ACTIONS } from './actions'
export { STREAMING_NODE_NAME, streamingPluginKey } from './constants'
export { captureContext, cutAfter, cutBefore, DEFAULT_CONTEXT_BUDGETS, markdownSerializer } from './document-context'
export type { ContextBudgets, FragmentSerializer } from './document-context'
export { markdownToFragment, markdownToHtml, streamTextToFragment, textToFragment } from './markdown'
export { StreamingSessionClient } from './session-client'
export type { StreamingSessionClientOptions } from './session-client'
export type { StreamRecord } from './stream-manager'
export { StreamingExtension } from './streaming-extension'
export type {
  AutocompleteOptions,
  CollaborationBinding,
  CollaborationPluginContext,
  StreamingCollaboration,
  StreamingOptions,
  StreamingStorage,
} from './streaming-options'
export { StreamingNode } from './streaming-node'
export type { StreamingNodeAttributes, StreamingNodeOptions } from './streaming-node'
export type { GhostText, StreamingPluginState } from './plugin-types'
export { StreamingNodeView } from './StreamingNodeView'
export { composeContent, diffContent } from './tracked-changes'
export type { TrackedChange } from './tracked-changes'
export type * from './types'
export { useStreaming } from './use-streaming'
export type { UseStreamingOptions } from './use-streaming'
export { StreamingWebSocketService } from './websocket-service'
export type { ConnectOptions, StreamingWebSocketServiceOptions } from './websocket-service'
