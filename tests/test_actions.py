"""Editor actions on the real server (memory and Redis mode): the start body's `action`,
`context`, `options` and `followUp`, the demo provider doing each action, the refusals of
PROTOCOL.md, ``GET /api/streaming/actions`` and the counts in ``/metrics``."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from server.core.actions import BUILT_IN
from tests.helpers import LiveServer, create_session, get_session, stream_viewer

PARAGRAPH = (
    "This is a very good paragraph about teh editor. It really explains how streaming works in detail. "
    "And it has a third sentence that is quite long."
)


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json()


async def run(
    server: LiveServer, http, sio_clients, body: dict[str, Any], user: str = "user-1", **config: Any
):
    """Start a session with ``body`` and wait for its end: (session id, status)."""
    session_id = await create_session(http, server, user, tokensPerSecond=0.0, **config)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    status, answer = await post(http, f"{server.url}/api/streaming/{session_id}/start", body)
    assert status == 200, answer
    await viewer.wait_finished()
    return session_id, await get_session(http, server, session_id)


async def test_the_actions_are_listed_for_a_menu(server, http):
    async with http.get(f"{server.url}/api/streaming/actions") as response:
        assert response.status == 200
        listed = (await response.json())["actions"]
    assert [a["id"] for a in listed] == list(BUILT_IN)
    shorten = next(a for a in listed if a["id"] == "shorten")
    assert shorten == {
        "id": "shorten",
        "label": "Make shorter",
        "needsSelection": True,
        "options": [],
        "insert": "replace",
    }
    assert next(a for a in listed if a["id"] == "translate")["options"] == ["language"]
    assert next(a for a in listed if a["id"] == "summarize")["insert"] == "after"


@pytest.mark.parametrize(
    ("action", "check"),
    [
        ("shorten", lambda text: 0 < len(text) < len(PARAGRAPH)),
        ("expand", lambda text: len(text) > len(PARAGRAPH)),
        ("fix", lambda text: "the editor" in text and "teh" not in text),
        ("simplify", lambda text: "very" not in text),
        ("summarize", lambda text: text.startswith("**Summary:**")),
    ],
)
async def test_the_demo_does_each_rewrite(action, check, server, http, sio_clients):
    body = {"action": action, "context": {"selection": PARAGRAPH, "before": "# Notes\n\n", "after": ""}}
    _, status = await run(server, http, sio_clients, body)
    assert status["state"] == "completed" and check(status["text"]), status["text"]
    assert (status["action"], status["followUp"]) == (action, None)


async def test_translate_and_tone_visibly_transform(server, http, sio_clients):
    body = {
        "action": "translate",
        "context": {"selection": "This is the text"},
        "options": {"language": "Spanish"},
    }
    assert (await run(server, http, sio_clients, body))[1]["text"] == "Esto es el texto"
    body = {
        "action": "tone",
        "context": {"selection": "It's fine, don't worry."},
        "options": {"tone": "formal"},
    }
    assert (await run(server, http, sio_clients, body))[1]["text"] == "It is fine, do not worry."


async def test_continue_and_complete_follow_on_from_the_text_before(server, http, sio_clients):
    before = "Streaming makes an editor feel alive."
    _, continued = await run(server, http, sio_clients, {"action": "continue", "context": {"before": before}})
    assert continued["text"].startswith(" ") and continued["text"].count(".") >= 2
    _, completed = await run(
        server, http, sio_clients, {"action": "complete", "context": {"before": "It streams"}}
    )
    assert 0 < len(completed["text"].split()) <= 12
    # complete's maxTokens is small unless the config sets one: the answer fits in it.
    assert completed["usage"]["completionTokens"] <= 48


async def test_a_bare_prompt_is_answered_as_before(server, http, sio_clients):
    _, status = await run(server, http, sio_clients, {"prompt": "Explain streaming"})
    assert status["text"].startswith("# Streaming") and status["action"] == "custom"


async def test_a_follow_up_continues_the_conversation(server, http, sio_clients):
    first, earlier = await run(
        server, http, sio_clients, {"action": "shorten", "context": {"selection": PARAGRAPH}}
    )
    second, status = await run(server, http, sio_clients, {"prompt": "make it shorter", "followUp": first})
    assert status["followUp"] == first and status["action"] == "custom"
    # The demo shortens the earlier answer again.
    assert 0 < len(status["text"]) < len(earlier["text"])
    _, third = await run(server, http, sio_clients, {"prompt": "more formal", "followUp": second})
    assert third["followUp"] == second


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"action": "rewrite-all", "prompt": "x"}, 400, "rewrite-all"),
        ({"action": "shorten"}, 400, "context.selection"),
        ({"action": "translate", "context": {"selection": "Hi"}}, 400, "options.language"),
        ({"action": "custom", "prompt": "  "}, 400, "prompt"),
        ({"action": "continue", "context": {"before": 5}}, 400, "before"),
        ({"prompt": "x", "followUp": "not-a-session"}, 404, "followUp"),
        ({"prompt": "x", "followUp": "6f1c1f8e-2f0a-4a7b-9a51-0d6c2b1c9e11"}, 404, "followUp"),
        ({"action": "fix", "context": {"selection": "x" * 60}}, 413, "MAX_CONTEXT_CHARS"),
    ],
)
async def test_refusals(body, status, words, start_server, http):
    server = await start_server(max_context_chars=50)
    session_id = await create_session(http, server)
    got, answer = await post(http, f"{server.url}/api/streaming/{session_id}/start", body)
    assert got == status and words in answer["error"], answer
    # Nothing was started: a correct start still works.
    got, _ = await post(http, f"{server.url}/api/streaming/{session_id}/start", {"prompt": "x"})
    assert got == 200


async def test_a_follow_up_of_another_user_is_403_and_of_a_new_session_409(server, http, sio_clients):
    theirs, _ = await run(server, http, sio_clients, {"prompt": "theirs"}, user="user-2")
    mine = await create_session(http, server, "user-1")
    got, answer = await post(
        http, f"{server.url}/api/streaming/{mine}/start", {"prompt": "x", "followUp": theirs}
    )
    assert got == 403 and "followUp" in answer["error"]
    unstarted = await create_session(http, server, "user-1")
    got, answer = await post(
        http, f"{server.url}/api/streaming/{mine}/start", {"prompt": "x", "followUp": unstarted}
    )
    assert got == 409 and "never started" in answer["error"]


async def test_the_follow_up_chain_is_bounded(start_server, http, sio_clients):
    server = await start_server(max_follow_ups=2)
    earlier, _ = await run(server, http, sio_clients, {"prompt": "one"})
    for _ in range(2):
        earlier, _ = await run(server, http, sio_clients, {"prompt": "again", "followUp": earlier})
    session_id = await create_session(http, server)
    got, answer = await post(
        http, f"{server.url}/api/streaming/{session_id}/start", {"prompt": "again", "followUp": earlier}
    )
    assert got == 400 and "MAX_FOLLOW_UPS" in answer["error"]


async def test_metrics_count_sessions_by_action(server, http, sio_clients):
    async def count(action: str) -> float:
        async with http.get(f"{server.url}/metrics") as response:
            text = await response.text()
        line = f'streaming_sessions_started_total{{action="{action}"}} '
        return next((float(row[len(line) :]) for row in text.splitlines() if row.startswith(line)), 0.0)

    before = await count("shorten")
    await run(server, http, sio_clients, {"action": "shorten", "context": {"selection": PARAGRAPH}})
    assert await count("shorten") == before + 1


async def test_the_operator_s_prompts_file_adds_an_action(start_server, http, sio_clients, tmp_path):
    path = tmp_path / "prompts.toml"
    path.write_text(
        '[actions.legal]\nlabel = "Legalese"\nsystem = "Lawyer."\nuser = "Rewrite: {marked}"\n'
        'needsSelection = true\ninsert = "replace"\n'
    )
    server = await start_server(prompts_file=path)
    async with http.get(f"{server.url}/api/streaming/actions") as response:
        ids = [a["id"] for a in (await response.json())["actions"]]
    assert ids[-1] == "legal"
    _, status = await run(server, http, sio_clients, {"action": "legal", "context": {"selection": "Hi"}})
    assert status["state"] == "completed" and status["action"] == "legal"


async def test_a_follow_up_of_a_session_still_streaming_is_409(server, http, sio_clients):
    live = await create_session(http, server, "user-1", tokensPerSecond=5.0)
    got, _ = await post(http, f"{server.url}/api/streaming/{live}/start", {"prompt": "slow"})
    assert got == 200
    session_id = await create_session(http, server, "user-1")
    got, answer = await post(
        http, f"{server.url}/api/streaming/{session_id}/start", {"prompt": "x", "followUp": live}
    )
    assert got == 409 and "still streaming" in answer["error"]
    async with http.post(f"{server.url}/api/streaming/{live}/cancel") as response:
        assert response.status == 200
