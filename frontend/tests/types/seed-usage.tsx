/**
 * Type-check test: code written against the seed compiles unchanged against the library.
 * `npm run typecheck` compiles this file; nothing runs it.
 */
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import { useState } from 'react'

import {
  type StreamConfig,
  StreamingExtension,
  StreamingNode,
  type StreamingStorage,
  StreamingWebSocketService,
  useStreaming,
  type UseStreamingOptions,
} from '../../src/streaming'

const editor = new Editor({ extensions: [StarterKit, StreamingNode, StreamingExtension] })

// The seed's commands, called as the seed's hook calls them.
const newSessionId = 'session-id'
const options: UseStreamingOptions = { editor, animationType: 'wave', speed: 50 }
export const started: boolean = editor.commands.startStream({
  sessionId: newSessionId,
  animationType: options.animationType || 'wave',
  speed: options.speed || 50,
})
export const written: boolean = editor.commands.writeChunk('content')
export const writtenAt: boolean = editor.commands.writeChunk('content', 3)
export const finished: boolean = editor.commands.finishStream()
export const finishedById: boolean = editor.commands.finishStream(newSessionId)
export const paused: boolean = editor.commands.pauseStream()
export const resumed: boolean = editor.commands.resumeStream()
export const animated: boolean = editor.commands.streamWithAnimation('text', 'fade')
export const batched: boolean = editor.commands.batchWrite(['a', 'b'])
export const toNode: boolean = editor.commands.streamToNode('node-id', 'content')
export const streamed: boolean = editor.commands.streamContent('content', { animationType: 'slide', speed: 20 })
export const inserted: boolean = editor.commands.insertStreamingNode({ streamId: 'x', isActive: false })
export const chained: boolean = editor.chain().startStream({ position: 0 }).writeChunk('a').finishStream().run()
export const dryRun: boolean = editor.can().pauseStream()

// The seed's StreamConfig fields, and the server's.
export const config: StreamConfig = {
  sessionId: 'id',
  animationType: 'slide',
  speed: 50,
  position: 0,
  provider: 'demo',
  model: 'demo',
  maxTokens: 100,
  tokensPerSecond: 40,
  format: 'text',
}

// Storage is typed per editor.
export const storage: StreamingStorage = editor.storage.streaming
export const activeId: string | null = editor.storage.streaming.streamManager.activeStreamId

// The seed's service.
const wsService = new StreamingWebSocketService()
export const connecting: Promise<void> = wsService.connect('session-id')

// The seed's window events.
window.addEventListener('streaming:chunk', ((event: CustomEvent) => {
  const { content, metadata } = event.detail
  editor.commands.writeChunk(content)
  void metadata
}) as EventListener)
window.addEventListener('streaming:complete', () => {
  editor.commands.finishStream()
})

// The seed's hook, with its options and return value.
export function SeedComponent({ editor }: { editor: Editor }) {
  const [chunks, setChunks] = useState<string[]>([])
  const {
    isStreaming,
    sessionId,
    startStreaming,
    pauseStreaming,
    resumeStreaming,
  } = useStreaming({
    editor,
    onChunk: (chunk: string) => setChunks(previous => [...previous, chunk]),
    onComplete: () => undefined,
    onError: (error: Error) => console.error(error.message),
    animationType: 'wave',
    speed: 50,
  })
  const start: (prompt: string, config?: StreamConfig) => Promise<void> = startStreaming
  const pause: () => boolean = pauseStreaming
  const resume: () => boolean = resumeStreaming
  return (
    <div data-streaming={isStreaming} data-session={sessionId ?? ''}>
      <button type="button" onClick={() => void start('prompt', { animationType: 'fade' })}>
        Start
      </button>
      <button type="button" onClick={pause}>
        Pause
      </button>
      <button type="button" onClick={resume}>
        Resume
      </button>
      {chunks.join('')}
    </div>
  )
}

// The types are real, not `any`.
// @ts-expect-error writeChunk takes a string
editor.commands.writeChunk(42)
// @ts-expect-error animationType is one of wave, fade, slide
editor.commands.startStream({ animationType: 'spin' })
// @ts-expect-error batchWrite takes an array of strings
editor.commands.batchWrite('not an array')
// @ts-expect-error streamToNode needs the content
editor.commands.streamToNode('node-id')
