/**
 * Collaborative documents, the part of the package that needs Yjs (`tiptap-streaming/collab`):
 * `streamingCollaboration()` makes the streaming extension's `collaboration` option for an
 * editor bound to a shared document with Tiptap's Collaboration extension. The server then
 * writes the answers of server sessions into the document as a peer, for every
 * collaborator; their text fades in; rejecting a reviewed answer deletes what the AI wrote.
 *
 * @example
 * const provider = new WebsocketProvider(`${wsBase}/collab`, 'team-notes', ydoc)
 * StreamingExtension.configure({ collaboration: streamingCollaboration({ documentId: 'team-notes', provider }) })
 */
import { SharedDocument, type StreamingCollaborationOptions, ySyncStateOf } from './collab-document'
import { createAiRevealPlugin } from './collab-reveal'
import type { StreamingCollaboration } from './streaming-options'

export { anchorAfterBlock } from './collab-anchor'
export type { CollaborationProvider, StreamingCollaborationOptions } from './collab-document'
export { aiRevealPluginKey } from './collab-reveal'

/**
 * The `collaboration` option of the streaming extension for the shared document
 * `documentId`, which `provider` connects the editor to.
 * @example streamingCollaboration({ documentId: 'team-notes', provider })
 */
export function streamingCollaboration(options: StreamingCollaborationOptions): StreamingCollaboration {
  return {
    documentId: options.documentId,
    bind: state => {
      const sync = ySyncStateOf(state)
      if (sync && sync.type !== sync.doc.getXmlFragment('default')) {
        console.warn("[streaming] The server writes answers into the fragment 'default': bind Collaboration to it.")
      }
      return sync ? new SharedDocument(options, sync) : null
    },
    plugins: ({ binding, animationType }) => [
      createAiRevealPlugin({
        shared: state => {
          const bound = binding(state)
          return bound instanceof SharedDocument ? bound : null
        },
        animationType,
      }),
    ],
  }
}
