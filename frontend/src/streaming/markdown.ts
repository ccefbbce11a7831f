/**
 * What a stream's text becomes: rich content parsed from Markdown with marked, or plain
 * paragraphs, one per line. Both are parsed into the editor's own schema, so an editor
 * without, say, lists keeps the text and drops only the structure it cannot hold.
 */
import { DOMParser as ProseMirrorDOMParser, Fragment, type NodeType, type Schema } from '@tiptap/pm/model'
import { Marked } from 'marked'

import type { StreamFormat } from './types'

function escapeHtml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
}

/**
 * GFM Markdown where raw HTML in the model's answer stays literal text, never markup, and
 * code blocks keep their code exactly (marked's own renderer adds a final newline).
 */
export const markdown = new Marked({
  gfm: true,
  async: false,
  renderer: {
    html: ({ text }) => escapeHtml(text),
    code: ({ text, lang, escaped }) => {
      const language = lang?.match(/^\S*/)?.[0]
      const className = language ? ` class="language-${escapeHtml(language)}"` : ''
      return `<pre><code${className}>${escaped ? text : escapeHtml(text)}</code></pre>\n`
    },
  },
})

/** Markdown to HTML, as marked renders it. */
export function markdownToHtml(text: string): string {
  return markdown.parse(text, { async: false })
}

// One inert document per page, reused for every parse: nothing in it (images, scripts) is
// loaded or run, and a stream parses its open block on every chunk.
let inertDocument: Document | null = null

function inertBody(html: string): HTMLElement {
  inertDocument ??= new window.DOMParser().parseFromString('<body></body>', 'text/html')
  const body = inertDocument.body
  body.innerHTML = html
  return body
}

/**
 * Parses Markdown into block content that fits `container` (the streaming node type),
 * using the schema's own parse rules.
 */
export function markdownToFragment(text: string, schema: Schema, container: NodeType): Fragment {
  if (text.trim() === '') {
    return Fragment.empty
  }
  const body = inertBody(markdownToHtml(text))
  const parsed = ProseMirrorDOMParser.fromSchema(schema).parse(body, { topNode: container.create() })
  body.innerHTML = ''
  return parsed.content
}

/** One paragraph per line, blank lines kept as empty paragraphs. */
export function textToFragment(text: string, schema: Schema): Fragment {
  const paragraph = schema.nodes.paragraph
  if (!paragraph) {
    return Fragment.empty
  }
  return Fragment.fromArray(text.split('\n').map(line => paragraph.create(null, line ? schema.text(line) : null)))
}

/** The content a stream's whole text becomes in the given format; empty for empty text. */
export function streamTextToFragment(text: string, format: StreamFormat, schema: Schema, container: NodeType): Fragment {
  if (text === '') {
    return Fragment.empty
  }
  return format === 'markdown' ? markdownToFragment(text, schema, container) : textToFragment(text, schema)
}
