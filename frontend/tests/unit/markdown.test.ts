import { getSchema } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import { describe, expect, it } from 'vitest'

import { markdownToFragment, StreamingExtension, StreamingNode, textToFragment } from '../../src/streaming'

const schema = getSchema([StarterKit, StreamingNode, StreamingExtension])
const container = schema.nodes.streamingNode
if (!container) {
  throw new Error('no streamingNode in the schema')
}

function toJSON(markdown: string) {
  return markdownToFragment(markdown, schema, container!).toJSON() as unknown[]
}

describe('markdownToFragment', () => {
  it('turns headings, paragraphs with marks, lists and code into the schema’s nodes', () => {
    const fragment = markdownToFragment(
      [
        '# Title',
        '',
        '## Sub',
        '',
        'Some **bold**, *italic*, `code` and a [link](https://example.com).',
        '',
        '- one',
        '- two',
        '',
        '1. first',
        '',
        '```ts',
        'const x = 1',
        '```',
      ].join('\n'),
      schema,
      container!,
    )
    const types: string[] = []
    fragment.forEach(node => types.push(node.type.name))
    expect(types).toEqual(['heading', 'heading', 'paragraph', 'bulletList', 'orderedList', 'codeBlock'])
    expect(fragment.child(0).attrs.level).toBe(1)
    expect(fragment.child(1).attrs.level).toBe(2)

    const marks: Record<string, string> = {}
    fragment.child(2).forEach(text => {
      text.marks.forEach(mark => {
        marks[mark.type.name] = text.text ?? ''
      })
    })
    expect(marks).toEqual({ bold: 'bold', italic: 'italic', code: 'code', link: 'link' })
    expect(fragment.child(2).child(7).marks[0]?.attrs.href).toBe('https://example.com')
    expect(fragment.child(3).textContent).toBe('onetwo')
    expect(fragment.child(5).textContent).toBe('const x = 1')
    expect(fragment.child(5).attrs.language).toBe('ts')
  })

  it('keeps raw HTML as literal text', () => {
    expect(JSON.stringify(toJSON('Hi <img src=x onerror=alert(1)> <b>there</b>'))).toContain(
      '<img src=x onerror=alert(1)>',
    )
    expect(JSON.stringify(toJSON('<script>alert(1)</script>'))).toContain('<script>alert(1)</script>')
  })

  it('drops unsafe link targets', () => {
    const json = JSON.stringify(toJSON('[click](javascript:alert(1))'))
    expect(json).not.toContain('javascript:')
    expect(json).toContain('click')
  })
})

describe('textToFragment', () => {
  it('makes one paragraph per line and keeps Markdown syntax as text', () => {
    const fragment = textToFragment('# not a heading\n\n**not bold**', schema)
    expect(fragment.childCount).toBe(3)
    expect(fragment.child(0).textContent).toBe('# not a heading')
    expect(fragment.child(1).childCount).toBe(0)
    expect(fragment.child(2).textContent).toBe('**not bold**')
    expect(fragment.child(2).firstChild?.marks).toEqual([])
  })
})
