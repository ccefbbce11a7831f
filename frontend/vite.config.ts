import react from '@vitejs/plugin-react'
import { defineConfig } from 'vitest/config'

const server = 'http://127.0.0.1:3001'

export default defineConfig({
  plugins: [react()],
  server: {
    host: '127.0.0.1',
    proxy: {
      '/api': server,
      '/healthz': server,
      '/socket.io': { target: server, ws: true },
      '/ws': { target: server, ws: true },
      '/collab': { target: server, ws: true },
    },
  },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // Tiptap, ProseMirror and React in one demo page.
    chunkSizeWarningLimit: 1000,
  },
  test: {
    // `npm run bench:render` runs the benchmarks instead of the unit tests.
    include: process.env.STREAMING_BENCH ? ['tests/bench/**/*.test.ts'] : ['tests/unit/**/*.test.{ts,tsx}'],
    environment: 'jsdom',
    setupFiles: ['tests/unit/setup.ts'],
  },
})
