/**
 * jsdom has no layout: ProseMirror asks for client rects when it scrolls or maps
 * coordinates, so give ranges and elements empty ones.
 */
const emptyRects = (): DOMRectList => {
  const list: DOMRect[] = []
  return Object.assign(list, { item: (index: number) => list[index] ?? null }) as unknown as DOMRectList
}
const emptyRect = (): DOMRect => new DOMRect(0, 0, 0, 0)

if (typeof Range !== 'undefined') {
  Range.prototype.getClientRects = emptyRects
  Range.prototype.getBoundingClientRect = emptyRect
}
if (typeof document !== 'undefined') {
  document.elementFromPoint = () => null
}

// React's act() warns unless the environment says it supports it.
Object.assign(globalThis, { IS_REACT_ACT_ENVIRONMENT: true })
