/**
 * The library build (`npm run build:lib`): the streaming extension, node, service and hook
 * as one ES module in dist-lib/, their CSS as dist-lib/style.css; the peers (Tiptap with
 * @tiptap/markdown, React, socket.io-client) and the dependencies (marked, diff) stay imports.
 * `npm run build` builds the demo page instead.
 */
import { readFileSync } from 'node:fs'

import react from '@vitejs/plugin-react'
import { defineConfig, type Plugin } from 'vite'

const EXTERNAL = [/^@tiptap\//, /^react(\/.*)?$/, /^react-dom(\/.*)?$/, 'socket.io-client', 'marked', 'diff']

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
      entry: 'src/streaming/index.ts',
      formats: ['es'],
      fileName: () => 'index.js',
    },
    rollupOptions: {
      external: EXTERNAL,
    },
  },
})
