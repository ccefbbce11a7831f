"""A shared document as it stands: Tiptap's JSON, Markdown or plain text.

Read from the ``default`` fragment the way y-prosemirror reads it (research §2.1), so a
document written by Tiptap clients exports like one written by the AI peer: elements are
nodes, attributes their attrs (StarterKit's defaults filled in, as ``editor.getJSON()``
shows them), each XmlText's formatted runs text nodes with marks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pycrdt import Doc, XmlElement, XmlFragment, XmlText

from server.collab.markdown_blocks import LINK_DEFAULTS, MARK_ORDER
from server.collab.writer import FIELD

#: StarterKit's nodes and marks with attrs, and their defaults (``getSchema([StarterKit])``).
NODE_ATTRS: Mapping[str, Mapping[str, Any]] = {
    "heading": {"level": 1},
    "codeBlock": {"language": None},
    "orderedList": {"start": 1, "type": None},
}
MARK_ATTRS: Mapping[str, Mapping[str, Any]] = {"link": {"href": None, **LINK_DEFAULTS}}
#: StarterKit's nodes without attrs: any attribute on them is dropped, as ProseMirror does.
PLAIN_NODES = frozenset({"paragraph", "blockquote", "bulletList", "listItem", "hardBreak", "horizontalRule"})

JSONNode = dict[str, Any]


def document_json(doc: Doc[Any]) -> JSONNode:
    """The document as ``editor.getJSON()`` gives it: ``{"type": "doc", "content": [...]}``."""
    root: JSONNode = {"type": "doc"}
    content = _content(doc.get(FIELD, type=XmlFragment))
    if content:
        root["content"] = content
    return root


def document_text(doc: Doc[Any]) -> str:
    """The text of every textblock, separated by blank lines (a hard break is a newline)."""
    texts: list[str] = []
    _collect_text(document_json(doc), texts)
    return "\n\n".join(text for text in texts if text)


def document_markdown(doc: Doc[Any]) -> str:
    """The document as CommonMark (with GFM strikethrough); underline has no Markdown and
    reads as plain text."""
    text = _blocks_markdown(document_json(doc).get("content", []))
    return f"{text}\n" if text else ""


# --- Yjs to JSON ---------------------------------------------------------------------------


def _content(parent: XmlFragment | XmlElement) -> list[JSONNode]:
    out: list[JSONNode] = []
    for child in parent.children:
        if isinstance(child, XmlText):
            for insert, attrs in child.diff():
                if isinstance(insert, str) and insert:
                    _add_text(out, insert, _marks(attrs or {}))
        elif isinstance(child, XmlElement):
            out.append(_node(child))
    return out


def _node(element: XmlElement) -> JSONNode:
    name = element.tag or ""
    node: JSONNode = {"type": name}
    # pycrdt types the attributes view's ``__iter__`` as an Iterable, not an Iterator.
    attrs = {key: _number(value) for key, value in element.attributes.__iter__()}
    defaults = NODE_ATTRS.get(name)
    if defaults is not None:
        node["attrs"] = {key: attrs.get(key, default) for key, default in defaults.items()}
    elif attrs and name not in PLAIN_NODES:
        node["attrs"] = attrs
    content = _content(element)
    if content:
        node["content"] = content
    return node


def _add_text(out: list[JSONNode], text: str, marks: list[JSONNode]) -> None:
    """A text node, joined to the one before when their marks are the same (ProseMirror
    joins neighbours, also across two XmlTexts)."""
    previous = out[-1] if out else None
    if previous is not None and previous["type"] == "text" and previous.get("marks", []) == marks:
        previous["text"] += text
        return
    node: JSONNode = {"type": "text", "text": text}
    if marks:
        node["marks"] = marks
    out.append(node)


def _marks(attrs: Mapping[str, Any]) -> list[JSONNode]:
    """Format attributes as marks, in StarterKit's rank order. A key ``name--hash`` is an
    overlapping mark of type ``name`` (y-prosemirror's ``yattr2markname``)."""
    marks: list[JSONNode] = []
    for key, value in attrs.items():
        if value is None:
            continue
        name = key.split("--")[0]
        mark: JSONNode = {"type": name}
        given = {k: _number(v) for k, v in value.items()} if isinstance(value, Mapping) else {}
        defaults = MARK_ATTRS.get(name)
        if defaults is not None:
            mark["attrs"] = {k: given.get(k, default) for k, default in defaults.items()}
        elif given and name not in MARK_ORDER:
            mark["attrs"] = given
        marks.append(mark)
    rank = {name: index for index, name in enumerate(MARK_ORDER)}
    return sorted(marks, key=lambda mark: (rank.get(mark["type"], len(rank)), mark["type"]))


def _number(value: Any) -> Any:
    """Yjs numbers come back from pycrdt as floats; ``level: 2`` stays 2."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# --- JSON to text --------------------------------------------------------------------------


def _collect_text(node: JSONNode, out: list[str]) -> None:
    content = node.get("content", [])
    if node["type"] == "doc" or any(child["type"] not in ("text", "hardBreak") for child in content):
        for child in content:
            _collect_text(child, out)
        return
    out.append("".join(child.get("text", "\n") for child in content))


# --- JSON to Markdown ----------------------------------------------------------------------

_DELIMITERS = {"bold": "**", "italic": "*", "strike": "~~"}
_ESCAPE = re.compile(r"([\\*_`\[\]<~])|&(?=#?\w+;)")
_LINE_SYNTAX = re.compile(r"^([ \t]*)(?:(#{1,6}(?=\s|$)|>|[-+](?=\s|$)|[=-]+\s*$)|(\d{1,9})([.)])(?=\s|$))")


def _blocks_markdown(nodes: Sequence[JSONNode]) -> str:
    parts: list[str] = []
    previous: tuple[str, bool] | None = None
    for node in nodes:
        # Two lists of one kind in a row would read as one: the second uses the other
        # marker (``*`` for ``-``, ``)`` for ``.``), and so on.
        alternate = previous == (node["type"], False)
        part = _block_markdown(node, alternate)
        if part is not None:
            parts.append(part)
            previous = (node["type"], alternate)
    return "\n\n".join(parts)


def _block_markdown(node: JSONNode, alternate: bool = False) -> str | None:
    kind = node["type"]
    content: list[JSONNode] = node.get("content", [])
    attrs: Mapping[str, Any] = node.get("attrs", {})
    if kind == "heading":
        return "#" * int(attrs.get("level", 1)) + " " + _inline_markdown(content)
    if kind == "codeBlock":
        code = "".join(child.get("text", "") for child in content)
        fence = "`" * max([3, *(len(run) + 1 for run in re.findall(r"`+", code))])
        return f"{fence}{attrs.get('language') or ''}\n{code}\n{fence}"
    if kind == "horizontalRule":
        return "---"
    if kind == "blockquote":
        inner = _blocks_markdown(content)
        return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
    if kind in ("bulletList", "orderedList"):
        start = int(attrs.get("start", 1) or 1)
        items = []
        for index, item in enumerate(content):
            if kind == "bulletList":
                marker = "* " if alternate else "- "
            else:
                marker = f"{start + index}{')' if alternate else '.'} "
            inner = _blocks_markdown(item.get("content", []))
            lines = inner.split("\n") if inner else [""]
            indent = " " * len(marker)
            rest = [f"{indent}{line}" if line else "" for line in lines[1:]]
            items.append("\n".join([f"{marker}{lines[0]}".rstrip(), *rest]))
        loose = any(len(item.get("content", [])) > 1 for item in content)
        return ("\n\n" if loose else "\n").join(items)
    if any(child["type"] not in ("text", "hardBreak") for child in content):
        return _blocks_markdown(content) or None
    text = _inline_markdown(content)
    return text or None


def _inline_markdown(nodes: Sequence[JSONNode]) -> str:
    """Text nodes with their marks as Markdown: marks open and close like a stack, and the
    white space at a mark's edges goes outside it (``**bold **`` would not parse)."""
    out: list[str] = []
    open_marks: list[JSONNode] = []
    pending = ""
    for node in nodes:
        if node["type"] != "text":
            out.append(_close(open_marks, 0) + pending)
            open_marks, pending = [], ""
            if node["type"] == "hardBreak":
                out.append("\\\n")
            continue
        text: str = node["text"]
        # Code innermost: a code span is whole, closed right after its text.
        marks = [mark for mark in node.get("marks", []) if mark["type"] in ("link", "code", *_DELIMITERS)]
        marks.sort(key=lambda mark: mark["type"] == "code")
        keep = 0
        while keep < len(open_marks) and keep < len(marks) and open_marks[keep] == marks[keep]:
            keep += 1
        code = any(mark["type"] == "code" for mark in marks)
        body = text if code else text.strip()
        if not body:
            # White space alone opens nothing, but ends the marks it does not have.
            out.append(_close(open_marks, keep))
            open_marks = open_marks[:keep]
            pending += text
            continue
        lead = "" if code else text[: len(text) - len(text.lstrip())]
        trail = "" if code else text[len(text.rstrip()) :]
        out.append(_close(open_marks, keep) + pending + lead)
        for mark in marks[keep:]:
            out.append(_opener(mark))
        open_marks = marks
        out.append(_code_span(body) if code else _escape(body))
        if code:
            # A code span is whole: close it now, so that the next node reopens around it.
            out.append(_close(open_marks, len(open_marks) - 1))
            open_marks = open_marks[:-1]
        pending = trail
    out.append(_close(open_marks, 0))
    return _escape_line_start("".join(out))


def _close(open_marks: Sequence[JSONNode], keep: int) -> str:
    return "".join(_closer(mark) for mark in reversed(open_marks[keep:]))


def _opener(mark: JSONNode) -> str:
    if mark["type"] == "link":
        return "["
    return _DELIMITERS.get(mark["type"], "")


def _closer(mark: JSONNode) -> str:
    if mark["type"] != "link":
        return _DELIMITERS.get(mark["type"], "")
    attrs = mark.get("attrs", {})
    href = str(attrs.get("href") or "")
    if re.search(r"[\s()<>]", href):
        href = f"<{href}>"
    title = attrs.get("title")
    quoted = ' "' + str(title).replace('"', '\\"') + '"' if title else ""
    return f"]({href}{quoted})"


def _code_span(code: str) -> str:
    fence = "`" * (max((len(run) for run in re.findall(r"`+", code)), default=0) + 1)
    padded = code.startswith(("`", " ")) or code.endswith(("`", " "))
    space = " " if padded and code.strip() else ""
    return f"{fence}{space}{code}{space}{fence}"


def _escape(text: str) -> str:
    return _ESCAPE.sub(lambda m: "\\" + m.group(0), text)


def _escape_line_start(text: str) -> str:
    """Text that would read as block syntax at the start of a line is escaped there."""
    lines = text.split("\n")
    return "\n".join(_LINE_SYNTAX.sub(_escape_syntax, line, count=1) for line in lines)


def _escape_syntax(match: re.Match[str]) -> str:
    lead, syntax, number, delimiter = match.groups()
    if number is not None:
        return f"{lead}{number}\\{delimiter}"
    return f"{lead}\\{syntax}"
