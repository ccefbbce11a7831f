"""Real SDKs end to end: server → provider → upstream upstream, and back to a Socket.IO viewer."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fake_upstream import Script
from tests.helpers import (
    create_session,
    get_session,
    start_stream,
    stream_viewer,
)
from tests.upstream_fixtures import ANTHROPIC_KEY, OPENAI_KEY

PROMPT = "Summarise the plot of a secret novel"
PROVIDERS = ["openai", "anthropic"]


async def run(server, http, sio_clients, provider: str, **config: Any):
    session_id = await create_session(http, server, provider=provider, **config)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id, PROMPT)
    await viewer.wait_finished()
    return session_id, viewer, await get_session(http, server, session_id)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_happy_path_with_usage_in_complete(provider, upstream_server, upstream, http, sio_clients):
    upstream.script = Script(tokens=["Once", " upon", " a", " time", "."])
    server = await upstream_server()
    _, viewer, snapshot = await run(
        server, http, sio_clients, provider, model="model-x", systemPrompt="Be brief"
    )
    assert viewer.text == snapshot["text"] == "Once upon a time."
    assert viewer.seqs == list(range(snapshot["chunks"]))
    assert viewer.chunks[0]["metadata"]["provider"] == provider
    assert viewer.chunks[0]["metadata"]["model"] == "model-x"
    usage = {"promptTokens": 11, "completionTokens": 5, "totalTokens": 16}
    assert viewer.completes[0]["usage"] == usage == snapshot["usage"]
    assert viewer.completes[0]["finishReason"] == "stop" == snapshot["finishReason"]
    assert snapshot["provider"] == provider and snapshot["model"] == "model-x"
    request = upstream.requests[0]
    assert request.body["model"] == "model-x"
    assert "Be brief" in str(request.body)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("script", "code"),
    [
        (Script(status=401), "auth"),
        (Script(status=429), "rate_limited"),
        (Script(status=500), "upstream"),
        (Script(status=404), "bad_request"),
        (Script(drop_after=2), "upstream"),
    ],
    ids=["401", "429", "500", "404-retired-model", "dropped"],
)
async def test_upstream_failures_become_stream_errors(
    provider, script, code, upstream_server, upstream, http, sio_clients, caplog
):
    upstream.script = script
    server = await upstream_server()
    _, viewer, snapshot = await run(server, http, sio_clients, provider, model="gpt-4")
    assert snapshot["state"] == "failed"
    (error,) = viewer.errors
    assert error["code"] == code and error["error"]
    assert snapshot["error"] == {"code": code, "error": error["error"]}
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, PROMPT):
        assert secret not in error["error"]
        assert secret not in caplog.text
    if script.drop_after:
        assert viewer.text == snapshot["text"] != "", "chunks already sent stay valid"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_first_token_is_a_timeout(provider, upstream_server, upstream, http, sio_clients):
    upstream.script = Script(hang="before_first_token")
    server = await upstream_server(first_token_timeout=0.3)
    _, viewer, _ = await run(server, http, sio_clients, provider)
    assert viewer.errors[0]["code"] == "timeout"
    await upstream.requests[0].wait_disconnected()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_silence_mid_stream_is_a_timeout(provider, upstream_server, upstream, http, sio_clients):
    upstream.script = Script(tokens=["a", "b", "c"], pause_after=2)
    server = await upstream_server(token_idle_timeout=0.3)
    _, viewer, snapshot = await run(server, http, sio_clients, provider)
    assert viewer.errors[0]["code"] == "timeout"
    assert snapshot["text"] == "ab"
    await upstream.requests[0].wait_disconnected()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancel_closes_the_upstream_connection(provider, upstream_server, upstream, http, sio_clients):
    upstream.script = Script(tokens=["x"] * 50, pause_after=3)
    server = await upstream_server()
    session_id = await create_session(http, server, provider=provider)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id, PROMPT)
    await viewer.wait_for(lambda: len(viewer.text) >= 3)
    async with http.post(f"{server.url}/api/streaming/{session_id}/cancel") as resp:
        assert resp.status == 200
    request = upstream.requests[0]
    await request.wait_disconnected()
    assert not request.finished.is_set() and request.tokens_sent == 3


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_pause_does_not_read_upstream(provider, upstream_server, upstream, http, sio_clients):
    upstream.script = Script(tokens=[f"t{i} " for i in range(40)], token_delay=0.005)
    server = await upstream_server()
    session_id = await create_session(http, server, provider=provider)
    client, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id, PROMPT)
    await viewer.wait_for(lambda: len(viewer.chunks) >= 2)
    ack = await client.call("pause-stream", namespace=f"/stream/{session_id}")
    session = server.manager.get_session(session_id)
    assert session is not None
    held = session.emitter.pending_chars
    with pytest.raises(TimeoutError):
        await viewer.wait_for(lambda: viewer.seqs[-1] > ack["lastSeq"], timeout=0.4)
    assert session.emitter.pending_chars - held <= len("t39 "), "at most the read in flight lands"
    await client.call("resume-stream", namespace=f"/stream/{session_id}")
    await viewer.wait_finished()
    assert viewer.text == "".join(f"t{i} " for i in range(40))
    await upstream.requests[0].wait_finished()
