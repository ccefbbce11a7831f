"""What the model receives: the server, the real OpenAI and Anthropic SDKs and the upstream
upstream, which records every request. The selection arrives verbatim and marked inside
its context; the action's system message arrives; the context window keeps the text
nearest the cursor; a follow-up sends the earlier answer as an assistant turn; OpenAI's
background mode carries the same messages."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fake_upstream import FakeUpstream, Script
from tests.helpers import create_session, stream_viewer

SELECTION = "The {quick} brown fox *jumps* over the lazy dog."
BEFORE = "# A story\n\nIt was a sunny day. "
AFTER = " Then it rained."
ANSWER = ["A", " fox", " jumped", "."]


@pytest.fixture(autouse=True)
def answer(upstream: FakeUpstream) -> None:
    upstream.script = Script(tokens=ANSWER)


async def ask(server, http, sio_clients, provider: str, body: dict[str, Any], **config: Any) -> str:
    session_id = await create_session(http, server, provider=provider, **config)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    async with http.post(f"{server.url}/api/streaming/{session_id}/start", json=body) as response:
        assert response.status == 200, await response.text()
    await viewer.wait_finished()
    assert viewer.errors == [], viewer.errors
    return session_id


def messages_of(body: dict[str, Any], provider: str) -> tuple[str | None, list[tuple[str, str]]]:
    """(system message, [(role, content)]) of a recorded request, whatever its API."""
    if provider == "anthropic":
        return body.get("system"), [(m["role"], m["content"]) for m in body["messages"]]
    if "input" in body:  # the Responses API (background mode)
        items = body["input"]
        turns = [("user", items)] if isinstance(items, str) else [(m["role"], m["content"]) for m in items]
        return body.get("instructions"), turns
    turns = [(m["role"], m["content"]) for m in body["messages"]]
    system = turns.pop(0)[1] if turns and turns[0][0] == "system" else None
    return system, turns


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_rewrite_sends_the_selection_marked_in_its_context(
    provider, upstream_server, upstream, http, sio_clients
):
    server = await upstream_server()
    body = {"action": "shorten", "context": {"selection": SELECTION, "before": BEFORE, "after": AFTER}}
    await ask(server, http, sio_clients, provider, body, systemPrompt="Write in British English.")
    system, turns = messages_of((await upstream.wait_for_request()).body, provider)
    assert system is not None
    assert "replacement text only" in system and system.endswith("Write in British English.")
    ((role, user),) = turns
    assert role == "user"
    assert f"{BEFORE}<selection>{SELECTION}</selection>{AFTER}" in user
    assert "shorter" in user


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_bare_prompt_is_sent_alone(provider, upstream_server, upstream, http, sio_clients):
    server = await upstream_server()
    await ask(server, http, sio_clients, provider, {"prompt": "Write a haiku"})
    system, turns = messages_of((await upstream.wait_for_request()).body, provider)
    assert (system, turns) == (None, [("user", "Write a haiku")])


async def test_the_context_window_keeps_the_text_nearest_the_cursor(
    upstream_server, upstream, http, sio_clients
):
    server = await upstream_server(max_context_chars=100)
    before = "FAR " * 50 + "near the cursor. "
    after = " right after" + " far" * 50
    body = {"action": "continue", "context": {"before": before, "after": after}}
    await ask(server, http, sio_clients, "openai", body)
    _, [(_, user)] = messages_of((await upstream.wait_for_request()).body, "openai")
    marked = user[user.index("<document>") :]
    assert "near the cursor. <cursor/> right after" in marked
    assert marked.count("FAR") + marked.count("far") < 25
    cut_before = marked[len("<document>\n") : marked.index("<cursor/>")]
    assert before.endswith(cut_before) and len(cut_before) == 50


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_follow_up_sends_the_earlier_answer_as_an_assistant_turn(
    provider, upstream_server, upstream, http, sio_clients
):
    server = await upstream_server()
    body = {"action": "shorten", "context": {"selection": SELECTION}}
    first = await ask(server, http, sio_clients, provider, body)
    await ask(server, http, sio_clients, provider, {"prompt": "even shorter", "followUp": first})
    first_system, [(_, first_user)] = messages_of((await upstream.wait_for_request(0)).body, provider)
    system, turns = messages_of((await upstream.wait_for_request(1)).body, provider)
    assert system == first_system
    assert turns == [("user", first_user), ("assistant", "".join(ANSWER)), ("user", "even shorter")]


async def test_background_mode_carries_the_same_messages(upstream_server, upstream, http, sio_clients):
    server = await upstream_server(openai_background=True)
    first = await ask(
        server, http, sio_clients, "openai", {"action": "fix", "context": {"selection": SELECTION}}
    )
    await ask(server, http, sio_clients, "openai", {"prompt": "now in French", "followUp": first})
    created = upstream.requests_to("POST", "/v1/responses")
    assert [r.body["background"] for r in created] == [True, True]
    system, [(role, user)] = messages_of(created[0].body, "openai")
    assert role == "user" and f"<selection>{SELECTION}</selection>" in user and "Fix" in user
    assert system is not None and "replacement text only" in system
    assert messages_of(created[1].body, "openai") == (
        system,
        [("user", user), ("assistant", "".join(ANSWER)), ("user", "now in French")],
    )
