"""The AI peer's writer (server/collab/writer.py, markdown_blocks.py).

Answers are streamed token by token into a pycrdt document with flushes in between, and
after every flush the document is read by real yjs and @tiptap/y-tiptap with StarterKit's
schema (tests/collab_validate.mjs), as every collaborator's editor reads it. The final
document is compared with what Tiptap itself makes of the same Markdown
(``@tiptap/markdown``), where the two read Markdown alike, and otherwise with the block
model rendered in one go; collaborators are second pycrdt documents (and a real yjs
client) exchanging updates with the writer's; a takeover is the writer's document handed
to a fresh one.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, XmlElement, XmlFragment, XmlText

from providers.demo import demo_tokens
from server.collab.export import document_json, document_text
from server.collab.markdown_blocks import (
    CONTAINERS,
    MARK_ORDER,
    Block,
    HardBreak,
    Run,
    render,
    settle,
)
from server.collab.writer import WRITERS, AnchorError, AnswerWriter

ROOT = Path(__file__).resolve().parent.parent
STARTER_KIT_NODES = {
    "paragraph",
    "heading",
    "codeBlock",
    "bulletList",
    "orderedList",
    "listItem",
    "blockquote",
    "hardBreak",
    "horizontalRule",
}
DEMO_PROMPTS = [
    "Explain load balancing",
    "Write about CRDTs and collaborative editing",
    "Tell me about Tiptap",
]

# Every construct of research §1.1 that an LLM writes, and the ones StarterKit has no node
# for (they must degrade to text, never to an unknown node).
CRAFTED = (
    "# Title with **bold**\n\n"
    "Hello **bold** and *it* and _it2_ `code` ~~strike~~ [link](https://tiptap.dev) "
    '[titled](https://a.b "A title") ***both*** **b *i* b** and 2 * 3 = 6 a_b_c.\n'
    "A soft break, then a hard one  \n"
    "and a backslash one\\\n"
    "end.\n\n"
    "## Lists\n\n"
    "- one\n- two **bold**\n  - nested\n    - deeper\n- three\n\n"
    "3. three\n4. four\n\n"
    "- loose\n\n  second paragraph\n- last\n\n"
    "> quoted **text**\n>\n> - in a quote\n\n"
    "```python\ndef f():\n    return `x` * 2\n```\n\n"
    "```\nno language\n```\n\n"
    "    indented code\n    more\n\n"
    "---\n\n"
    "Setext heading\n==============\n\n"
    "| a | b |\n|---|---|\n| 1 | **2** |\n\n"
    "![an image](x.png) and <b>html</b> &amp; \\*escaped\\*\n\n"
    "- # heading in an item\n-\n\n"
    "Last paragraph with `code` at the end"
)


class NodeYjs:
    """tests/collab_validate.mjs in batch mode: one Node process, one JSON line each way."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            ["node", str(ROOT / "tests" / "collab_validate.mjs"), "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, **request: Any) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        assert line, "collab_validate.mjs exited"
        result: dict[str, Any] = json.loads(line)
        return result

    def validate(self, doc: Doc[Any]) -> dict[str, Any]:
        """The document as Tiptap's Collaboration reads it: ``ok``, ``doc``, ``errors``."""
        return self.call(op="validate", update=_b64(doc.get_update()))

    def assert_valid(self, doc: Doc[Any]) -> dict[str, Any]:
        result = self.validate(doc)
        assert result["ok"], result["errors"]
        pm_doc: dict[str, Any] = result["doc"]
        return pm_doc

    def tiptap_markdown(self, markdown: str) -> dict[str, Any]:
        """What Tiptap itself (``@tiptap/markdown`` + StarterKit) makes of ``markdown``."""
        result = self.call(op="fromMarkdown", markdown=markdown)
        assert result["ok"], result
        doc: dict[str, Any] = result["doc"]
        return doc

    def anchor(self, doc: Doc[Any], index: int, assoc: int) -> bytes:
        """``Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(default, index, assoc))``."""
        result = self.call(op="anchor", update=_b64(doc.get_update()), index=index, assoc=assoc)
        return base64.b64decode(result["anchor"])

    def type_text(self, doc: Doc[Any], path: Sequence[int], at: int, text: str) -> bytes:
        """The update of a yjs client that has ``doc`` and types ``text`` into the XmlText
        at ``path``."""
        result = self.call(op="edit", update=_b64(doc.get_update()), path=list(path), at=at, text=text)
        assert result["ok"], result
        return base64.b64decode(result["update"])

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=10)


@pytest.fixture(scope="module")
def yjs() -> Iterator[NodeYjs]:
    node = NodeYjs()
    yield node
    node.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fragment(doc: Doc[Any]) -> XmlFragment:
    return doc.get("default", type=XmlFragment)


def sync(*docs: Doc[Any]) -> None:
    """Every document gets every other one's updates (what a room does)."""
    for source in docs:
        for target in docs:
            if source is not target:
                target.apply_update(source.get_update(target.get_state()))


def tokens_of(markdown: str, size: int) -> list[str]:
    return [markdown[i : i + size] for i in range(0, len(markdown), size)]


def stream(
    writer: AnswerWriter,
    tokens: Sequence[str],
    every: int = 1,
    after_flush: Callable[[int], None] | None = None,
) -> int:
    """Feeds ``tokens``, flushing after every ``every`` of them and once at the end
    (final); calls ``after_flush(i)`` after each flush that wrote. Returns the flushes."""
    flushes = 0
    for index, token in enumerate(tokens):
        writer.feed(token)
        if (index + 1) % every == 0 and writer.flush():
            flushes += 1
            if after_flush is not None:
                after_flush(index)
    writer.flush(final=True)
    return flushes + 1


# --- the expected documents ----------------------------------------------------------------

_NODE_ATTRS = {
    "heading": {"level": 1},
    "codeBlock": {"language": None},
    "orderedList": {"start": 1, "type": None},
}


def blocks_json(blocks: Sequence[Block], trailing: bool = True) -> dict[str, Any]:
    """The block model as Tiptap JSON, with the trailing paragraph the writer adds when the
    answer ends the document with something else (rule 5)."""
    content = [_node_json(block) for block in blocks]
    if trailing and content and content[-1]["type"] != "paragraph":
        content.append({"type": "paragraph"})
    return {"type": "doc", "content": content} if content else {"type": "doc"}


def _node_json(block: Block) -> dict[str, Any]:
    node: dict[str, Any] = {"type": block.type}
    if block.type in _NODE_ATTRS:
        node["attrs"] = {
            key: block.attrs.get(key, default) for key, default in _NODE_ATTRS[block.type].items()
        }
    content: list[dict[str, Any]] = []
    for item in block.runs:
        if isinstance(item, HardBreak):
            content.append({"type": "hardBreak"})
        else:
            text: dict[str, Any] = {"type": "text", "text": item.text}
            if item.marks:
                text["marks"] = [
                    {"type": mark.type, "attrs": dict(mark.attrs)} if mark.attrs else {"type": mark.type}
                    for mark in item.marks
                ]
            content.append(text)
    content.extend(_node_json(child) for child in block.children)
    if content:
        node["content"] = content
    return node


def with_trailing(doc: Mapping[str, Any]) -> dict[str, Any]:
    content = list(doc.get("content", []))
    if content and content[-1]["type"] != "paragraph":
        content.append({"type": "paragraph"})
    return {**doc, "content": content}


def demo_answer(prompt: str, max_tokens: int | None = None) -> list[str]:
    return list(demo_tokens(prompt, max_tokens))


def _invalid(build: Callable[[XmlFragment], None]) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    with doc.transaction():
        build(fragment(doc))
    return doc


def _list_without_paragraph(root: XmlFragment) -> None:
    bullets = root.children.append(XmlElement("bulletList"))
    item = bullets.children.append(XmlElement("listItem"))
    item.children.append(XmlElement("heading", {"level": 1}))


def _bold_code(root: XmlFragment) -> None:
    code = root.children.append(XmlElement("codeBlock"))
    code.children.append(XmlText()).insert(0, "x", {"bold": {}})


def _two_texts(root: XmlFragment) -> None:
    paragraph = root.children.append(XmlElement("paragraph"))
    paragraph.children.append(XmlText("a"))
    paragraph.children.append(XmlText("b"))


def _unknown_mark(root: XmlFragment) -> None:
    paragraph = root.children.append(XmlElement("paragraph"))
    paragraph.children.append(XmlText()).insert(0, "x", {"highlight": {}})


@pytest.mark.parametrize(
    "build",
    [
        lambda root: root.children.append(XmlElement("bulletList")),
        lambda root: root.children.append(XmlElement("blockquote")),
        _list_without_paragraph,
        _bold_code,
        lambda root: root.children.append(XmlElement("table")),
        _two_texts,
        lambda root: root.children.append(XmlText("bare")),
        _unknown_mark,
    ],
)
def test_the_validator_rejects_what_an_editor_would_repair(
    yjs: NodeYjs, build: Callable[[XmlFragment], None]
) -> None:
    """The check the tests rely on is not vacuous: each shape research §1.1 warns about."""
    result = yjs.validate(_invalid(build))

    assert not result["ok"] and result["errors"]


# --- streaming answers ---------------------------------------------------------------------


@pytest.mark.parametrize("prompt", DEMO_PROMPTS)
@pytest.mark.parametrize("every", [1, 4])
def test_demo_answer_is_valid_after_every_flush_and_ends_as_tiptap_reads_it(
    yjs: NodeYjs, prompt: str, every: int
) -> None:
    tokens = demo_answer(prompt)
    doc: Doc[Any] = Doc()
    writer = AnswerWriter.open(doc, "session-1")

    stream(writer, tokens, every, lambda _: yjs.assert_valid(doc))

    markdown = "".join(tokens)
    read = yjs.assert_valid(doc)
    assert read == with_trailing(yjs.tiptap_markdown(markdown))
    assert document_json(doc) == read
    assert writer.written == len(markdown) and writer.done and writer.relocated == 0


@pytest.mark.parametrize("size", [1, 3, 7])
def test_every_construct_streams_valid_and_ends_as_rendered(yjs: NodeYjs, size: int) -> None:
    doc: Doc[Any] = Doc()
    writer = AnswerWriter.open(doc, "crafted")

    stream(writer, tokens_of(CRAFTED, size), 1, lambda _: yjs.assert_valid(doc))

    read = yjs.assert_valid(doc)
    assert read == blocks_json(render(CRAFTED))
    assert document_json(doc) == read


def test_constructs_that_tiptap_reads_alike_end_as_tiptap_reads_them(yjs: NodeYjs) -> None:
    """Where Tiptap's own Markdown reading and CommonMark agree, the writer's document is
    Tiptap's; the differences are choices: a soft break is a space (as the product's
    non-collaborative rendering does), a table a paragraph, code excludes other marks
    (StarterKit's ``excludes: '_'``), entities decode, bare URLs stay text."""
    for markdown in [
        "Hello **bold** and *it* and _it2_ `code` ~~strike~~ [link](https://x.y) "
        '[t](https://a.b "Title") ***both*** **b *i* b**',
        "line one  \nline two\\\nline three",
        "# One\n\n## Two\n\n### Three\n\n###### Six",
        "- a\n- b\n  - c\n    - d\n- e\n\n1. x\n2. y\n\n5. five\n6. six",
        "- a\n\n  second para\n- b",
        "> q **b**\n>\n> second\n>\n> - item\n\n> > nested",
        "```python\ndef f():\n    return `x`\n```\n\n```\nplain\n```\n\n    indented code\n    more",
        "above\n\n---\n\nbelow\n\n***\n\n___",
        "![alt text](x.png) after <b>x</b>",
        "Title\n=====\n\nSub\n---",
    ]:
        doc: Doc[Any] = Doc()
        writer = AnswerWriter.open(doc, "s")
        stream(writer, tokens_of(markdown, 2), 1, lambda _, d=doc: yjs.assert_valid(d))
        assert yjs.assert_valid(doc) == with_trailing(yjs.tiptap_markdown(markdown)), markdown


# Pieces of Markdown, and of things that only look like it, that streams split anywhere.
PIECES = [
    *("word", "é", "😀", "1", "x", " ", "  ", "\t", "\n", "\n\n", "\r\n", ":", "."),
    *("# ", "## ", "#", "- ", "  - ", "\t- ", "* ", "+ ", "1. ", "3) ", "10. ", "> ", "- [ ] "),
    *("**", "*", "***", "_", "__", "~~", "`", "```", "```py\n", "~~~\n", "    "),
    *("[", "]", "(", ")", "](http://x.y)", "![", "<", ">", "<http://x.y>", "&", "&amp;", "&#35;", "\\"),
    *("  \n", "---", "===", "|", " | ", "|---|---|\n"),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=40),
    cuts=st.lists(st.tuples(st.integers(1, 6), st.booleans()), min_size=1, max_size=60),
)
def test_any_text_streamed_in_any_batches_ends_as_rendered_in_one_go(
    yjs: NodeYjs, pieces: list[str], cuts: list[tuple[int, bool]]
) -> None:
    text = "".join(pieces)
    doc: Doc[Any] = Doc()
    writer = AnswerWriter.open(doc, "s")
    position = 0
    for size, flush in cuts:
        writer.feed(text[position : position + size])
        position += size
        if flush:
            writer.flush()
    writer.feed(text[position:])
    writer.flush(final=True)

    expected = blocks_json(render(text))
    # The trailing paragraph after a last block that is not one; a batch that ended the
    # answer with a list for a moment may leave one after a paragraph too.
    assert document_json(doc) in (
        expected,
        {**expected, "content": [*expected.get("content", []), {"type": "paragraph"}]},
    )
    if len(fragment(doc).children):
        yjs.assert_valid(doc)


def test_the_yjs_shapes_are_y_prosemirrors() -> None:
    """Research §1.1, checked on the tree itself: one XmlText per run of text, marks as
    format attributes with their attrs object, numbers as numbers, no language attribute
    when there is none, hard breaks between XmlTexts, no marks in a code block."""
    doc: Doc[Any] = Doc()
    writer = AnswerWriter.open(doc, "s")
    writer.feed(
        "## Two **bold** [l](https://x.y)\n\n3. a  \n   b\n\n```\ncode `x`\n```\n\n```js\nx\n```\n\n---\n\nend"
    )
    writer.flush(final=True)
    heading, ordered, plain, js, rule, end = list(fragment(doc).children)

    assert isinstance(heading, XmlElement) and heading.tag == "heading"
    assert dict(heading.attributes) == {"level": 2} and [type(c) for c in heading.children] == [XmlText]
    (text,) = list(heading.children)
    assert isinstance(text, XmlText)
    link = {
        "href": "https://x.y",
        "target": "_blank",
        "rel": "noopener noreferrer nofollow",
        "class": None,
        "title": None,
    }
    assert text.diff() == [("Two ", None), ("bold", {"bold": {}}), (" ", None), ("l", {"link": link})]

    assert isinstance(ordered, XmlElement) and dict(ordered.attributes) == {"start": 3}
    (item,) = list(ordered.children)
    assert isinstance(item, XmlElement) and item.tag == "listItem"
    (paragraph,) = list(item.children)
    assert isinstance(paragraph, XmlElement) and paragraph.tag == "paragraph"
    kinds = [child.tag if isinstance(child, XmlElement) else str(child) for child in paragraph.children]
    assert kinds == ["a", "hardBreak", "b"]

    assert isinstance(plain, XmlElement) and plain.tag == "codeBlock" and dict(plain.attributes) == {}
    (code,) = list(plain.children)
    assert isinstance(code, XmlText) and code.diff() == [("code `x`", None)]
    assert isinstance(js, XmlElement) and dict(js.attributes) == {"language": "js"}
    assert isinstance(rule, XmlElement) and rule.tag == "horizontalRule" and len(rule.children) == 0
    assert isinstance(end, XmlElement) and str(end) == "<paragraph>end</paragraph>"


def test_only_starter_kit_names_whatever_the_markdown() -> None:
    """Unknown constructs degrade to text: no node or mark outside StarterKit, no empty
    container, a list item always starts with a paragraph."""

    def check(block: Block) -> None:
        assert block.type in STARTER_KIT_NODES
        if block.type in CONTAINERS:
            assert block.children
        if block.type == "listItem":
            assert block.children[0].type == "paragraph"
        for run in block.runs:
            if isinstance(run, Run):
                assert all(mark.type in MARK_ORDER for mark in run.marks)
                assert len(run.marks) == 1 or all(mark.type != "code" for mark in run.marks)
                assert not (block.type == "codeBlock" and run.marks)
        for child in block.children:
            check(child)

    answers = [CRAFTED, *("".join(demo_answer(p)) for p in DEMO_PROMPTS)]
    answers += [
        "<div>html block</div>",
        "| a |\n|---|\n| b |",
        "- [ ] task",
        "[^1]: footnote",
        ">",
        "-",
        "1.",
    ]
    for markdown in answers:
        for block in render(markdown):
            check(block)


def test_a_link_that_could_run_code_is_text() -> None:
    (paragraph,) = render("[click](javascript:alert(1)) [data](data:text/html,x) [ok](https://x.y)")
    links = [run for run in paragraph.runs if isinstance(run, Run) and run.marks]
    assert [run.text for run in links] == ["ok"]


def test_a_batch_is_one_transaction(yjs: NodeYjs) -> None:
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))
    writer = AnswerWriter.open(doc, "s")

    flushes = stream(writer, demo_answer("Explain batching"), 5)

    doc.unobserve(subscription)
    assert len(updates) == flushes
    replica: Doc[Any] = Doc()
    for update in updates:
        replica.apply_update(update)
        yjs.assert_valid(replica)
    assert document_json(replica) == document_json(doc)


def test_unfinished_syntax_is_held_back() -> None:
    doc: Doc[Any] = Doc()
    writer = AnswerWriter.open(doc, "s")

    def shown(text: str) -> str:
        writer.feed(text)
        writer.flush()
        return document_text(doc)

    assert shown("- ") == "" and writer.written == 0
    assert shown("Clarity") == "Clarity"
    assert shown(" is **bo") == "Clarity is" and writer.written == len("- Clarity is ")
    assert shown("ld** and `co") == "Clarity is bold and"
    assert shown("de` and [a link") == "Clarity is bold and code and"
    assert shown("](https://x.y) done.\n\n```pyth") == "Clarity is bold and code and a link done."
    assert shown("on\nprint(1)\n``") == "Clarity is bold and code and a link done.\n\nprint(1)"
    assert document_json(doc)["content"][-2] == {
        "type": "codeBlock",
        "attrs": {"language": "python"},
        "content": [{"type": "text", "text": "print(1)"}],
    }
    assert not writer.flush()


def test_settle_holds_back_what_could_still_change() -> None:
    assert settle("Hello wor").length == len("Hello wor")
    assert settle("Hello **wor").length == len("Hello ")
    assert settle("Hello ~").length == len("Hello ")
    assert settle("Total: 2*3").length == len("Total: 2")
    assert settle("see &amp").length == len("see ")
    assert settle("para\n##").length == len("para\n")
    assert settle("para\n12").length == len("para\n")
    assert settle("para\n| a").length == len("para\n| a")
    assert settle("x\n```py").length == len("x\n")
    assert settle("done\n").length == len("done\n")
    assert settle("Hello **wor", floor=8).length == 8


def test_a_setext_heading_rewrites_its_own_block_only(yjs: NodeYjs) -> None:
    doc: Doc[Any] = Doc()
    fragment(doc).children.append(XmlElement("paragraph", contents=[XmlText("before")]))
    writer = AnswerWriter.open(doc, "s")
    writer.feed("First paragraph.\n\nTi")
    writer.flush()
    first = fragment(doc).children[1]

    stream(writer, tokens_of("tle\n=====\n\nAfter.", 1), 1, lambda _: yjs.assert_valid(doc))

    assert fragment(doc).children[1] == first
    assert yjs.assert_valid(doc)["content"] == [
        {"type": "paragraph", "content": [{"type": "text", "text": "before"}]},
        {"type": "paragraph", "content": [{"type": "text", "text": "First paragraph."}]},
        {"type": "heading", "attrs": {"level": 1}, "content": [{"type": "text", "text": "Title"}]},
        {"type": "paragraph", "content": [{"type": "text", "text": "After."}]},
    ]


def test_a_trailing_paragraph_only_where_the_answer_ends_the_document(yjs: NodeYjs) -> None:
    at_end: Doc[Any] = Doc()
    writer = AnswerWriter.open(at_end, "s")
    stream(writer, tokens_of("Intro\n\n- a\n- b", 2))
    assert [node["type"] for node in yjs.assert_valid(at_end)["content"]] == [
        "paragraph",
        "bulletList",
        "paragraph",
    ]

    inside: Doc[Any] = Doc()
    fragment(inside).children.append(XmlElement("paragraph", contents=[XmlText("first")]))
    fragment(inside).children.append(XmlElement("paragraph", contents=[XmlText("last")]))
    writer = AnswerWriter.open(inside, "s", yjs.anchor(inside, 1, -1))
    stream(writer, tokens_of("- a\n- b", 2))
    assert [node["type"] for node in yjs.assert_valid(inside)["content"]] == [
        "paragraph",
        "bulletList",
        "paragraph",
    ]
    assert document_text(inside) == "first\n\na\n\nb\n\nlast"

    paragraph_last: Doc[Any] = Doc()
    writer = AnswerWriter.open(paragraph_last, "s")
    stream(writer, tokens_of("# Title\n\ntext", 2))
    assert [node["type"] for node in yjs.assert_valid(paragraph_last)["content"]] == ["heading", "paragraph"]
    assert document_text(paragraph_last) == "Title\n\ntext"


def test_an_empty_answer_writes_nothing() -> None:
    doc: Doc[Any] = Doc()
    writer = AnswerWriter.open(doc, "s")
    assert not writer.flush()
    writer.feed("\n\n")
    writer.flush(final=True)
    assert len(fragment(doc).children) == 0 and writer.done
    with pytest.raises(RuntimeError):
        writer.feed("more")


# --- collaborators -------------------------------------------------------------------------


def test_a_collaborator_typing_inside_the_ai_paragraph(yjs: NodeYjs) -> None:
    ai: Doc[Any] = Doc()
    peer: Doc[Any] = Doc()
    writer = AnswerWriter.open(ai, "s")
    sentence = "The quick brown fox jumps over the lazy dog and keeps running far away."
    typed = False

    def collaborate(_: int) -> None:
        nonlocal typed
        # The peer types on the state it has, concurrently with the AI's next batch.
        if not typed and "brown" in document_text(peer):
            paragraph = fragment(peer).children[0]
            assert isinstance(paragraph, XmlElement)
            text = paragraph.children[0]
            assert isinstance(text, XmlText)
            text.insert(4, "USER ", {})
            typed = True
        sync(ai, peer)
        yjs.assert_valid(ai)
        yjs.assert_valid(peer)

    stream(writer, tokens_of(sentence, 3), 1, collaborate)
    sync(ai, peer)

    assert typed
    assert document_text(ai) == document_text(peer) == sentence.replace("The ", "The USER ", 1)
    assert writer.relocated == 0


def test_a_yjs_client_typing_into_the_ai_paragraph_concurrently(yjs: NodeYjs) -> None:
    ai: Doc[Any] = Doc()
    writer = AnswerWriter.open(ai, "s")
    writer.feed("Streaming text that a person ")
    writer.flush()
    # A real yjs client has this state, and types at the start of the AI's text while the
    # AI writes its next batches.
    update = yjs.type_text(ai, [0, 0], 0, "Edited: ")
    writer.feed("edits while it arrives, ")
    writer.flush()
    ai.apply_update(update)
    yjs.assert_valid(ai)
    writer.feed("and nothing breaks.")
    writer.flush(final=True)

    assert (
        document_text(ai)
        == "Edited: Streaming text that a person edits while it arrives, and nothing breaks."
    )
    yjs.assert_valid(ai)


def test_a_collaborator_adding_blocks_above_the_answer(yjs: NodeYjs) -> None:
    ai: Doc[Any] = Doc()
    peer: Doc[Any] = Doc()
    fragment(ai).children.append(XmlElement("paragraph", contents=[XmlText("Existing")]))
    sync(ai, peer)
    tokens = demo_answer("Explain anchors", 120)
    writer = AnswerWriter.open(ai, "s")
    count = 0

    def collaborate(_: int) -> None:
        nonlocal count
        count += 1
        if count % 5 == 0:
            fragment(peer).children.insert(0, XmlElement("paragraph", contents=[XmlText(f"above {count}")]))
        sync(ai, peer)
        yjs.assert_valid(ai)

    stream(writer, tokens, 2, collaborate)
    sync(ai, peer)

    content = yjs.assert_valid(ai)["content"]
    above = [node for node in content if node["type"] == "paragraph" and "above" in json.dumps(node)]
    start = content.index({"type": "paragraph", "content": [{"type": "text", "text": "Existing"}]})
    assert len(above) == count // 5 and start == len(above)
    assert {"type": "doc", "content": content[start + 1 :]} == with_trailing(
        yjs.tiptap_markdown("".join(tokens))
    )
    assert document_json(peer) == document_json(ai)


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_collaborator_deleting_the_block_being_written(yjs: NodeYjs, concurrent: bool) -> None:
    """The answer goes on in a new block after the answer's last block still there: the
    block is written again whole, so the answer has no gap, and ``relocated`` says so."""
    ai: Doc[Any] = Doc()
    peer: Doc[Any] = Doc()
    markdown = "# Title\n\nA first paragraph.\n\nA second paragraph that is long enough to be deleted halfway through."
    writer = AnswerWriter.open(ai, "s")
    deleted = False

    def collaborate(_: int) -> None:
        nonlocal deleted
        if not concurrent:
            sync(ai, peer)
        if not deleted and "second paragraph that" in document_text(peer):
            del fragment(peer).children[2]
            deleted = True
        sync(ai, peer)
        yjs.assert_valid(ai)
        yjs.assert_valid(peer)

    stream(writer, tokens_of(markdown, 4), 1, collaborate)
    sync(ai, peer)

    assert deleted and writer.relocated == 1
    assert yjs.assert_valid(ai) == blocks_json(render(markdown))
    assert document_json(peer) == document_json(ai)


def test_deleting_every_answer_block_sends_the_rest_to_the_anchor(yjs: NodeYjs) -> None:
    ai: Doc[Any] = Doc()
    fragment(ai).children.append(XmlElement("paragraph", contents=[XmlText("top")]))
    fragment(ai).children.append(XmlElement("paragraph", contents=[XmlText("bottom")]))
    writer = AnswerWriter.open(ai, "s", yjs.anchor(ai, 1, -1))
    writer.feed("One.\n\nTwo is long")
    writer.flush()
    assert document_text(ai) == "top\n\nOne.\n\nTwo is long\n\nbottom"

    del fragment(ai).children[1:3]
    writer.feed("er.\n\nThree.")
    writer.flush(final=True)

    assert writer.relocated == 1
    assert document_text(ai) == "top\n\nTwo is longer.\n\nThree.\n\nbottom"
    yjs.assert_valid(ai)


def test_deleting_a_list_item_being_written_rewrites_the_list(yjs: NodeYjs) -> None:
    ai: Doc[Any] = Doc()
    writer = AnswerWriter.open(ai, "s")
    writer.feed("- one\n- two is")
    writer.flush()
    (bullets,) = [
        child
        for child in fragment(ai).children
        if isinstance(child, XmlElement) and child.tag == "bulletList"
    ]
    del bullets.children[1]
    yjs.assert_valid(ai)

    writer.feed(" written\n- three")
    writer.flush(final=True)

    assert writer.relocated == 1
    assert yjs.assert_valid(ai) == blocks_json(render("- one\n- two is written\n- three"))


@pytest.mark.parametrize("edit", ["type", "split", "clear", "delete", "above"])
def test_a_tiptap_editor_editing_the_answer_while_it_streams(yjs: NodeYjs, edit: str) -> None:
    """The collaborator is an editor: its changes reach the document through y-tiptap's
    own diff (``updateYFragment``, what the Collaboration binding runs), made on a state
    one batch behind the AI's."""
    sentence = "The quick brown fox jumps over the lazy dog while the answer keeps streaming on."
    markdown = f"Intro.\n\n{sentence}\n\nAfter."
    ai: Doc[Any] = Doc()
    writer = AnswerWriter.open(ai, "s")
    seen: Doc[Any] | None = None
    edited = False

    def collaborate(_: int) -> None:
        nonlocal seen, edited
        if seen is not None and not edited and "fox jumps" in document_text(seen):
            content = document_json(seen)["content"]
            text = content[1]["content"][0]["text"]
            if edit == "type":
                content[1]["content"][0]["text"] = text[:4] + "USER " + text[4:]
            elif edit == "split":
                cut = text.index(" brown")
                content[1:2] = [_paragraph(text[:cut]), _paragraph(text[cut:])]
            elif edit == "clear":
                del content[1]["content"]
            elif edit == "delete":
                del content[1]
            else:
                content.insert(0, _paragraph("Typed above"))
                content[1]["content"][0]["text"] += " edited"
            result = yjs.call(
                op="tiptap", update=_b64(seen.get_update()), json={"type": "doc", "content": content}
            )
            assert result["ok"], result
            ai.apply_update(base64.b64decode(result["update"]))
            edited = True
        yjs.assert_valid(ai)
        seen = Doc()
        seen.apply_update(ai.get_update())

    stream(writer, tokens_of(markdown, 5), 1, collaborate)

    assert edited
    yjs.assert_valid(ai)
    text = document_text(ai)
    if edit == "type":
        assert text == f"Intro.\n\nThe USER {sentence[4:]}\n\nAfter."
    elif edit == "split":
        # The answer goes on in its own text run, the first half; every character once.
        assert Counter(text.replace(" ", "").replace("\n", "")) == Counter(
            markdown.replace(" ", "").replace("\n", "")
        )
        assert text.count("\n\n") == 3 and text.split("\n\n")[1].endswith("streaming on.")
    elif edit == "clear":
        # What the editor deleted stays deleted; the answer goes on in the same paragraph.
        intro, rest, after = text.split("\n\n")
        assert (intro, after) == ("Intro.", "After.") and sentence.endswith(rest) and rest != sentence
        assert writer.relocated == 0
    elif edit == "delete":
        # Written again whole, after the answer's last block still there: no gap.
        assert writer.relocated == 1 and document_json(ai) == blocks_json(render(markdown))
    else:
        assert text == f"Typed above\n\nIntro. edited\n\n{sentence}\n\nAfter."


def _paragraph(text: str) -> dict[str, Any]:
    return {"type": "paragraph", "content": [{"type": "text", "text": text}]}


def test_two_answers_in_one_document_stay_apart(yjs: NodeYjs) -> None:
    doc: Doc[Any] = Doc()
    _paragraphs(doc, "top")
    first, second = AnswerWriter.open(doc, "first"), AnswerWriter.open(doc, "second")
    one, two = "# One\n\nFirst answer.\n\n- a\n- b", "## Two\n\nSecond answer, longer.\n\n1. x\n2. y"
    for a, b in itertools.zip_longest(tokens_of(one, 3), tokens_of(two, 3), fillvalue=""):
        first.feed(a)
        second.feed(b)
        first.flush()
        second.flush()
        yjs.assert_valid(doc)
    first.flush(final=True)
    second.flush(final=True)

    content = yjs.assert_valid(doc)["content"]
    answers = blocks_json([*render(one), *render(two)], trailing=False)["content"]
    assert [node for node in content if node != {"type": "paragraph"}] == [_paragraph("top"), *answers]
    assert content[-1] == {"type": "paragraph"}

    assert first.remove() == 3
    content = yjs.assert_valid(doc)["content"]
    assert [node for node in content if node != {"type": "paragraph"}] == [
        _paragraph("top"),
        *blocks_json(render(two), trailing=False)["content"],
    ]


# --- takeover ------------------------------------------------------------------------------


def test_a_takeover_at_any_point_has_no_duplicate_and_no_gap(yjs: NodeYjs) -> None:
    tokens = demo_answer("Explain takeovers", 160) + tokens_of("\n\n" + CRAFTED, 5)
    answer = "".join(tokens)
    expected = blocks_json(render(answer))
    for cut in range(0, len(tokens) + 1, 4):
        first: Doc[Any] = Doc()
        writer = AnswerWriter.open(first, "s")
        for index, token in enumerate(tokens[:cut]):
            writer.feed(token)
            if index % 2:
                writer.flush()
        written = writer.written
        assert answer.startswith("".join(tokens[:cut])[:written])

        # The owner dies; its last update reached the store, another process loads it.
        second: Doc[Any] = Doc()
        second.apply_update(first.get_update())
        second.apply_update(first.get_update())  # a replay changes nothing
        resumed = AnswerWriter.open(second, "s")
        assert resumed.written == written and not resumed.done
        for token in tokens_of(answer[written:], 9):
            resumed.feed(token)
            resumed.flush()
        resumed.flush(final=True)

        assert document_json(second) == expected, cut
    yjs.assert_valid(second)


def test_a_takeover_continues_the_same_blocks(yjs: NodeYjs) -> None:
    answer = "Intro paragraph.\n\n- first item\n- second item that is cut in the middle\n- third\n\nEnd."
    first: Doc[Any] = Doc()
    fragment(first).children.append(XmlElement("paragraph", contents=[XmlText("user text")]))
    writer = AnswerWriter.open(first, "s")
    writer.feed(answer[: answer.index("cut in") + 3])
    writer.flush()
    second: Doc[Any] = Doc()
    second.apply_update(first.get_update())
    list_before = fragment(second).children[2]
    updates: list[bytes] = []
    subscription = second.observe(lambda event: updates.append(event.update))

    resumed = AnswerWriter.open(second, "s")
    resumed.feed(answer[resumed.written :])
    resumed.flush()
    resumed.flush(final=True)

    second.unobserve(subscription)
    assert fragment(second).children[2] == list_before, "the list was rewritten instead of continued"
    assert document_text(second) == (
        "user text\n\nIntro paragraph.\n\nfirst item\n\nsecond item that is cut in the middle\n\nthird\n\nEnd."
    )
    yjs.assert_valid(second)


def test_a_takeover_after_the_block_was_deleted(yjs: NodeYjs) -> None:
    first: Doc[Any] = Doc()
    writer = AnswerWriter.open(first, "s")
    writer.feed("Kept.\n\nDeleted while nobody wr")
    writer.flush()
    second: Doc[Any] = Doc()
    second.apply_update(first.get_update())
    del fragment(second).children[1]

    resumed = AnswerWriter.open(second, "s")
    resumed.feed("Kept.\n\nDeleted while nobody wrote.\n\nLast."[resumed.written :])
    resumed.flush(final=True)

    assert resumed.relocated == 1
    assert document_text(second) == "Kept.\n\nDeleted while nobody wrote.\n\nLast."
    yjs.assert_valid(second)


def test_a_takeover_after_a_collaborator_typed_in_the_block(yjs: NodeYjs) -> None:
    first: Doc[Any] = Doc()
    writer = AnswerWriter.open(first, "s")
    writer.feed("A paragraph that is being wri")
    writer.flush()
    second: Doc[Any] = Doc()
    second.apply_update(first.get_update())
    paragraph = fragment(second).children[0]
    assert isinstance(paragraph, XmlElement)
    text = paragraph.children[0]
    assert isinstance(text, XmlText)
    text.insert(len(text), " (typed)", {"italic": {}})
    text.insert(0, "Note: ", {})

    resumed = AnswerWriter.open(second, "s")
    resumed.feed("A paragraph that is being written.\n\nNext."[resumed.written :])
    resumed.flush(final=True)

    # As without a takeover: the answer goes on at the end of its text run.
    assert resumed.relocated == 0
    assert document_text(second) == "Note: A paragraph that is being wri (typed)tten.\n\nNext."
    yjs.assert_valid(second)


def test_a_finished_answer_is_not_written_again() -> None:
    first: Doc[Any] = Doc()
    writer = AnswerWriter.open(first, "s")
    writer.feed("# Done\n\nAll of it.")
    writer.flush(final=True)
    second: Doc[Any] = Doc()
    second.apply_update(first.get_update())

    resumed = AnswerWriter.open(second, "s")

    assert resumed.done and resumed.written == len("# Done\n\nAll of it.")
    assert not resumed.flush(final=True)
    assert document_json(second) == document_json(first)
    state = second.get(WRITERS, type=Map).get("s")
    assert str(state["source"]) == ""


# --- anchors -------------------------------------------------------------------------------


def _paragraphs(doc: Doc[Any], *texts: str) -> None:
    for text in texts:
        fragment(doc).children.append(XmlElement("paragraph", contents=[XmlText(text)]))


@pytest.mark.parametrize(
    ("index", "assoc", "expected"),
    [
        (2, -1, "X Y A B answer C"),  # after B: what the editor sends for a cursor in B
        (2, 0, "X Y A B answer C"),  # before C
        (0, -1, "answer X Y A B C"),  # the start of the document
        (3, 0, "X Y A B C answer"),  # the end
    ],
)
def test_a_yjs_anchor_resolves_after_blocks_were_inserted_above(
    yjs: NodeYjs, index: int, assoc: int, expected: str
) -> None:
    doc: Doc[Any] = Doc()
    _paragraphs(doc, "A", "B", "C")
    anchor = yjs.anchor(doc, index, assoc)
    writer = AnswerWriter.open(doc, "s", anchor)
    # Between the request and the first batch: two blocks above, and typing in B.
    fragment(doc).children.insert(0, XmlElement("paragraph", contents=[XmlText("X")]))
    fragment(doc).children.insert(1, XmlElement("paragraph", contents=[XmlText("Y")]))
    b = fragment(doc).children[3]
    assert isinstance(b, XmlElement)
    b_text = b.children[0]
    assert isinstance(b_text, XmlText)
    b_text.insert(1, " typed", {})

    stream(writer, tokens_of("answer", 2))

    assert document_text(doc).replace("B typed", "B").split("\n\n") == expected.split()
    yjs.assert_valid(doc)


def test_an_anchor_to_an_unknown_item_puts_the_answer_at_the_end(yjs: NodeYjs) -> None:
    elsewhere: Doc[Any] = Doc()
    _paragraphs(elsewhere, "1", "2")
    doc: Doc[Any] = Doc()
    _paragraphs(doc, "A")

    writer = AnswerWriter.open(doc, "s", yjs.anchor(elsewhere, 1, -1))
    stream(writer, ["answer"])

    assert document_text(doc) == "A\n\nanswer"


def test_pycrdt_gives_item_ids_and_sticky_indexes_as_the_writer_reads_them() -> None:
    """What the writer relies on, checked against pycrdt 0.14 (yrs): an element inserted
    first in a transaction gets the id (client, the client's next clock in the state
    vector), and sticky indexes on either side of it resolve one apart while it is there,
    to the same index once it is deleted."""
    doc: Doc[Any] = Doc()
    _paragraphs(doc, "a", "b")
    writer = AnswerWriter.open(doc, "s")
    with doc.transaction():
        item = writer._next_id()
        element = fragment(doc).children.insert(1, XmlElement("paragraph"))
    assert writer._locate(item) == 1 and fragment(doc).children[1] == element
    fragment(doc).children.insert(0, XmlElement("paragraph"))
    assert writer._locate(item) == 2
    del fragment(doc).children[2]
    assert writer._locate(item) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        b"\x05",
        b"\x00\x01",
        b"\x01",
        b"\x01\x10ab",
        b"\x00\x01\x02\x03\x04",
        b"\x01\x02\xff\xfe\x00",
        bytes(range(40)),
    ],
)
def test_an_anchor_that_does_not_decode_is_refused(raw: bytes) -> None:
    with pytest.raises(AnchorError):
        AnswerWriter.open(Doc(), "s", raw)


# --- remove (a rejected answer) ------------------------------------------------------------


def test_remove_deletes_exactly_what_the_ai_wrote(yjs: NodeYjs) -> None:
    ai: Doc[Any] = Doc()
    peer: Doc[Any] = Doc()
    _paragraphs(ai, "first", "last")
    sync(ai, peer)
    writer = AnswerWriter.open(ai, "s", yjs.anchor(ai, 1, -1))
    writer.feed("# Heading\n\nSome text.\n\n- a list")
    writer.flush()
    sync(ai, peer)
    last = fragment(peer).children[len(fragment(peer).children) - 1]
    assert isinstance(last, XmlElement)
    last_text = last.children[0]
    assert isinstance(last_text, XmlText)
    last_text.insert(0, "edited ", {})
    sync(ai, peer)
    writer.feed("\n- more")
    writer.flush(final=True)

    # Removed on another process, after a takeover.
    other: Doc[Any] = Doc()
    other.apply_update(ai.get_update())
    assert AnswerWriter.open(other, "s").remove() == 3
    sync(ai, other, peer)

    assert document_text(ai) == document_text(peer) == "first\n\nedited last"
    assert "s" not in ai.get(WRITERS, type=Map)
    yjs.assert_valid(ai)


def test_remove_keeps_a_trailing_paragraph_someone_typed_into() -> None:
    doc: Doc[Any] = Doc()
    writer = AnswerWriter.open(doc, "s")
    writer.feed("- a list at the end")
    writer.flush(final=True)
    trailing = fragment(doc).children[1]
    assert isinstance(trailing, XmlElement) and len(trailing.children) == 0
    trailing.children.append(XmlText("typed after the answer"))

    assert writer.remove() == 1
    assert document_text(doc) == "typed after the answer"
