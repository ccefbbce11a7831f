"""Markdown as Tiptap StarterKit blocks: what the AI peer writes into a shared document.

markdown-it-py parses (CommonMark, GFM strikethrough and tables); this module only maps its
syntax tree to StarterKit's node and mark names and attrs (``research/collab.md`` §1.1), so
that the writer never has to think in Markdown. Whatever StarterKit has no node for (tables,
images, raw HTML) becomes text in a paragraph, never an unknown node: a client deletes what
its schema cannot build.

:func:`settle` answers the streaming question: how much of an answer that is still arriving
renders the same whatever comes next, so the writer appends and rarely rewrites.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

#: Nodes whose content is inline (text runs and hard breaks).
TEXTBLOCKS = frozenset({"paragraph", "heading", "codeBlock"})
#: Nodes whose content is blocks; none of them may be empty.
CONTAINERS = frozenset({"bulletList", "orderedList", "listItem", "blockquote"})
#: StarterKit's marks in ProseMirror's rank order (the order ``getJSON()`` lists them in).
MARK_ORDER = ("link", "bold", "code", "italic", "strike", "underline")
#: The attrs StarterKit's Link gives every link: with them the Yjs tree is exactly the one
#: y-prosemirror builds, nulls included (research §1.1).
LINK_DEFAULTS: Mapping[str, Any] = {
    "target": "_blank",
    "rel": "noopener noreferrer nofollow",
    "class": None,
    "title": None,
}

_md = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])


@dataclass(frozen=True, slots=True)
class Mark:
    """A mark on a run: ``bold``, ``italic``, ``strike``, ``code`` or ``link`` (with attrs)."""

    type: str
    attrs: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Run:
    """Text with one set of marks, in :data:`MARK_ORDER`."""

    text: str
    marks: tuple[Mark, ...] = ()


@dataclass(frozen=True, slots=True)
class HardBreak:
    """A line break inside a textblock (StarterKit's ``hardBreak`` node)."""


Inline = Run | HardBreak


@dataclass(frozen=True, slots=True)
class Block:
    """A StarterKit block node: a textblock holds ``runs``, a container ``children``."""

    type: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    runs: tuple[Inline, ...] = ()
    children: tuple[Block, ...] = ()


@dataclass(frozen=True, slots=True)
class SourceBlock:
    """A top-level block and where its source starts in the parsed text."""

    block: Block
    start: int


@dataclass(frozen=True, slots=True)
class Settled:
    """The part of a streaming answer that is safe to show, and its blocks."""

    length: int
    blocks: tuple[SourceBlock, ...]


def render(text: str) -> tuple[Block, ...]:
    """The whole of ``text`` as top-level blocks."""
    return tuple(source.block for source in parse_blocks(text))


def parse_blocks(text: str) -> tuple[SourceBlock, ...]:
    """The top-level blocks of ``text``, each with the offset of its first line."""
    return _parse(text)[0]


def segments(runs: Sequence[Inline]) -> list[tuple[Run, ...] | None]:
    """A textblock's content as its Yjs children: one tuple of runs per ``XmlText``, ``None``
    for each ``hardBreak`` element between them (one XmlText per run of text, rule 3)."""
    out: list[tuple[Run, ...] | None] = []
    current: list[Run] = []
    for item in runs:
        if isinstance(item, HardBreak):
            if current:
                out.append(tuple(current))
                current = []
            out.append(None)
        else:
            current.append(item)
    if current:
        out.append(tuple(current))
    return out


def runs_extend(before: Sequence[Inline], after: Sequence[Inline]) -> bool:
    """Whether ``after`` is ``before`` with content appended at its end (same marks on what
    was there), so that a writer can append instead of rewriting."""
    old, new = segments(before), segments(after)
    if len(new) < len(old):
        return False
    if not old:
        return True
    if old[:-1] != new[: len(old) - 1]:
        return False
    last, other = old[-1], new[len(old) - 1]
    if last is None or other is None:
        return last is other
    return _text_extends(last, other)


def _text_extends(old: tuple[Run, ...], new: tuple[Run, ...]) -> bool:
    if len(new) < len(old) or old[:-1] != new[: len(old) - 1]:
        return False
    last, other = old[-1], new[len(old) - 1]
    return last.marks == other.marks and other.text.startswith(last.text)


def block_extends(before: Block, after: Block) -> bool:
    """Whether ``after`` is ``before`` grown only at its end: more text in its last textblock,
    more children after its last child; anything else is a rewrite."""
    if before.type != after.type or dict(before.attrs) != dict(after.attrs):
        return False
    if before.type in TEXTBLOCKS:
        return runs_extend(before.runs, after.runs)
    if before.type in CONTAINERS:
        count = len(before.children)
        if count == 0 or len(after.children) < count:
            return False
        return before.children[:-1] == after.children[: count - 1] and block_extends(
            before.children[-1], after.children[count - 1]
        )
    return before == after


# --- streaming ----------------------------------------------------------------------------

#: Block syntax at the start of a line: quote markers, list markers, a heading's #s.
_LINE_PREFIX = re.compile(r"^(?:[ \t]*(?:>|[-*+](?=[ \t])|\d{1,9}[.)](?=[ \t]|$)|#{1,6}(?=[ \t]|$)))*[ \t]*")
_WORD = re.compile(r"[^\W_]")
_DIGITS = re.compile(r"\d+")
_FENCE = re.compile(r"```|~~~")
#: Characters that may open an inline construct that a later character closes.
_OPENERS = "*_~`[]<&\\"
#: For each opener left literal, continuations that would close it if it were pending.
_CLOSERS: Mapping[str, tuple[str, ...]] = {
    "*": ("x*", "x**"),
    "_": ("x_", "x__"),
    "~": ("x~~", "~x~~"),
    "`": ("x`", "x``", "x```"),
    "[": ("x](u)", "](u)", ")"),
    "]": ("(u)", ")"),
    "<": ("x>",),
}
_OPEN_ENTITY = re.compile(r"&#?[0-9A-Za-z]*$")


def settle(text: str, floor: int = 0) -> Settled:
    """The longest prefix of ``text`` (at least ``floor`` characters) whose rendering later
    text can only extend, with its blocks.

    Complete lines always count. Of the line still arriving, nothing counts until it holds
    a word (``-``, ``##``, a fence or a rule could still become anything), and a construct
    it leaves open (``**bo``, `` `co``, ``[link``, ``&amp``) is held back from its opening
    character: markdown-it shows unclosed syntax as literal text, and showing it would
    mean rewriting the block when it closes. A construct opened on an earlier line of the
    same paragraph cannot be held back; the writer then rewrites that block once.
    """
    line_start = text.rfind("\n") + 1
    if line_start == len(text) or len(text) <= floor:
        return _settled(text, len(text))
    line = text[line_start:]
    if _FENCE.search(line):
        return _settled(text, max(floor, line_start))
    candidates = [len(text)] + [line_start + i for i in range(len(line) - 1, -1, -1) if line[i] in _OPENERS]
    for cut in candidates:
        if cut <= max(floor, line_start):
            break
        if not _names_block(text[line_start:cut]):
            continue
        blocks, inline = _parse(text[:cut])
        if _stable(inline, text[:cut]):
            return Settled(cut, blocks)
    return _settled(text, max(floor, line_start))


def _names_block(line: str) -> bool:
    """Whether a partial line is past its block syntax: it holds a word that is not a
    number (``1`` may still become ``1.``)."""
    prefix = _LINE_PREFIX.match(line)
    body = line[prefix.end() :] if prefix else line
    return bool(_WORD.search(body)) and not _DIGITS.fullmatch(body.rstrip())


def _settled(text: str, length: int) -> Settled:
    return Settled(length, _parse(text[:length])[0])


def _stable(inline: SyntaxTreeNode | None, text: str) -> bool:
    """Whether the last textblock's inline source, if it reaches the end of ``text``, has
    no opener that some continuation would close."""
    if inline is None or inline.map is None or inline.map[1] < text.count("\n") + 1:
        return True
    literal = "".join(node.content for node in inline.walk() if node.type == "text")
    source = inline.content
    if source.endswith("\\") or _OPEN_ENTITY.search(source):
        return False
    present = {ch for ch in literal if ch in _CLOSERS}
    if not present:
        return True
    before = _inline_runs(inline.children)
    for opener in present:
        for closer in _CLOSERS[opener]:
            after = _inline_runs(SyntaxTreeNode(_md.parseInline(source + closer)).children[0].children)
            if not runs_extend(before, after):
                return False
    return True


# --- Markdown to blocks ---------------------------------------------------------------------


def _parse(text: str) -> tuple[tuple[SourceBlock, ...], SyntaxTreeNode | None]:
    """The blocks of ``text`` and the last inline node (the one still growing)."""
    tree = SyntaxTreeNode(_md.parse(text))
    starts = _line_starts(text)
    out: list[SourceBlock] = []
    for node in tree.children:
        line = node.map[0] if node.map is not None else 0
        start = starts[line] if line < len(starts) else len(text)
        out.extend(SourceBlock(block, start) for block in _blocks(node))
    last_inline: SyntaxTreeNode | None = None
    for node in tree.walk():
        if node.type == "inline":
            last_inline = node
    return tuple(out), last_inline


def _line_starts(text: str) -> list[int]:
    """Where each line starts, with markdown-it's idea of a line break (``\\r\\n``, ``\\r``,
    ``\\n``)."""
    return [0] + [match.end() for match in re.finditer(r"\r\n?|\n", text)]


def _blocks(node: SyntaxTreeNode) -> list[Block]:
    kind = node.type
    if kind == "paragraph":
        return [Block("paragraph", runs=_inline_of(node))]
    if kind == "heading":
        return [Block("heading", {"level": int(node.tag[1:])}, runs=_inline_of(node))]
    if kind in ("fence", "code_block"):
        language = node.info.split()[0] if kind == "fence" and node.info.strip() else None
        code = node.content[:-1] if node.content.endswith("\n") else node.content
        attrs = {"language": language} if language else {}
        return [Block("codeBlock", attrs, runs=(Run(code),) if code else ())]
    if kind == "hr":
        return [Block("horizontalRule")]
    if kind == "bullet_list":
        return [Block("bulletList", children=tuple(_list_item(item) for item in node.children))]
    if kind == "ordered_list":
        start = int(str(node.attrs.get("start", 1)))
        return [Block("orderedList", {"start": start}, children=tuple(_list_item(i) for i in node.children))]
    if kind == "blockquote":
        children = tuple(block for child in node.children for block in _blocks(child))
        return [Block("blockquote", children=children or (Block("paragraph"),))]
    if kind == "table":
        return [_table(node)]
    return [Block("paragraph", runs=_normalize([Run(node.content.strip())]))]


def _list_item(node: SyntaxTreeNode) -> Block:
    """A listItem: StarterKit's content is ``paragraph block*``, so an item that starts
    with something else (``- # title``, an empty ``-``) gets an empty paragraph first."""
    children = [block for child in node.children for block in _blocks(child)]
    if not children or children[0].type != "paragraph":
        children.insert(0, Block("paragraph"))
    return Block("listItem", children=tuple(children))


def _table(node: SyntaxTreeNode) -> Block:
    """A table as one paragraph: a line per row, its cells separated by `` | ``. One block,
    as one top-level Markdown node must be, for the writer's sake."""
    runs: list[Inline] = []
    for row in (child for child in node.walk() if child.type == "tr"):
        if runs:
            runs.append(HardBreak())
        for index, cell in enumerate(row.children):
            if index:
                runs.append(Run(" | "))
            runs.extend(_inline_of(cell))
    return Block("paragraph", runs=_normalize(runs))


def _inline_of(node: SyntaxTreeNode) -> tuple[Inline, ...]:
    inline = node.children[0] if node.children else None
    return _inline_runs(inline.children) if inline is not None else ()


def _inline_runs(nodes: Iterable[SyntaxTreeNode]) -> tuple[Inline, ...]:
    out: list[Inline] = []
    _collect(nodes, (), out)
    return _normalize(out)


def _collect(nodes: Iterable[SyntaxTreeNode], marks: tuple[Mark, ...], out: list[Inline]) -> None:
    for node in nodes:
        kind = node.type
        if kind in ("text", "html_inline"):
            out.append(Run(node.content, marks))
        elif kind == "softbreak":
            out.append(Run(" ", marks))
        elif kind == "hardbreak":
            out.append(HardBreak())
        elif kind == "code_inline":
            # StarterKit's code mark excludes every other mark.
            out.append(Run(node.content, (Mark("code"),)))
        elif kind in ("em", "strong", "s"):
            name = {"em": "italic", "strong": "bold", "s": "strike"}[kind]
            _collect(node.children, _with_mark(marks, Mark(name)), out)
        elif kind == "link":
            title = node.attrs.get("title")
            attrs = {"href": str(node.attrs["href"]), **LINK_DEFAULTS, "title": str(title) if title else None}
            _collect(node.children, _with_mark(marks, Mark("link", attrs)), out)
        else:
            # An image reads as its alt text; anything else as whatever text it holds.
            if node.children:
                _collect(node.children, marks, out)
            else:
                out.append(Run(node.content, marks))


def _with_mark(marks: tuple[Mark, ...], mark: Mark) -> tuple[Mark, ...]:
    if any(existing.type == "code" for existing in marks):
        return marks
    kept = [existing for existing in marks if existing.type != mark.type]
    return tuple(sorted([*kept, mark], key=lambda m: MARK_ORDER.index(m.type)))


def _normalize(items: Iterable[Inline]) -> tuple[Inline, ...]:
    """Runs as ProseMirror keeps them: no empty text, neighbours with the same marks joined."""
    out: list[Inline] = []
    for item in items:
        if isinstance(item, Run):
            if not item.text:
                continue
            previous = out[-1] if out else None
            if isinstance(previous, Run) and previous.marks == item.marks:
                out[-1] = Run(previous.text + item.text, item.marks)
                continue
        out.append(item)
    return tuple(out)
