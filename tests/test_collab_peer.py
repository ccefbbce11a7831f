"""The AI as a peer of a collaborative document (PROTOCOL.md "Collaborative documents"):
a start with ``target`` writes the answer into the document from the server, whether or
not the client that asked is still there.

Real server, real y-websocket clients in Node (``tests/collab_client.mjs``: every
document they see is checked against StarterKit's schema), the demo provider.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from pycrdt import Doc, Map, XmlElement, XmlFragment, XmlText

from server.collab import peer
from server.collab.export import document_json
from server.collab.writer import WRITERS, AnswerWriter
from tests.collab_fixtures import Collab, Collaborator
from tests.helpers import WAIT
from tests.test_collab_server import GatedStore

SECRET = "test-secret-that-is-long-enough-for-hs256"


@pytest.fixture
def store() -> str:
    return "memory"


def new_document() -> str:
    return f"doc-{uuid.uuid4().hex[:12]}"


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], **kw: Any) -> tuple[int, Any]:
    async with http.post(url, json=body, **kw) as response:
        return response.status, await response.json()


async def create(http: aiohttp.ClientSession, collab: Collab, **config: Any) -> str:
    status, body = await post(http, f"{collab.url}/api/streaming/session", {"userId": "w", "config": config})
    assert status == 200, body
    return str(body["sessionId"])


async def status_of(http: aiohttp.ClientSession, collab: Collab, session_id: str) -> dict[str, Any]:
    async with http.get(f"{collab.url}/api/streaming/{session_id}") as response:
        return dict(await response.json())


async def poll(predicate: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    """Ask again until ``predicate`` holds (a state in another process, or in a Node client)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def ended(http: aiohttp.ClientSession, collab: Collab, session_id: str) -> dict[str, Any]:
    """The session's status once it ended."""
    states = ("completed", "cancelled", "failed")
    last: dict[str, Any] = {}

    async def over() -> bool:
        last.update(await status_of(http, collab, session_id))
        return last["state"] in states

    await poll(over)
    return last


def writer_state(dump: dict[str, Any], session_id: str) -> tuple[int, bool]:
    """What the AI wrote into a collaborator's copy: characters of the answer, and done."""
    doc: Doc[Any] = Doc()
    doc.apply_update(base64.b64decode(dump["state"]))
    state = doc.get(WRITERS, type=Map).get(session_id)
    if not isinstance(state, Map):
        return 0, False
    return int(state["start"]) + len(str(state["source"])), bool(state.get("done", False))


async def written_done(client: Collaborator, session_id: str) -> dict[str, Any]:
    """``client``'s document once the AI's answer is whole in it."""
    dumps: list[dict[str, Any]] = []

    async def done() -> bool:
        dumps.append(await client.dump())
        return writer_state(dumps[-1], session_id)[1]

    await poll(done)
    return dumps[-1]


def expected(before: list[str], answer: str) -> dict[str, Any]:
    """The document the whole answer written at once after paragraphs ``before`` makes."""
    doc: Doc[Any] = Doc()
    fragment = doc.get("default", type=XmlFragment)
    with doc.transaction():
        for text in before:
            fragment.children.append(XmlElement("paragraph", contents=[XmlText(text)]))
    writer = AnswerWriter.open(doc, "reference")
    writer.feed(answer)
    writer.flush(final=True)
    return document_json(doc)


async def test_the_answer_reaches_every_collaborator_after_the_asker_left(collab, collaborators, http):
    document_id = new_document()
    asker = await collaborators(collab, document_id)
    other = await collaborators(collab, document_id)
    await asker.command("paragraph", text="Notes from the meeting")
    await other.command("wait", contains="Notes from the meeting")
    session_id = await create(http, collab, tokensPerSecond=60, maxTokens=150)
    status, body = await post(
        http,
        f"{collab.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    assert status == 200, body
    # The AI shows in the awareness while it writes; the asker closes mid-answer.
    await other.command("wait", peer="aiInstanceId")
    states = (await other.command("awareness"))["states"]
    assert {s["user"]["aiInstanceId"] for s in states.values() if "aiInstanceId" in s.get("user", {})} == {
        session_id
    }
    asker.kill()
    final = await ended(http, collab, session_id)
    assert final["state"] == "completed"
    assert final["target"] == {"documentId": document_id, "relocated": 0}
    dump = await written_done(other, session_id)
    assert writer_state(dump, session_id)[0] == len(final["text"])
    assert dump["json"] == expected(["Notes from the meeting"], final["text"])
    await other.command("waitNoPeer", peer="aiInstanceId")
    # One who joins after the end sees the same document; so does the export.
    late = await collaborators(collab, document_id)
    assert (await late.dump())["json"] == dump["json"]
    async with http.get(f"{collab.url}/api/collab/{document_id}", params={"format": "json"}) as response:
        assert response.status == 200
        assert await response.json() == dump["json"]


async def test_a_restarted_server_serves_the_answer_as_written(start_collab, collaborators, http, tmp_path):
    document_id = new_document()
    first = await start_collab(collab_store="sqlite", collab_data_dir=tmp_path)
    watcher = await collaborators(first, document_id)
    session_id = await create(http, first, tokensPerSecond=0, maxTokens=80)
    status, _ = await post(
        http,
        f"{first.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    assert status == 200
    await ended(http, first, session_id)
    before = (await written_done(watcher, session_id))["json"]
    await watcher.leave()
    await first.close()
    second = await start_collab(collab_store="sqlite", collab_data_dir=tmp_path)
    again = await collaborators(second, document_id)
    assert (await again.dump())["json"] == before
    async with http.get(f"{second.url}/api/collab/{document_id}", params={"format": "markdown"}) as response:
        assert response.status == 200
        assert response.content_type == "text/markdown"
        assert (await response.text()).strip()


async def test_the_anchor_puts_the_answer_after_its_block(collab, collaborators, http):
    document_id = new_document()
    client = await collaborators(collab, document_id)
    await client.command("paragraph", text="First")
    await client.command("paragraph", text="Last")
    anchor = (await client.command("anchor", index=1))["anchor"]
    # Someone adds a block above before the AI starts: the anchor still means "after First".
    await client.command("type", text="Very ", block=0, offset=0)
    session_id = await create(http, collab, tokensPerSecond=0, maxTokens=60)
    status, body = await post(
        http,
        f"{collab.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id, "anchor": anchor}},
    )
    assert status == 200, body
    text = (await ended(http, collab, session_id))["text"]
    blocks = (await written_done(client, session_id))["json"]["content"]
    answer = expected([], text)["content"]
    if answer[-1] == {"type": "paragraph"}:
        answer.pop()  # the trailing paragraph of an answer that ends the document
    assert blocks[0]["content"][0]["text"] == "Very First"
    assert blocks[-1]["content"][0]["text"] == "Last"
    assert blocks[1:-1] == answer


async def test_pause_holds_the_writing_at_the_log_and_resume_finishes_it(
    collab, collaborators, http, viewers
):
    document_id = new_document()
    client = await collaborators(collab, document_id)
    session_id = await create(http, collab, tokensPerSecond=30, maxTokens=120)
    status, _ = await post(
        http,
        f"{collab.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    assert status == 200
    await client.command("wait", peer="aiInstanceId")
    viewer, _ = await viewers(collab, session_id)
    namespace = f"/stream/{session_id}"
    ack = await viewer.call("pause-stream", namespace=namespace, timeout=WAIT)
    assert ack["ok"] is True, ack
    paused = await status_of(http, collab, session_id)
    assert paused["state"] == "paused" and paused["chunks"] == ack["lastSeq"] + 1

    # The document never holds more than the log at the pause (its unfinished Markdown tail
    # may wait), and the log does not move while paused.
    chars, done = writer_state(await client.dump(), session_id)
    assert chars <= len(paused["text"]) and not done
    assert (await status_of(http, collab, session_id))["text"] == paused["text"]
    assert (await viewer.call("resume-stream", namespace=namespace, timeout=WAIT))["ok"] is True
    final = await ended(http, collab, session_id)
    assert final["state"] == "completed"
    assert (await written_done(client, session_id))["json"] == expected([], final["text"])


async def test_a_cancelled_answer_leaves_a_valid_document(collab, collaborators, http):
    document_id = new_document()
    client = await collaborators(collab, document_id)
    session_id = await create(http, collab, tokensPerSecond=40, maxTokens=400)
    await post(
        http,
        f"{collab.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    await client.command("wait", peer="aiInstanceId")
    status, _ = await post(http, f"{collab.url}/api/streaming/{session_id}/cancel", {})
    assert status == 200
    final = await ended(http, collab, session_id)
    assert final["state"] == "cancelled"
    dump = await written_done(client, session_id)
    assert writer_state(dump, session_id)[0] == len(final["text"])
    assert dump["json"] == expected([], final["text"])


async def test_collaborators_typing_and_deleting_the_ais_block_break_nothing(collab, collaborators, http):
    document_id = new_document()
    writer = await collaborators(collab, document_id)
    other = await collaborators(collab, document_id)
    await writer.command("paragraph", text="Top")
    session_id = await create(http, collab, tokensPerSecond=40, maxTokens=200)
    await post(
        http,
        f"{collab.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    await other.command("wait", peer="aiInstanceId")
    # Above the AI, inside its first block, then its block deleted while it writes.
    await other.command("wait", contains="Streaming")
    await other.command("type", text="Edited ", block=0, offset=0)
    await other.command("type", text="[note] ", block=1, offset=0)
    dump = await other.dump()
    last = len(dump["json"]["content"]) - 1
    await other.command("delete", block=last)
    final = await ended(http, collab, session_id)
    assert final["state"] == "completed"
    done = await written_done(other, session_id)
    texts = done["text"]
    assert texts.startswith("Edited Top")
    assert "[note] " in texts
    assert (await writer.dump())["json"] == done["json"]
    # The answer's end is there, whatever the deleted block held.
    tail = final["text"].rstrip().rsplit(" ", 1)[-1].strip("*_`.")
    assert tail in texts


async def test_a_target_the_token_may_not_edit_is_403_and_a_bad_anchor_400(start_collab, http):
    collab = await start_collab(auth_jwt_secret=SECRET)
    token = jwt.encode(
        {"sub": "w", "docs": ["team-*"], "exp": int(time.time()) + 300}, SECRET, algorithm="HS256"
    )
    headers = {"Authorization": f"Bearer {token}"}
    status, body = await post(http, f"{collab.url}/api/streaming/session", {"userId": "w"}, headers=headers)
    session_id = body["sessionId"]
    start = f"{collab.url}/api/streaming/{session_id}/start"
    status, body = await post(
        http, start, {"prompt": "x", "target": {"documentId": "other-doc"}}, headers=headers
    )
    assert (status, body["error"]) == (403, "target: this token may not edit that document")
    status, body = await post(
        http, start, {"prompt": "x", "target": {"documentId": "team-a", "anchor": "AAAA"}}, headers=headers
    )
    assert status == 400 and "anchor" in body["error"]
    status, body = await post(
        http, start, {"prompt": "x", "target": {"documentId": "bad id!"}}, headers=headers
    )
    assert status == 400
    status, body = await post(
        http, start, {"prompt": "x", "target": {"documentId": "team-a"}}, headers=headers
    )
    assert status == 200, body


async def test_export_formats_and_a_document_never_written(collab, collaborators, http):
    document_id = new_document()
    async with http.get(f"{collab.url}/api/collab/{document_id}") as response:
        assert response.status == 404
    client = await collaborators(collab, document_id)
    await client.command("paragraph", text="Hello **world**")
    await poll(lambda: _exported(http, collab, document_id))
    async with http.get(f"{collab.url}/api/collab/{document_id}", params={"format": "text"}) as response:
        assert (await response.text()) == "Hello **world**"
    async with http.get(f"{collab.url}/api/collab/{document_id}", params={"format": "xml"}) as response:
        assert response.status == 400
    async with http.get(f"{collab.url}/api/collab/bad%20id") as response:
        assert response.status == 400


async def _exported(http: aiohttp.ClientSession, collab: Collab, document_id: str) -> bool:
    async with http.get(f"{collab.url}/api/collab/{document_id}", params={"format": "json"}) as response:
        return response.status == 200


async def test_the_ais_text_reaches_collaborators_only_once_stored(start_collab, collaborators, http):
    """The server is the only holder of the AI's updates: a collaborator who saw one the
    store lost would get its text twice from the process that takes the answer over."""
    gated = GatedStore()
    collab = await start_collab(document_store=gated)
    document_id = new_document()
    client = await collaborators(collab, document_id)
    other = await collaborators(collab, document_id)
    await client.command("paragraph", text="Mine")
    await other.command("wait", contains="Mine")
    await collab.rooms.loaded(document_id).flush()  # type: ignore[union-attr]
    gated.gate.clear()
    session_id = await create(http, collab, tokensPerSecond=0, maxTokens=40)
    await post(
        http,
        f"{collab.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    final = await ended(http, collab, session_id)
    await asyncio.wait_for(gated.waiting.wait(), WAIT)
    # The answer is written into the room, and held: no collaborator has any of it, and
    # one who joins now is answered once it is stored.
    room = collab.rooms.loaded(document_id)
    assert room is not None and not room.saved
    late = await collaborators(collab, document_id, synced=False)
    # A collaborator's own typing still goes through meanwhile.
    await other.command("type", text="!", block=0, offset=4)
    await client.command("wait", contains="Mine!")
    assert (await client.dump())["text"] == "Mine!"
    assert not any(event["event"] == "synced" for event in late.events)
    gated.gate.set()
    for collaborator in (client, other, late):
        dump = await written_done(collaborator, session_id)
        assert writer_state(dump, session_id)[0] == len(final["text"])


def _paragraph(text: str) -> dict[str, Any]:
    return {"type": "paragraph", "content": [{"type": "text", "text": text}]}


def _ai_clients(states: dict[str, Any]) -> dict[int, str]:
    """The awareness states that name an AI session: client id -> session."""
    return {
        int(client): state["user"]["aiInstanceId"]
        for client, state in states.items()
        if "aiInstanceId" in (state or {}).get("user", {})
    }


async def test_two_sessions_write_into_one_document_each_as_its_own_client(collab, collaborators, http):
    """Each session writes with a Yjs client id of its own and names itself in an awareness
    state of its own, so that an editor tells the two answers apart (fade-in, reject)."""
    document_id = new_document()
    watcher = await collaborators(collab, document_id)
    reviewer = await collaborators(collab, document_id)
    await watcher.command("paragraph", text="First")
    await watcher.command("paragraph", text="Second")
    await reviewer.command("wait", contains="Second")
    # One answer after "First", the other after "Second" (the end).
    anchors = [(await watcher.command("anchor", index=index))["anchor"] for index in (1, 2)]
    prompts = ["Explain streaming", "Explain collaborative editing"]
    sessions = [await create(http, collab, tokensPerSecond=60, maxTokens=150) for _ in prompts]
    for session_id, prompt, anchor in zip(sessions, prompts, anchors, strict=True):
        status, body = await post(
            http,
            f"{collab.url}/api/streaming/{session_id}/start",
            {"prompt": prompt, "target": {"documentId": document_id, "anchor": anchor}},
        )
        assert status == 200, body

    # While both write: two AI states, one per session, neither under the room's client id.
    shown: dict[int, str] = {}

    async def both_shown() -> bool:
        shown.clear()
        shown.update(_ai_clients((await watcher.command("awareness"))["states"]))
        return len(shown) == 2

    await poll(both_shown)
    room = collab.rooms.loaded(document_id)
    assert room is not None
    assert sorted(shown.values()) == sorted(sessions)
    assert room.doc.client_id not in shown
    client_of = {session: client for client, session in shown.items()}

    finals = [await ended(http, collab, session_id) for session_id in sessions]
    assert [final["state"] for final in finals] == ["completed", "completed"]
    for session_id in sessions:
        await written_done(watcher, session_id)
        await written_done(reviewer, session_id)
    # Both states are gone once the answers are written.
    await watcher.command("waitNoPeer", peer="aiInstanceId")
    await reviewer.command("waitNoPeer", peer="aiInstanceId")

    # Every character of each answer came from its session's client, in transactions of
    # that client alone; the room's own client wrote nothing.
    for client in (watcher, reviewer):
        authors = await client.command("authors")
        assert authors["shared"] == 0
        ai = {int(c): a["session"] for c, a in authors["clients"].items() if a["session"] is not None}
        assert ai == shown
        assert all(authors["clients"][str(c)]["chars"] > 0 for c in shown)
        assert str(room.doc.client_id) not in authors["clients"]

    # Both answers whole, each where its anchor was.
    first = expected([], finals[0]["text"])["content"]
    if first[-1] == {"type": "paragraph"}:
        first.pop()  # not the end of the document: no trailing paragraph
    second = expected([], finals[1]["text"])["content"]
    dump = await watcher.dump()
    assert dump["json"]["content"] == [_paragraph("First"), *first, _paragraph("Second"), *second]
    assert (await reviewer.dump())["json"] == dump["json"]

    # Reject the first answer as the editor does (every item its client made): the second
    # stays whole, for everyone, and in the store.
    rejected = await reviewer.command("reject", client=client_of[sessions[0]])
    assert rejected["deleted"] > 0
    after = [_paragraph("First"), _paragraph("Second"), *second]

    async def rejected_everywhere() -> bool:
        for client in (watcher, reviewer):
            if (await client.dump())["json"]["content"] != after:
                return False
        async with http.get(f"{collab.url}/api/collab/{document_id}", params={"format": "json"}) as response:
            return (await response.json())["content"] == after

    await poll(rejected_everywhere)
    authors = (await watcher.command("authors"))["clients"]
    assert str(client_of[sessions[0]]) not in authors
    assert authors[str(client_of[sessions[1]])]["chars"] > 0


async def test_a_writing_sessions_awareness_state_is_renewed(collab, collaborators, http, monkeypatch):
    """y-protocols drops a state not renewed within 30 s: a pen announces its own again."""
    monkeypatch.setattr(peer, "RENEW_AWARENESS", 0.05)
    document_id = new_document()
    client = await collaborators(collab, document_id)
    session_id = await create(http, collab, tokensPerSecond=5, maxTokens=400)
    await post(
        http,
        f"{collab.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    await client.command("wait", peer="aiInstanceId")
    (pen,) = _ai_clients((await client.command("awareness"))["states"])
    room = collab.rooms.loaded(document_id)
    assert room is not None

    async def renewed() -> bool:
        return room.awareness.meta[pen]["clock"] >= 4 and pen in room.awareness.states

    await poll(renewed)
    status, _ = await post(http, f"{collab.url}/api/streaming/{session_id}/cancel", {})
    assert status == 200
    await client.command("waitNoPeer", peer="aiInstanceId")
    assert pen not in room.awareness.states
