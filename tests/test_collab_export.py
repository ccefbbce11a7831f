"""Exporting a shared document (server/collab/export.py): Tiptap JSON, Markdown, text.

Documents come from Tiptap itself (``@tiptap/markdown`` and ``prosemirrorJSONToYDoc``, in
Node: what y-prosemirror writes) and from the AI peer's writer; the JSON is compared with
what y-tiptap reads from the same Yjs bytes, the Markdown by reading it back.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pycrdt import Doc, XmlElement, XmlFragment, XmlText

from providers.demo import demo_tokens
from server.collab.export import document_json, document_markdown, document_text
from server.collab.markdown_blocks import render
from server.collab.writer import AnswerWriter
from tests.test_collab_writer import CRAFTED, NodeYjs

# Markdown that Tiptap and CommonMark read alike (tests/test_collab_writer.py says where
# they differ, and why).
TIPTAP_MARKDOWN = [
    "Hello **bold** and *it* `code` ~~strike~~ [link](https://x.y) "
    '[t](https://a.b "Title") ***both*** **b *i* b**',
    "line one  \nline two\\\nline three",
    "# One\n\n## Two\n\n### Three\n\n###### Six",
    "- a\n- b\n  - c\n    - d\n- e\n\n1. x\n2. y\n\n5. five\n6. six",
    "- a\n\n  second para\n- b",
    "> q **b**\n>\n> second\n>\n> - item\n\n> > nested",
    "```python\ndef f():\n    return `x`\n```\n\n```\nplain\n```\n\n    indented code\n    more",
    "above\n\n---\n\nbelow",
    "- one list\n\n* another\n\n- a third\n\n1. ordered\n\n1) again",
    "".join(demo_tokens("Explain exports", None)),
]

# A document no Markdown makes: underline, a link with a class, empty paragraphs, an
# ordered list with a type, marks at white space, a code block holding a fence.
TIPTAP_JSON: dict[str, Any] = {
    "type": "doc",
    "content": [
        {"type": "paragraph"},
        {
            "type": "heading",
            "attrs": {"level": 3},
            "content": [
                {"type": "text", "text": "under", "marks": [{"type": "underline"}]},
                {"type": "text", "text": " and "},
                {"type": "text", "text": "bold ", "marks": [{"type": "bold"}]},
                {"type": "text", "text": "both", "marks": [{"type": "bold"}, {"type": "italic"}]},
            ],
        },
        {
            "type": "paragraph",
            "content": [
                {
                    "type": "text",
                    "text": "a (link)",
                    "marks": [
                        {
                            "type": "link",
                            "attrs": {"href": "https://x.y/a b", "class": "c", "title": 'say "hi"'},
                        }
                    ],
                },
                {"type": "hardBreak"},
                {"type": "text", "text": "# not a heading, 1. not a list, *not* emphasis, a_b"},
            ],
        },
        {
            "type": "orderedList",
            "attrs": {"start": 7, "type": "a"},
            "content": [
                {
                    "type": "listItem",
                    "content": [
                        {"type": "paragraph", "content": [{"type": "text", "text": "seven"}]},
                        {"type": "codeBlock", "content": [{"type": "text", "text": "```\nfenced\n```"}]},
                    ],
                },
                {"type": "listItem", "content": [{"type": "paragraph"}]},
            ],
        },
        {"type": "blockquote", "content": [{"type": "horizontalRule"}, {"type": "paragraph"}]},
        {"type": "paragraph"},
    ],
}


@pytest.fixture(scope="module")
def yjs() -> Iterator[NodeYjs]:
    node = NodeYjs()
    yield node
    node.close()


def loaded(update_b64: str) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(base64.b64decode(update_b64))
    return doc


def written(markdown: str) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    writer = AnswerWriter.open(doc, "s")
    for start in range(0, len(markdown), 6):
        writer.feed(markdown[start : start + 6])
        writer.flush()
    writer.flush(final=True)
    return doc


@pytest.mark.parametrize("markdown", TIPTAP_MARKDOWN)
def test_json_of_a_tiptap_document_is_tiptaps(yjs: NodeYjs, markdown: str) -> None:
    made = yjs.call(op="fromMarkdown", markdown=markdown)

    assert document_json(loaded(made["update"])) == made["doc"]


def test_json_of_a_tiptap_document_no_markdown_makes(yjs: NodeYjs) -> None:
    made = yjs.call(op="fromJSON", json=TIPTAP_JSON)
    doc = loaded(made["update"])

    exported = document_json(doc)

    assert exported == made["doc"]
    assert exported["content"][3]["attrs"] == {"start": 7, "type": "a"}
    assert '"level": 3' in json.dumps(exported)  # a number, not 3.0


@pytest.mark.parametrize("markdown", [CRAFTED, "".join(demo_tokens("Explain writers", None))])
def test_json_of_a_written_document_is_what_tiptap_reads(yjs: NodeYjs, markdown: str) -> None:
    doc = written(markdown)

    assert document_json(doc) == yjs.assert_valid(doc)


@pytest.mark.parametrize("markdown", [CRAFTED, *TIPTAP_MARKDOWN])
def test_markdown_reads_back_as_the_same_document(markdown: str) -> None:
    doc = written(markdown)

    exported = document_markdown(doc)

    assert render(exported) == render(markdown)
    assert document_json(written(exported)) == document_json(doc)


@pytest.mark.parametrize("markdown", TIPTAP_MARKDOWN)
def test_markdown_of_a_tiptap_document_reads_back_in_tiptap(yjs: NodeYjs, markdown: str) -> None:
    made = yjs.call(op="fromMarkdown", markdown=markdown)

    again = yjs.call(op="fromMarkdown", markdown=document_markdown(loaded(made["update"])))

    assert again["doc"] == made["doc"]


def test_markdown_of_what_markdown_cannot_say(yjs: NodeYjs) -> None:
    doc = loaded(yjs.call(op="fromJSON", json=TIPTAP_JSON)["update"])

    exported = document_markdown(doc)

    assert exported == (
        "### under and **bold *both***\n\n"
        '[a (link)](<https://x.y/a b> "say \\"hi\\"")\\\n'
        "\\# not a heading, 1. not a list, \\*not\\* emphasis, a\\_b\n\n"
        "7. seven\n\n"
        "   ````\n   ```\n   fenced\n   ```\n   ````\n\n"
        "8.\n\n"
        "> ---\n"
    )
    # Read back: what Markdown can say survives (empty paragraphs, underline, the list's
    # type and the link's class do not).
    heading, paragraph, ordered, quote, *_ = document_json(written(exported))["content"]
    assert heading["content"][-1] == {
        "type": "text",
        "text": "both",
        "marks": [{"type": "bold"}, {"type": "italic"}],
    }
    assert paragraph["content"][0]["marks"][0]["attrs"]["href"] == "https://x.y/a%20b"  # markdown-it encodes
    assert paragraph["content"][0]["marks"][0]["attrs"]["title"] == 'say "hi"'
    assert paragraph["content"][2]["text"] == "# not a heading, 1. not a list, *not* emphasis, a_b"
    assert ordered["attrs"]["start"] == 7
    assert ordered["content"][0]["content"][1]["content"][0]["text"] == "```\nfenced\n```"
    assert quote == {"type": "blockquote", "content": [{"type": "horizontalRule"}]}


def test_markdown_keeps_neighbouring_lists_and_line_starts_apart(yjs: NodeYjs) -> None:
    made = yjs.call(
        op="fromJSON",
        json={
            "type": "doc",
            "content": [
                {"type": "bulletList", "content": [_item("a")]},
                {"type": "paragraph"},
                {"type": "bulletList", "content": [_item("b")]},
                {"type": "bulletList", "content": [_item("c")]},
                {"type": "orderedList", "content": [_item("d")]},
                {"type": "orderedList", "content": [_item("e")]},
                {
                    "type": "paragraph",
                    "content": [{"type": "text", "text": "  - not a list\n2) nor this\n===="}],
                },
            ],
        },
    )
    doc = loaded(made["update"])

    exported = document_markdown(doc)

    assert exported.startswith("- a\n\n* b\n\n- c\n\n1. d\n\n1) e\n\n")
    assert [node["type"] for node in document_json(written(exported))["content"]] == [
        *("bulletList", "bulletList", "bulletList", "orderedList", "orderedList", "paragraph")
    ]


def _item(text: str) -> dict[str, Any]:
    return {
        "type": "listItem",
        "content": [{"type": "paragraph", "content": [{"type": "text", "text": text}]}],
    }


def test_text_is_the_textblocks_separated_by_blank_lines(yjs: NodeYjs) -> None:
    doc = loaded(yjs.call(op="fromJSON", json=TIPTAP_JSON)["update"])

    assert document_text(doc) == (
        "under and bold both\n\n"
        "a (link)\n# not a heading, 1. not a list, *not* emphasis, a_b\n\n"
        "seven\n\n```\nfenced\n```"
    )
    assert document_text(written("# T\n\n- a\n- b\n\n> q")) == "T\n\na\n\nb\n\nq"


def test_an_empty_document() -> None:
    doc: Doc[Any] = Doc()

    assert document_json(doc) == {"type": "doc"}
    assert document_markdown(doc) == "" and document_text(doc) == ""


def test_what_starter_kit_does_not_know_is_kept_as_written() -> None:
    """Another extension's node and an overlapping mark (``name--hash``, y-prosemirror's
    key for marks that do not exclude themselves) come through with their attrs."""
    doc: Doc[Any] = Doc()
    fragment = doc.get("default", type=XmlFragment)
    with doc.transaction():
        paragraph = fragment.children.append(XmlElement("paragraph"))
        text = paragraph.children.append(XmlText())
        text.insert(0, "noted", {"comment--x1": {"id": 7}, "bold": True})
        mention = paragraph.children.append(XmlElement("mention"))
        mention.attributes["id"] = "ada"
        stray = fragment.children.append(XmlElement("horizontalRule"))
        stray.attributes["stray"] = "dropped, as ProseMirror drops it"

    assert document_json(doc)["content"] == [
        {
            "type": "paragraph",
            "content": [
                {
                    "type": "text",
                    "text": "noted",
                    "marks": [{"type": "bold"}, {"type": "comment", "attrs": {"id": 7}}],
                },
                {"type": "mention", "attrs": {"id": "ada"}},
            ],
        },
        {"type": "horizontalRule"},
    ]
