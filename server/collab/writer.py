"""One session's Markdown answer written into a shared document, by the AI peer.

The answer goes into the ``default`` XmlFragment in exactly the shapes y-prosemirror gives
StarterKit's nodes and marks (``research/collab.md`` §1.1), a batch per transaction, so
every collaborator's editor accepts the document at every moment. The writer appends to
its own last text run and creates whole blocks; it rewrites only its own open block, and
only when the Markdown read differently once more of it arrived (a setext heading).

What the writer has done lives in the document itself, in the root map ``aiWriters`` under
the session id, changed in the same transaction as the text: a process that takes a
session over opens the writer there and continues where the last one stopped, with no
duplicate and no gap. Blocks are found again by their Yjs item ids, read through sticky
indexes (pycrdt cannot make sticky indexes on XML types, research §1.3).

``aiWriters[sessionId]`` is a Y.Map: ``start`` (where in the answer the block still growing
starts), ``source`` (a Y.Text: the answer from ``start`` to what is written, so a successor
reads that block's Markdown again), ``blocks`` (a Y.Array of ``[client, clock]``: the
top-level blocks the writer created, in order, the last one growing unless ``done``),
``trailing`` (the empty paragraph it added after a last block that is not one, or null),
``relocated`` and ``done``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pycrdt import Array, Decoder, Doc, Map, StickyIndex, Text, XmlElement, XmlFragment, XmlText

from server.collab.markdown_blocks import (
    CONTAINERS,
    TEXTBLOCKS,
    Block,
    Mark,
    Run,
    Settled,
    block_extends,
    parse_blocks,
    segments,
    settle,
)

#: The fragment Tiptap's Collaboration extension binds (its ``field`` option's default).
FIELD = "default"
#: The root map that holds each session's writer state.
WRITERS = "aiWriters"
#: The origin of the writer's transactions.
AI_ORIGIN = "ai"

# Yjs relative positions (lib0 encoding): what a client's anchor must look like before
# pycrdt 0.14.13 sees it, because ``StickyIndex.decode`` panics on bytes it cannot read.
_ITEM, _ROOT, _TYPE = 0, 1, 2
_MAX_CLIENT = 2**53
_MAX_CLOCK = 2**32
#: How much of the text it wrote last a writer checks to know its XmlText again.
_TAIL = 32


class AnchorError(ValueError):
    """The anchor is not a Yjs relative position."""


def decode_anchor(raw: bytes) -> StickyIndex:
    """A client's ``Y.encodeRelativePosition(...)`` bytes as a pycrdt sticky index.

    The layout is checked first (kind, item id or root name, assoc), because pycrdt panics
    on bytes it cannot decode and a panic is not an exception a server can answer with 400.
    """
    try:
        decoder = Decoder(raw)
        kind = decoder.read_var_uint()
        if kind in (_ITEM, _TYPE):
            if decoder.read_var_uint() >= _MAX_CLIENT or decoder.read_var_uint() >= _MAX_CLOCK:
                raise AnchorError("the anchor's item id is out of range")
        elif kind == _ROOT:
            if decoder.length <= 0:
                raise AnchorError("the anchor's type name is missing")
            decoder.read_var_string()
        else:
            raise AnchorError("the anchor is not a Yjs relative position")
        if decoder.length > 0 and decoder.read_var_uint() >= 128:
            raise AnchorError("the anchor's assoc is out of range")
        if decoder.length != 0:
            raise AnchorError("the anchor has bytes after its end")
    except (RuntimeError, IndexError, UnicodeDecodeError) as exc:
        raise AnchorError("the anchor is not a Yjs relative position") from exc
    try:
        return StickyIndex.decode(raw)
    except BaseException as exc:
        # pyo3's PanicException derives from BaseException; nothing else is swallowed.
        if type(exc).__name__ == "PanicException":
            raise AnchorError("the anchor is not a Yjs relative position") from exc
        raise


@dataclass(frozen=True, slots=True)
class _ItemId:
    """A Yjs item id: the client that created an item and its clock."""

    client: int
    clock: int


@dataclass(slots=True)
class _Open:
    """The block still growing: what it shows, its id, and the path to its end.

    ``chain`` is its element and then, down the last children, each element that new
    content goes into; ``text`` is the XmlText at the end of the deepest textblock. An
    empty chain means the path is not known (a resumed writer that could not find it), and
    the block is rewritten at the next flush.
    """

    block: Block
    id: _ItemId
    chain: list[XmlElement]
    text: XmlText | None


class AnswerWriter:
    """Writes one session's answer into a document, batch by batch.

    ``feed`` the answer's text as it arrives, ``flush()`` every 50-100 ms (one transaction
    each), ``flush(final=True)`` once at the end. ``written`` is how many characters of the
    answer are in the document; a writer opened on another process after a takeover is fed
    the answer from there on.
    """

    def __init__(self, doc: Doc[Any], session_id: str, anchor: StickyIndex | None) -> None:
        self._doc = doc
        self._session_id = session_id
        self._anchor = anchor
        self._fragment = doc.get(FIELD, type=XmlFragment)
        self._writers = doc.get(WRITERS, type=Map)
        self._start = 0
        self._source = ""
        self._pending = ""
        self._blocks: list[_ItemId] = []
        self._trailing: _ItemId | None = None
        self._open: _Open | None = None
        self._relocated = 0
        self._done = False

    @classmethod
    def open(cls, doc: Doc[Any], session_id: str, anchor: bytes | None = None) -> AnswerWriter:
        """A writer for ``session_id``'s answer: a new one, or the one whose state the
        document holds (a takeover), resumed where it stopped.

        ``anchor`` is the client's encoded Yjs relative position in the ``default``
        fragment where the answer's blocks go (the end when ``None``); it is resolved when
        the first block is written, so blocks inserted above it in between do not matter.
        Raises :class:`AnchorError` when it does not decode.
        """
        writer = cls(doc, session_id, decode_anchor(anchor) if anchor is not None else None)
        state = writer._writers.get(session_id)
        if isinstance(state, Map):
            writer._resume(state)
        return writer

    @property
    def written(self) -> int:
        """How many characters of the answer are in the document (Python ``str`` indices)."""
        return self._start + len(self._source)

    @property
    def relocated(self) -> int:
        """How many times the block being written was written again because a
        collaborator deleted it (it goes on after the answer's last block still there) or
        part of it (a list item, its text: it is written again in place)."""
        return self._relocated

    @property
    def done(self) -> bool:
        """Whether the final flush happened (or the answer was removed)."""
        return self._done

    def feed(self, text: str) -> None:
        """More of the answer; nothing reaches the document before the next flush."""
        if not text:
            return
        if self._done:
            raise RuntimeError("the answer is already complete")
        self._pending += text

    def flush(self, final: bool = False) -> bool:
        """Writes what is settled (everything, when ``final``) in one transaction; returns
        whether the document changed."""
        if self._done:
            return False
        text = self._source + self._pending
        if final:
            settled = Settled(len(text), parse_blocks(text))
        else:
            settled = settle(text, len(self._source))
            if settled.length == len(self._source):
                return False
        with self._doc.transaction(origin=AI_ORIGIN):
            created = self._write(settled)
            if final:
                start, source = self._start + settled.length, ""
            elif len(settled.blocks) > 1 or not settled.blocks:
                offset = settled.blocks[-1].start if settled.blocks else settled.length
                start, source = self._start + offset, text[offset : settled.length]
            else:
                start, source = self._start, text[: settled.length]
            self._save(start, source, created, final)
        self._start, self._source, self._pending = start, source, text[settled.length :]
        self._done = final
        return True

    def remove(self) -> int:
        """Deletes the answer's blocks still in the document (a rejected answer) and the
        writer's state, in one transaction; returns how many blocks went."""
        with self._doc.transaction(origin=AI_ORIGIN):
            indexes = {index for index in map(self._locate, self._blocks) if index is not None}
            trailing = self._locate(self._trailing) if self._trailing is not None else None
            if trailing is not None and len(self._child(trailing).children) == 0:
                indexes.add(trailing)
            for index in sorted(indexes, reverse=True):
                del self._fragment.children[index]
            if self._session_id in self._writers:
                del self._writers[self._session_id]
        self._open, self._done, self._pending = None, True, ""
        return len(indexes)

    # --- writing ---------------------------------------------------------------------

    def _write(self, settled: Settled) -> list[_ItemId]:
        """The settled blocks into the document; returns the ids of the blocks created."""
        created: list[_ItemId] = []
        blocks = [source.block for source in settled.blocks]
        if not blocks:
            return created
        current = self._open
        index: int | None = None
        if current is not None:
            index = self._locate(current.id)
            if index is None:
                # A collaborator deleted it: the answer goes on after its last block there.
                self._relocated += 1
                current = None
            elif not self._chain_alive(current):
                found = _find_chain(self._child(index), current.block)
                if found is not None:
                    # An editor rebuilt part of it (y-prosemirror recreates an XmlText when
                    # it re-normalizes a paragraph): go on at its end as it is now.
                    current.chain, current.text = found
                else:
                    # A collaborator deleted part of it (a list item, its text): write it
                    # again in place.
                    self._relocated += 1
                    del self._fragment.children[index]
                    current = self._create(index, blocks[0], created)
        if current is None:
            index = self._next_index()
            current = self._create(index, blocks[0], created)
        elif current.block != blocks[0]:
            if block_extends(current.block, blocks[0]):
                self._grow(current, 0, current.block, blocks[0])
                current.block = blocks[0]
            else:
                assert index is not None
                del self._fragment.children[index]
                current = self._create(index, blocks[0], created)
        assert index is not None
        for block in blocks[1:]:
            index += 1
            current = self._create(index, block, created)
        self._open = current
        if index == len(self._fragment.children) - 1 and current.block.type != "paragraph":
            # Rule 5: a document that ends in anything else gets a trailing paragraph from
            # every open editor's TrailingNode plugin, one each, unless it has one already.
            self._trailing = self._next_id()
            self._fragment.children.append(XmlElement("paragraph"))
        return created

    def _create(self, index: int, block: Block, created: list[_ItemId]) -> _Open:
        """A whole block (with its required children) at ``index`` of the fragment.

        A paragraph that would go right before the trailing paragraph the writer added
        (still empty) goes into it instead: the answer then ends the same however it was
        batched, with a trailing paragraph only after a last block that is not one.
        """
        trailing = self._trailing
        if block.type == "paragraph" and trailing is not None and self._locate(trailing) == index:
            element = self._child(index)
            if len(element.children) == 0:
                self._trailing = None
                created.append(trailing)
                return _Open(block, trailing, [element], _fill(element, block))
        item = self._next_id()
        element = self._fragment.children.insert(index, XmlElement(block.type))
        chain, text = _build(element, block)
        created.append(item)
        return _Open(block, item, chain, text)

    def _grow(self, current: _Open, level: int, old: Block, new: Block) -> None:
        """Appends what ``new`` has beyond ``old`` (see ``block_extends``) at the end of the
        open block, along its chain."""
        element = current.chain[level]
        if old.type in TEXTBLOCKS:
            _grow_text(current, element, old, new)
            return
        count = len(old.children)
        if old.children[-1] != new.children[count - 1]:
            self._grow(current, level + 1, old.children[-1], new.children[count - 1])
        for child in new.children[count:]:
            chain, text = _build(element.children.append(XmlElement(child.type)), child)
            current.chain[level + 1 :] = chain
            current.text = text

    def _next_index(self) -> int:
        """Where a new block goes: after the answer's last block still in the document,
        else at the anchor, else at the end."""
        for item in reversed(self._blocks):
            index = self._locate(item)
            if index is not None:
                return index + 1
        size = len(self._fragment.children)
        if self._anchor is not None:
            index = self._anchor_index(self._anchor)
            if index is not None:
                return min(max(index, 0), size)
        return size

    def _anchor_index(self, anchor: StickyIndex) -> int | None:
        """The anchor's index in the fragment, or ``None`` when it points at an item this
        document has not seen (yet) or at another type."""
        scope = anchor.to_json()
        if "item" in scope:
            item = scope["item"]
            if not self._known(_ItemId(int(item["client"]), int(item["clock"]))):
                return None
        elif scope.get("tname") != FIELD:
            return None
        with self._doc.transaction() as txn:
            return anchor.get_index(txn)

    # --- finding blocks again --------------------------------------------------------

    def _locate(self, item: _ItemId) -> int | None:
        """The index in the fragment of the top-level block created as ``item``, or
        ``None`` when it was deleted.

        A sticky index after an item resolves one past the one before it only while the
        item is there; a deleted item resolves both to where it was.
        """
        if not self._known(item):
            return None
        position = {"client": item.client, "clock": item.clock}
        with self._doc.transaction() as txn:
            after = StickyIndex.from_json({"item": position, "assoc": 0}).get_index(txn)
            before = StickyIndex.from_json({"item": position, "assoc": -1}).get_index(txn)
        return after if before == after + 1 else None

    def _known(self, item: _ItemId) -> bool:
        """Whether the document holds ``item`` (pycrdt panics on a sticky index to an item
        it has not seen)."""
        return item.clock < state_vector(self._doc).get(item.client, 0)

    def _next_id(self) -> _ItemId:
        """The id the next item this document creates gets: its client and next clock."""
        client = self._doc.client_id
        return _ItemId(client, state_vector(self._doc).get(client, 0))

    def _child(self, index: int) -> XmlElement:
        child = self._fragment.children[index]
        assert isinstance(child, XmlElement)
        return child

    def _chain_alive(self, current: _Open) -> bool:
        """Whether every element of the open block's chain, and its last text, is still in
        its parent (a collaborator may have deleted a list item or the text)."""
        if not current.chain:
            return False
        for parent, child in zip(current.chain, current.chain[1:], strict=False):
            if child not in parent.children:
                return False
        return current.text is None or current.text in current.chain[-1].children

    # --- the state in the document ---------------------------------------------------

    def _save(self, start: int, source: str, created: Sequence[_ItemId], final: bool) -> None:
        """Records the writer's progress in ``aiWriters`` (same transaction as the text)."""
        state = self._writers.get(self._session_id)
        if not isinstance(state, Map):
            state = Map({"start": 0, "source": Text(), "blocks": Array()})
            self._writers[self._session_id] = state
        if start != self._start:
            state["start"] = start
            state["source"] = Text(source)
        elif source != self._source:
            text = state["source"]
            text.insert(len(text), source[len(self._source) :])
        blocks = state["blocks"]
        for item in created:
            blocks.append([item.client, item.clock])
        self._blocks.extend(created)
        trailing = [self._trailing.client, self._trailing.clock] if self._trailing is not None else None
        if state.get("trailing") != trailing:
            state["trailing"] = trailing
        if self._relocated != state.get("relocated", 0):
            state["relocated"] = self._relocated
        if final:
            state["done"] = True

    def _resume(self, state: Map[Any]) -> None:
        """Picks up the state a writer left in the document."""
        self._start = int(state["start"])
        self._source = str(state["source"])
        self._blocks = [_ItemId(int(client), int(clock)) for client, clock in state["blocks"]]
        trailing = state.get("trailing")
        if trailing is not None:
            self._trailing = _ItemId(int(trailing[0]), int(trailing[1]))
        self._relocated = int(state.get("relocated", 0))
        self._done = bool(state.get("done", False))
        shown = parse_blocks(self._source)
        if self._done or not shown or not self._blocks:
            return
        block, item = shown[-1].block, self._blocks[-1]
        index = self._locate(item)
        if index is None:
            self._open = _Open(block, item, [], None)
            return
        found = _find_chain(self._child(index), block)
        chain, text = found if found is not None else ([], None)
        self._open = _Open(block, item, chain, text)


# --- Yjs shapes ----------------------------------------------------------------------------

#: A block's element and its last descendants, and the XmlText new text goes into.
_Chain = tuple[list[XmlElement], XmlText | None]


def _build(element: XmlElement, block: Block) -> _Chain:
    """Fills a new element with ``block``'s attrs and whole content; returns its chain (the
    element and its last descendants) and the XmlText new text goes into."""
    for key, value in block.attrs.items():
        if value is not None:
            element.attributes[key] = value
    if block.type in TEXTBLOCKS:
        return [element], _fill(element, block)
    chain: list[XmlElement] = []
    text = None
    for child in block.children:
        chain, text = _build(element.children.append(XmlElement(child.type)), child)
    return [element, *chain], text


def _fill(element: XmlElement, block: Block) -> XmlText | None:
    """A textblock's runs and hard breaks into its (empty) element; returns the last
    XmlText, or ``None`` when it ends with a hard break or is empty."""
    text: XmlText | None = None
    for segment in segments(block.runs):
        if segment is None:
            element.children.append(XmlElement("hardBreak"))
            text = None
        else:
            text = element.children.append(XmlText())
            _append(text, segment)
    return text


def _grow_text(current: _Open, element: XmlElement, old: Block, new: Block) -> None:
    """Appends to a textblock: the rest of its last run, then runs and hard breaks."""
    before, after = segments(old.runs), segments(new.runs)
    count = len(before)
    last = before[-1] if before else None
    if last is not None:
        grown = after[count - 1]
        assert grown is not None
        text = current.text if current.text is not None else _text_at_end(element)
        tail = grown[len(last) - 1]
        _append(text, (Run(tail.text[len(last[-1].text) :], tail.marks), *grown[len(last) :]))
        current.text = text
    for segment in after[count:]:
        if segment is None:
            element.children.append(XmlElement("hardBreak"))
            current.text = None
        else:
            current.text = _text_at_end(element)
            _append(current.text, segment)


def _text_at_end(element: XmlElement) -> XmlText:
    """The XmlText at the end of a textblock: the last child when it is one (never a
    second XmlText beside one, rule 3), else a new one."""
    children = list(element.children)
    if children and isinstance(children[-1], XmlText):
        return children[-1]
    return element.children.append(XmlText())


def _append(text: XmlText, runs: Sequence[Run]) -> None:
    """Runs at the end of ``text``, each with explicit attrs (rule 4: pycrdt does not carry
    the left neighbour's formatting, and ``{}`` is unformatted)."""
    for run in runs:
        if run.text:
            text.insert(len(text), run.text, _attrs(run.marks))


def _attrs(marks: Sequence[Mark]) -> dict[str, Any]:
    """Marks as Yjs format attributes: the mark's name to its attrs object (``{}``)."""
    return {mark.type: dict(mark.attrs) if mark.attrs else {} for mark in marks}


def _find_chain(element: XmlElement, block: Block) -> _Chain | None:
    """The chain of a block as the document has it now (written by another process, or
    rebuilt by an editor): down the last children, each of the type ``block`` says, to an
    XmlText that holds the text the writer last wrote (someone may have typed after it);
    ``None`` when a collaborator changed it so that the writer cannot tell where to go on."""
    chain = [element]
    node = element
    while block.type in CONTAINERS:
        children = list(node.children)
        block = block.children[-1]
        last = children[-1] if children else None
        if not isinstance(last, XmlElement) or last.tag != block.type:
            return None
        chain.append(last)
        node = last
    if block.type not in TEXTBLOCKS:
        return chain, None
    parts = segments(block.runs)
    if not parts or parts[-1] is None:
        return chain, None
    children = list(node.children)
    last_text = children[-1] if children else None
    tail = "".join(run.text for run in parts[-1])[-_TAIL:]
    if not isinstance(last_text, XmlText) or tail not in _plain(last_text):
        return None
    return chain, last_text


def _plain(text: XmlText) -> str:
    """An XmlText's characters, without its formatting."""
    return "".join(chunk for chunk, _ in text.diff() if isinstance(chunk, str))


def state_vector(doc: Doc[Any]) -> Mapping[int, int]:
    """The document's state vector: each client's next clock."""
    decoder = Decoder(doc.get_state())
    count = decoder.read_var_uint()
    return {decoder.read_var_uint(): decoder.read_var_uint() for _ in range(count)}
