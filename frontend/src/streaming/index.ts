export { markdownToFragment, markdownToHtml, streamTextToFragment, textToFragment } from './markdown'
export { splitIntoPieces, StreamManager } from './stream-manager'
export type { LocalStreamSink, StreamDefaults, StreamRecord } from './stream-manager'
export {
  cleanupStreams,
  handleDocumentUpdate,
  initiateStreaming,
  setupStreamingState,
  StreamingExtension,
} from './streaming-extension'
export type { StreamingOptions, StreamingStorage } from './streaming-extension'
export { StreamingNode } from './streaming-node'
export type { StreamingNodeAttributes, StreamingNodeOptions } from './streaming-node'
export { StreamingNodeView, streamStatusOf } from './StreamingNodeView'
export {
  CHUNK_ANIMATION_MS,
  createStreamingPlugin,
  findActiveStreamPosition,
  findStreamNodePosition,
  insertStreamingNode,
  STREAMING_NODE_NAME,
  streamingPluginKey,
  streamNodeText,
  triggerChunkAnimation,
} from './streaming-plugin'
export type { StreamingPluginState } from './streaming-plugin'
export type * from './types'
export { useStreaming } from './use-streaming'
export type { UseStreamingOptions } from './use-streaming'
export { StreamingWebSocketService } from './websocket-service'
export type { StreamingWebSocketServiceOptions } from './websocket-service'
