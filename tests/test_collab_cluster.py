"""Collaborative documents in Redis mode: real server processes on one real Redis.

Clients of one document on different processes converge; a process that joins late
catches up; the AI's answer survives the SIGKILL of the process writing it: the process
that takes the stream over finishes it in the same blocks, with no character written
twice or left out (the collaborators' documents, checked against StarterKit's schema
after every update, end equal to the whole answer written at once). Awareness crosses
processes too: a collaborator on one process sees the states of those on another (set,
changed, gone when they leave), the AI's state while it writes from another process,
and, joining late, the states already there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.cluster_nodes import create, post, status_of
from tests.collab_fixtures import Collaborator
from tests.helpers import WAIT
from tests.test_collab_peer import expected, new_document, writer_state


@pytest.fixture
def store() -> str:
    return "redis"


def ws(node: Any) -> str:
    return "ws" + node.url[len("http") :] + "/collab"


async def answered(http: Any, node: Any, session_id: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT * 3):
        while True:
            status = await status_of(http, node, session_id)
            if status["state"] in ("completed", "cancelled", "failed"):
                return status
            await asyncio.sleep(0.05)


async def done_in(client: Collaborator, session_id: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT * 3):
        while True:
            dump = await client.dump()
            if writer_state(dump, session_id)[1]:
                return dump
            await asyncio.sleep(0.05)


async def test_clients_on_different_processes_converge_and_a_late_process_catches_up(nodes, collaborators):
    a, b = await nodes(2)
    document_id = new_document()
    on_a = await collaborators(ws(a), document_id)
    on_b = await collaborators(ws(b), document_id)
    await on_a.command("paragraph", text="from A")
    await on_b.command("paragraph", text="from B")
    await on_a.command("wait", contains="from B")
    await on_b.command("wait", contains="from A")
    assert (await on_a.dump())["json"] == (await on_b.dump())["json"]
    (c,) = await nodes(1)
    on_c = await collaborators(ws(c), document_id)
    await on_c.command("wait", contains="from A")
    await on_c.command("wait", contains="from B")
    assert (await on_c.dump())["json"] == (await on_a.dump())["json"]


async def test_the_answer_is_finished_by_a_takeover_with_nothing_doubled_or_lost(nodes, collaborators, http):
    owner, other = await nodes(2)
    document_id = new_document()
    watcher = await collaborators(ws(other), document_id)
    await watcher.command("paragraph", text="Agenda")
    session_id = await create(http, owner, tokensPerSecond=40, maxTokens=240)
    status, body = await post(
        http,
        f"{owner.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    assert status == 200, body
    # Mid-answer: the AI has written some of it into the document, from the owner.
    async with asyncio.timeout(WAIT):
        while writer_state(await watcher.dump(), session_id)[0] < 80:
            await asyncio.sleep(0.02)
    owner.kill()
    final = await answered(http, other, session_id)
    assert final["state"] == "completed", final
    dump = await done_in(watcher, session_id)
    assert writer_state(dump, session_id)[0] == len(final["text"])
    assert dump["json"] == expected(["Agenda"], final["text"])
    late = await collaborators(ws(other), document_id)
    assert (await late.dump())["json"] == dump["json"]


async def test_collaborators_and_the_ai_through_nginx(behind_nginx, collaborators, http):
    """The config ``make cluster`` uses: y-websocket upgrades on /collab reach either
    process (round robin), and every collaborator sees the AI's answer."""
    url = behind_nginx
    document_id = new_document()
    first = await collaborators("ws" + url[len("http") :] + "/collab", document_id)
    second = await collaborators("ws" + url[len("http") :] + "/collab", document_id)
    await first.command("paragraph", text="Hello from one")
    await second.command("wait", contains="Hello from one")
    status, body = await post(
        http, f"{url}/api/streaming/session", {"userId": "u", "config": {"maxTokens": 60}}
    )
    session_id = body["sessionId"]
    status, body = await post(
        http,
        f"{url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    assert status == 200, body
    dumps = [await done_in(client, session_id) for client in (first, second)]
    assert dumps[0]["json"] == dumps[1]["json"]
    final = await answered(http, type("N", (), {"url": url})(), session_id)
    assert dumps[0]["json"] == expected(["Hello from one"], final["text"])


async def test_awareness_crosses_processes_and_leaves_with_its_client(nodes, collaborators):
    a, b = await nodes(2)
    document_id = new_document()
    on_b = await collaborators(ws(b), document_id)
    leaving = await collaborators(ws(a), document_id)
    killed = await collaborators(ws(a), document_id)
    await leaving.command("user", fields={"name": "Leaving"})
    await killed.command("user", fields={"name": "Killed", "caret": 1})
    await on_b.command("wait", peer="name", value="Leaving")
    await on_b.command("wait", peer="name", value="Killed")
    await killed.command("user", fields={"caret": 2})
    await on_b.command("wait", peer="caret", value=2)
    # One says goodbye (its own null state); the other's process removes it for it.
    await leaving.leave()
    await on_b.command("waitNoPeer", peer="name", value="Leaving")
    killed.kill()
    await on_b.command("waitNoPeer", peer="name", value="Killed")
    # And back: A's room has B's client (the server sent every state it knew).
    watcher = await collaborators(ws(a), document_id)
    await on_b.command("user", fields={"name": "On B"})
    await watcher.command("wait", peer="name", value="On B")


async def test_a_late_joiner_on_another_process_sees_the_states_already_there(nodes, collaborators):
    """Process B opens the document after A's client set its state: it reads the document's
    recent awareness first, so its client sees A's at once, not at A's next renewal."""
    a, b = await nodes(2)
    document_id = new_document()
    on_a = await collaborators(ws(a), document_id)
    await on_a.command("user", fields={"name": "Early"})
    await on_a.command("paragraph", text="from A")
    late = await collaborators(ws(b), document_id)
    await late.command("wait", contains="from A", peer="name", value="Early", timeout=5000)


async def test_the_ais_state_shows_on_another_process_while_it_writes(nodes, collaborators, http):
    owner, other = await nodes(2)
    document_id = new_document()
    watcher = await collaborators(ws(other), document_id)
    await watcher.command("paragraph", text="Agenda")
    session_id = await create(http, owner, tokensPerSecond=40, maxTokens=120)
    status, body = await post(
        http,
        f"{owner.url}/api/streaming/{session_id}/start",
        {"prompt": "Explain streaming", "target": {"documentId": document_id}},
    )
    assert status == 200, body
    await watcher.command("wait", peer="aiInstanceId", value=session_id)
    dump = await done_in(watcher, session_id)
    assert writer_state(dump, session_id)[0] > 0
    # Done: its state is taken away, for the collaborators of every process.
    assert (await answered(http, owner, session_id))["state"] == "completed"
    await watcher.command("waitNoPeer", peer="aiInstanceId")
    authors = (await watcher.command("authors"))["clients"]
    assert session_id in {client["session"] for client in authors.values()}
