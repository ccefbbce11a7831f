"""Failover of OpenAI background-mode streams (``OPENAI_BACKGROUND=true``): the response
keeps running at OpenAI (here the fake upstream, through the real SDK) while the process
that read it dies; another process re-attaches with ``starting_after`` and the viewers get
the same text as an undisturbed run. Cancel after a takeover cancels the response."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.cluster_nodes import (
    OPENAI_KEY,
    Node,
    StartNodes,
    assert_contiguous,
    create,
    post,
    start,
    status_of,
)
from tests.fake_upstream import FakeUpstream, Script
from tests.helpers import WAIT

TOKENS = [f"word{i} " for i in range(150)]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(api_key=OPENAI_KEY) as upstream:
        upstream.script = Script(tokens=TOKENS, token_delay=0.02)
        yield upstream


async def openai_nodes(nodes: StartNodes, fake: FakeUpstream, count: int) -> list[Node]:
    return await nodes(
        count, OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=fake.openai_base_url, OPENAI_BACKGROUND="true"
    )


async def test_killed_owner_another_process_reattaches_to_the_response(nodes, http, viewers, fake):
    a, b, c = await openai_nodes(nodes, fake, 3)
    session_id = await create(http, a, provider="openai")
    _, on_b = await viewers(b, session_id)
    _, on_c = await viewers(c, session_id)
    await start(http, a, session_id)
    response = await fake.wait_for_response()
    await on_b.wait_for(lambda: len(on_b.chunks) >= 5)
    a.kill()
    for viewer in (on_b, on_c):
        await viewer.wait_finished(timeout=WAIT + 30)
    final = await status_of(http, b, session_id)
    assert on_b.errors == [] and len(on_b.completes) == 1
    assert final["state"] == "completed"
    assert_contiguous(on_b, final["chunks"])
    assert on_b.text == on_c.text == final["text"] == "".join(TOKENS)
    assert final["usage"]["completionTokens"] == len(TOKENS)
    # Another process re-attached, after the logged position, to the same response: nothing
    # was asked of the model twice. (On a loaded machine a successor can itself miss its
    # 1 s lease and be fenced off by a third process, which re-attaches once more: each
    # re-attachment reads on from the log, never from the start.)
    (created,) = fake.requests_to("POST", "/v1/responses")
    assert created.body["background"] is True
    resumed = fake.requests_to("GET", f"/v1/responses/{response.id}")
    assert resumed and all(int(r.query["starting_after"]) > 0 for r in resumed)
    assert response.cancel_calls == 0


async def test_cancel_after_a_takeover_cancels_the_response(nodes, http, viewers, fake):
    a, b = await openai_nodes(nodes, fake, 2)
    fake.script = Script(tokens=TOKENS * 10, token_delay=0.02)
    session_id = await create(http, a, provider="openai")
    _, on_b = await viewers(b, session_id)
    await start(http, a, session_id)
    response = await fake.wait_for_response()
    await on_b.wait_for(lambda: len(on_b.chunks) >= 5)
    a.kill()
    resumed = await fake.wait_for_request_to("GET", f"/v1/responses/{response.id}")
    before = len(on_b.chunks)
    await on_b.wait_for(lambda: len(on_b.chunks) > before + 3, timeout=WAIT + 30)
    status, body = await post(http, f"{b.url}/api/streaming/{session_id}/cancel")
    assert (status, body) == (200, {"status": "cancelled"})
    await fake.wait_cancelled(response.id)
    await resumed.wait_disconnected()
    await on_b.wait_finished()
    assert on_b.completes[0]["finishReason"] == "cancelled"
    assert on_b.errors == []
    assert_contiguous(on_b, (await status_of(http, b, session_id))["chunks"])


async def test_a_takeover_of_an_action_goes_on_with_the_same_conversation(nodes, http, viewers, fake):
    a, b = await openai_nodes(nodes, fake, 2)
    session_id = await create(http, a, provider="openai")
    _, on_b = await viewers(b, session_id)
    selection = "A paragraph the writer selected, to be made shorter."
    status, body = await post(
        http,
        f"{a.url}/api/streaming/{session_id}/start",
        {"action": "shorten", "context": {"selection": selection, "before": "Intro. "}},
    )
    assert status == 200, body
    response = await fake.wait_for_response()
    await on_b.wait_for(lambda: len(on_b.chunks) >= 5)
    a.kill()
    await on_b.wait_finished(timeout=WAIT + 30)
    final = await status_of(http, b, session_id)
    assert on_b.errors == [] and final["state"] == "completed"
    assert on_b.text == final["text"] == "".join(TOKENS)
    # The conversation was asked once, with the action's messages; the successor re-attached
    # to that response and knows what it was (for a follow-up from any process).
    (created,) = fake.requests_to("POST", "/v1/responses")
    assert f"Intro. <selection>{selection}</selection>" in created.body["input"]
    assert "replacement text only" in created.body["instructions"]
    assert fake.requests_to("GET", f"/v1/responses/{response.id}")
    assert final["action"] == "shorten"
