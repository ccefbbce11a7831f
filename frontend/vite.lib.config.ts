/**
 * The library build (`npm run build:lib`): the streaming extension, node, service and hook
 * as one ES module in dist-lib/, their CSS as dist-lib/style.css; the peers (Tiptap with
 * @tiptap/markdown, React, socket.io-client) and the dependencies (marked, diff) stay imports.
 * `tiptap-streaming/collab` (dist-lib/collab.js) adds collaborative documents; its peers
 * (yjs, y-protocols, @tiptap/y-tiptap) are optional ones of the package.
 * `npm run build` builds the demo page instead.
 */
import { readFileSync } from 'node:fs'

import react from '@vitejs/plugin-react'
import { defineConfig, type Plugin } from 'vite'

const EXTERNAL = [
  /^@tiptap\//,
  /^react(\/.*)?$/,
  /^react-dom(\/.*)?$/,
  'socket.io-client',
  'marked',
  'diff',
  // The collaboration entry's peers (tiptap-streaming/collab): the app's own Yjs.
  'yjs',
  /^y-protocols(\/.*)?$/,
]

/** The node's and the animations' CSS, shipped as its own file for `import 'tiptap-streaming/style.css'`. */
function emitStyle(): Plugin {
  return {
    name: 'streaming-style',
    generateBundle() {
      this.emitFile({
        type: 'asset',
        fileName: 'style.css',
        source: readFileSync(new URL('./src/streaming/streaming.css', import.meta.url), 'utf8'),
      })
    },
  }
}

export default defineConfig({
  plugins: [react(), emitStyle()],
  publicDir: false,
  build: {
    outDir: 'dist-lib',
    emptyOutDir: true,
    sourcemap: true,
    minify: false,
    lib: {
      // `tiptap-streaming/collab` is its own entry, so that the main one imports no Yjs.
      entry: { index: 'src/streaming/index.ts', collab: 'src/streaming/collab.ts' },
      formats: ['es'],
      fileName: (_format, name) => `${name}.js`,
    },
    rollupOptions: {
      external: EXTERNAL,
    },
  },
})
