// Reads a Yjs document the way a Tiptap editor with StarterKit and Collaboration does:
// `yXmlFragmentToProseMirrorRootNode` on the `default` fragment (what the binding runs on
// every remote update), then `.check()`. The binding deletes from the shared document any
// element its schema cannot build, so a document that changes while it is read is invalid
// too, and so are the shapes y-tiptap tidies up silently (two XmlTexts side by side, a bare
// XmlText at the top level, formatting inside a codeBlock).
//
//   node tests/collab_validate.mjs update.bin     a binary update in a file: one result
//   node tests/collab_validate.mjs -              a base64 update on stdin: one result
//   node tests/collab_validate.mjs --batch        JSON lines in, one JSON line out for each
//
// Batch requests ({"op": ..., ...}; op defaults to "validate"):
//   validate   {update}                  -> {ok, doc, errors}   doc: the ProseMirror JSON
//   anchor     {update, index, assoc}    -> {ok, anchor}        base64 Y.encodeRelativePosition
//                                           of Y.createRelativePositionFromTypeIndex(default, index, assoc)
//   fromJSON   {json}                    -> {ok, update, doc}   prosemirrorJSONToYDoc (what Tiptap writes)
//   fromMarkdown {markdown}              -> {ok, update, doc}   @tiptap/markdown's parse, then fromJSON
//   edit       {update, path, at, text}  -> {ok, update}        insert text as a Yjs client would
//   tiptap     {update, json}            -> {ok, update}        the editor's document becomes `json`,
//                                           written back the way the Collaboration binding does it
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'

const require = createRequire(new URL('../frontend/package.json', import.meta.url))
const Y = require('yjs')
const {
  yXmlFragmentToProseMirrorRootNode,
  prosemirrorJSONToYDoc,
  initProseMirrorDoc,
  updateYFragment,
  ySyncPluginKey,
} = require('@tiptap/y-tiptap')
const { getSchema } = require('@tiptap/core')
const { StarterKit } = require('@tiptap/starter-kit')
const { MarkdownManager } = require('@tiptap/markdown')

const FIELD = 'default'
const schema = getSchema([StarterKit])
const markdown = new MarkdownManager({ extensions: [StarterKit] })

const toBase64 = (bytes) => Buffer.from(bytes).toString('base64')
const fromBase64 = (text) => new Uint8Array(Buffer.from(text, 'base64'))

function docFrom(update) {
  const ydoc = new Y.Doc()
  Y.applyUpdate(ydoc, update)
  return ydoc
}

/** The shape rules a client does not throw on but repairs by writing to the document. */
function shapeErrors(fragment) {
  const errors = []
  const visit = (type, path, parentName) => {
    let previousText = false
    type.toArray().forEach((child, index) => {
      const where = `${path}/${index}`
      if (child instanceof Y.XmlText) {
        if (parentName === 'doc') errors.push(`${where}: XmlText at the top level`)
        if (previousText) errors.push(`${where}: XmlText beside another XmlText`)
        if (parentName === 'codeBlock' && child.toDelta().some((op) => op.attributes && Object.keys(op.attributes).length)) {
          errors.push(`${where}: formatted text in a codeBlock`)
        }
        for (const op of child.toDelta()) {
          for (const name of Object.keys(op.attributes ?? {})) {
            if (!schema.marks[name.split('--')[0]]) errors.push(`${where}: unknown mark ${name}`)
          }
        }
        previousText = true
      } else {
        previousText = false
        if (!schema.nodes[child.nodeName]) errors.push(`${where}: unknown node ${child.nodeName}`)
        for (const [key, value] of Object.entries(child.getAttributes())) {
          if (typeof value === 'bigint') errors.push(`${where}: attribute ${key} is a bigint`)
        }
        visit(child, where, child.nodeName)
      }
    })
  }
  visit(fragment, '', 'doc')
  return errors
}

function validate(update) {
  const ydoc = docFrom(update)
  const fragment = ydoc.getXmlFragment(FIELD)
  if (fragment.length === 0) {
    // A document nobody wrote yet: the binding shows it as one empty paragraph.
    return { ok: true, doc: { type: 'doc' }, errors: [] }
  }
  const errors = shapeErrors(fragment)
  let changed = false
  ydoc.on('update', () => {
    changed = true
  })
  let doc = null
  try {
    const node = yXmlFragmentToProseMirrorRootNode(fragment, schema)
    node.check()
    doc = node.toJSON()
  } catch (error) {
    errors.push(`ProseMirror: ${error.message}`)
  }
  if (changed) errors.push('reading the document changed it: the binding deleted or merged what it could not use')
  return { ok: errors.length === 0, doc, errors }
}

function anchor({ update, index, assoc }) {
  const ydoc = docFrom(fromBase64(update))
  const position = Y.createRelativePositionFromTypeIndex(ydoc.getXmlFragment(FIELD), index, assoc ?? 0)
  return { ok: true, anchor: toBase64(Y.encodeRelativePosition(position)) }
}

function fromJSON(json) {
  const ydoc = prosemirrorJSONToYDoc(schema, json, FIELD)
  const doc = yXmlFragmentToProseMirrorRootNode(ydoc.getXmlFragment(FIELD), schema).toJSON()
  return { ok: true, update: toBase64(Y.encodeStateAsUpdate(ydoc)), doc }
}

/** Types `text` at offset `at` of the XmlText found by following `path` (child indexes). */
function edit({ update, path, at, text }) {
  const ydoc = docFrom(fromBase64(update))
  const before = Y.encodeStateVector(ydoc)
  let type = ydoc.getXmlFragment(FIELD)
  for (const index of path) type = type.get(index)
  type.insert(at, text)
  return { ok: true, update: toBase64(Y.encodeStateAsUpdate(ydoc, before)) }
}

/** An editor whose document becomes `json`: y-tiptap's own diff writes it into the Y document. */
function tiptap({ update, json }) {
  const ydoc = docFrom(fromBase64(update))
  const fragment = ydoc.getXmlFragment(FIELD)
  const { meta } = initProseMirrorDoc(fragment, schema)
  const before = Y.encodeStateVector(ydoc)
  ydoc.transact(() => updateYFragment(ydoc, fragment, schema.nodeFromJSON(json), meta), ySyncPluginKey)
  return { ok: true, update: toBase64(Y.encodeStateAsUpdate(ydoc, before)) }
}

function handle(request) {
  switch (request.op ?? 'validate') {
    case 'validate':
      return validate(fromBase64(request.update))
    case 'anchor':
      return anchor(request)
    case 'fromJSON':
      return fromJSON(request.json)
    case 'fromMarkdown':
      return fromJSON(markdown.parse(request.markdown))
    case 'edit':
      return edit(request)
    case 'tiptap':
      return tiptap(request)
    default:
      return { ok: false, errors: [`unknown op ${request.op}`] }
  }
}

const [arg] = process.argv.slice(2)
if (arg === '--batch') {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of lines) {
    if (!line.trim()) continue
    let result
    try {
      result = handle(JSON.parse(line))
    } catch (error) {
      result = { ok: false, errors: [String(error?.stack ?? error)] }
    }
    process.stdout.write(`${JSON.stringify(result)}\n`)
  }
} else if (arg) {
  let result
  try {
    result = validate(arg === '-' ? fromBase64(readFileSync(0, 'utf8').trim()) : new Uint8Array(readFileSync(arg)))
  } catch (error) {
    result = { ok: false, doc: null, errors: [`not a Yjs update: ${error.message}`] }
  }
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
  process.exitCode = result.ok ? 0 : 1
} else {
  process.stderr.write('usage: node tests/collab_validate.mjs <update file> | - | --batch\n')
  process.exitCode = 2
}
