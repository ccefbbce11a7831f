/** Names and keys shared by the streaming extension, its node, its plugin and its commands. */
import { PluginKey } from '@tiptap/pm/state'

import type { GhostText, StreamingPluginState, TrackedChangesState } from './plugin-types'
import type { AnimationType } from './types'

/** The name of the streaming node type in the schema. */
export const STREAMING_NODE_NAME = 'streamingNode'

/**
 * The name of the node that groups a live stream's committed blocks, so that the live node
 * keeps few direct children however long the answer grows (see `foldCommittedBlocks`).
 */
export const STREAMING_SECTION_NAME = 'streamingSection'

/** How many committed blocks (or sections) of one level are folded into a section of the next. */
export const SECTION_SIZE = 16

/** The name of the streaming extension (and of `editor.storage.streaming`). */
export const STREAMING_EXTENSION_NAME = 'streaming'

/** How long a chunk keeps its animation decoration, in milliseconds. */
export const CHUNK_ANIMATION_MS = 1200

/** The chunk animations the node's CSS knows. */
export const ANIMATION_TYPES: readonly AnimationType[] = ['wave', 'fade', 'slide']

/** Where the server is when the service is given no `baseUrl` (the seed's address). */
export const DEFAULT_SERVER_URL = 'ws://localhost:3001'

/** The key of the plugin that tracks live streams and draws chunk animations. */
export const streamingPluginKey = new PluginKey<StreamingPluginState>('streaming')

/** The key of the plugin that shows ghost-text completions. */
export const autocompletePluginKey = new PluginKey<GhostText | null>('streamingAutocomplete')

/** The key of the plugin that draws a rewrite's tracked changes. */
export const trackedChangesPluginKey = new PluginKey<TrackedChangesState>('streamingTrackedChanges')

/** The key of the plugin that draws the AI caret. */
export const aiCaretPluginKey = new PluginKey('streamingAiCaret')
