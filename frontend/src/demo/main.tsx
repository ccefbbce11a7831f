import { StrictMode } from 'react'
import { createRoot } from 'react-dom/client'

import '../streaming/streaming.css'
import './demo.css'
import { App } from './App'
import type { DemoCollaboration } from './collab'

const root = document.getElementById('root')
if (!root) {
  throw new Error('The page has no #root element.')
}

// `?doc=<id>`: the collaborative page, whose Yjs code loads only then.
const documentId = new URLSearchParams(window.location.search).get('doc')
const collaboration: Promise<DemoCollaboration | null> = documentId
  ? import('./collab').then(({ openCollaboration }) =>
      openCollaboration(new URLSearchParams(window.location.search), documentId),
    )
  : Promise.resolve(null)

void collaboration.then(collab =>
  createRoot(root).render(
    <StrictMode>
      <App collaboration={collab} />
    </StrictMode>,
  ),
)
