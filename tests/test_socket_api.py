"""Socket.IO: the seed's flow on ``/stream/<id>``, ``join-stream`` on ``/``, pause, resume, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio

from tests.helpers import (
    WAIT,
    assert_exactly_once,
    create_session,
    get_session,
    record_events,
    start_stream,
    stream_viewer,
)

# Every test runs against both Socket.IO WebSocket paths (see conftest.sio_path).
pytestmark = pytest.mark.usefixtures("sio_path")


async def test_seed_flow_create_connect_start_chunks_complete(server, http, sio_clients):
    session_id = await create_session(http, server)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id, "Write about rivers")
    await viewer.wait_finished()

    snapshot = await get_session(http, server, session_id)
    assert snapshot["state"] == "completed"
    assert_exactly_once(viewer, snapshot["chunks"])
    assert viewer.text == snapshot["text"]
    assert snapshot["text"].startswith("# Rivers")
    chunk = viewer.chunks[0]
    assert set(chunk) >= {"content", "timestamp", "metadata", "seq", "sessionId"}
    assert chunk["sessionId"] == session_id
    assert isinstance(chunk["timestamp"], int) and chunk["timestamp"] > 1_600_000_000_000
    assert chunk["metadata"]["provider"] == "demo" and chunk["metadata"]["model"] == "demo"
    assert viewer.completes == [
        {
            "sessionId": session_id,
            "totalChunks": snapshot["chunks"],
            "finishReason": "stop",
            "usage": snapshot["usage"],
        }
    ]
    assert snapshot["usage"]["completionTokens"] > 0
    assert [s["state"] for s in viewer.states] == ["streaming", "completed"]


async def test_unknown_session_namespace_is_refused(server, sio_clients):
    client = sio_clients()
    namespace = "/stream/00000000-0000-4000-8000-000000000000"
    refusals: list[Any] = []
    client.on("connect_error", refusals.append, namespace=namespace)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(server.url, namespaces=[namespace], transports=["websocket"], wait_timeout=WAIT)
    assert refusals == [{"message": "Session not found"}]


async def test_join_stream_on_root_namespace_with_bare_id(server, http, sio_clients):
    session_id = await create_session(http, server)
    client = sio_clients()
    viewer = record_events(client)
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    ack = await client.call("join-stream", session_id, timeout=WAIT)
    epoch = (await get_session(http, server, session_id))["epoch"]
    assert ack == {"ok": True, "state": "created", "lastSeq": -1, "epoch": epoch}
    await start_stream(http, server, session_id)
    await viewer.wait_finished()
    snapshot = await get_session(http, server, session_id)
    assert_exactly_once(viewer, snapshot["chunks"])
    assert viewer.completes[0]["totalChunks"] == snapshot["chunks"]


async def test_late_joiner_gets_the_whole_response_then_complete(server, http, sio_clients):
    session_id = await create_session(http, server)
    _, first = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await first.wait_finished()

    client = sio_clients()
    late = record_events(client)
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    ack = await client.call("join-stream", {"sessionId": session_id}, timeout=WAIT)
    assert ack["ok"] is True and ack["state"] == "completed"
    await late.wait_finished()
    assert late.chunks == first.chunks
    assert late.completes == first.completes


async def test_two_viewers_both_get_everything(server, http, sio_clients):
    session_id = await create_session(http, server, maxTokens=300)
    _, a = await stream_viewer(sio_clients, server, session_id)
    client = sio_clients()
    b = record_events(client)
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    assert (await client.call("join-stream", session_id, timeout=WAIT))["ok"]
    await start_stream(http, server, session_id)
    await a.wait_finished()
    await b.wait_finished()
    snapshot = await get_session(http, server, session_id)
    assert snapshot["chunks"] > 1
    assert_exactly_once(a, snapshot["chunks"])
    assert a.chunks == b.chunks
    assert a.text == b.text == snapshot["text"]


async def _expect_nothing_after(viewer, last_seq: int, seconds: float) -> None:
    """Wait ``seconds`` for a chunk beyond ``last_seq``; the wait must time out."""
    with pytest.raises(TimeoutError):
        await viewer.wait_for(lambda: viewer.seqs and viewer.seqs[-1] > last_seq, timeout=seconds)


async def test_pause_guarantee_then_resume_on_stream_namespace(server, http, sio_clients):
    session_id = await create_session(http, server, tokensPerSecond=200, maxTokens=400)
    client, viewer = await stream_viewer(sio_clients, server, session_id)
    namespace = f"/stream/{session_id}"
    await start_stream(http, server, session_id)
    await viewer.wait_for(lambda: len(viewer.chunks) >= 5)

    ack = await client.call("pause-stream", namespace=namespace, timeout=WAIT)
    assert ack["ok"] is True and ack["state"] == "paused"
    last_seq = ack["lastSeq"]
    assert last_seq >= 4
    await viewer.wait_for(lambda: any(s["state"] == "paused" for s in viewer.states))
    await _expect_nothing_after(viewer, last_seq, 0.5)
    assert (await get_session(http, server, session_id))["state"] == "paused"

    ack = await client.call("resume-stream", namespace=namespace, timeout=WAIT)
    assert ack == {"ok": True, "state": "streaming"}
    await viewer.wait_finished()
    snapshot = await get_session(http, server, session_id)
    assert_exactly_once(viewer, snapshot["chunks"])
    assert viewer.text == snapshot["text"]
    assert snapshot["usage"]["completionTokens"] == 400


async def test_pause_and_resume_by_id_on_root_namespace(server, http, sio_clients):
    session_id = await create_session(http, server, tokensPerSecond=200, maxTokens=300)
    client = sio_clients()
    viewer = record_events(client)
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    await client.call("join-stream", session_id, timeout=WAIT)
    await start_stream(http, server, session_id)
    await viewer.wait_for(lambda: len(viewer.chunks) >= 3)
    ack = await client.call("pause-stream", session_id, timeout=WAIT)
    assert ack["ok"] and ack["state"] == "paused"
    await _expect_nothing_after(viewer, ack["lastSeq"], 0.4)
    assert (await client.call("resume-stream", session_id, timeout=WAIT))["ok"]
    await viewer.wait_finished()
    assert viewer.completes


async def test_pause_stops_pulling_the_provider(start_server, http, sio_clients):
    from tests.fake_providers import CountingProvider

    provider = CountingProvider(tokens_per_second=100)
    server = await start_server(providers={"demo": provider})
    session_id = await create_session(http, server, maxTokens=500)
    client, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await viewer.wait_for(lambda: len(viewer.chunks) >= 3)
    ack = await client.call("pause-stream", namespace=f"/stream/{session_id}", timeout=WAIT)
    pulled = provider.pulled
    await _expect_nothing_after(viewer, ack["lastSeq"], 0.5)
    assert provider.pulled <= pulled + 1, "at most the pull already in flight completes"
    await client.call("resume-stream", namespace=f"/stream/{session_id}", timeout=WAIT)
    await viewer.wait_finished()
    assert viewer.completes[0]["usage"]["completionTokens"] == 500, "every token came after resume"


async def test_cancel_stream_closes_the_provider(start_server, http, sio_clients):
    from tests.fake_providers import CountingProvider

    provider = CountingProvider(tokens_per_second=100)
    server = await start_server(providers={"demo": provider})
    session_id = await create_session(http, server, maxTokens=1000)
    client, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await viewer.wait_for(lambda: len(viewer.chunks) >= 2)
    ack = await client.call("cancel-stream", namespace=f"/stream/{session_id}", timeout=WAIT)
    assert ack == {"ok": True, "state": "cancelled"}
    assert provider.closed.is_set(), "cancel returns once the provider's iterator is closed"
    await viewer.wait_finished()
    assert viewer.completes[0]["finishReason"] == "cancelled"
    assert viewer.states[-1]["state"] == "cancelled"
    snapshot = await get_session(http, server, session_id)
    assert snapshot["state"] == "cancelled"
    assert snapshot["chunks"] == len(viewer.chunks)
    again = await client.call("cancel-stream", namespace=f"/stream/{session_id}", timeout=WAIT)
    assert again["ok"] is False and "cancelled" in again["error"]


async def test_leave_stream_stops_events(server, http, sio_clients):
    session_id = await create_session(http, server, tokensPerSecond=100, maxTokens=200)
    client = sio_clients()
    viewer = record_events(client)
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    await client.call("join-stream", session_id, timeout=WAIT)
    await start_stream(http, server, session_id)
    await viewer.wait_for(lambda: len(viewer.chunks) >= 2)
    assert await client.call("leave-stream", session_id, timeout=WAIT) == {"ok": True}
    count = len(viewer.chunks)
    session = server.manager.get_session(session_id)
    assert session is not None and not session.viewers
    with pytest.raises(TimeoutError):
        await viewer.wait_for(lambda: len(viewer.chunks) > count + 1, timeout=0.4)


async def test_pause_before_start_and_after_finish_is_refused(server, http, sio_clients):
    session_id = await create_session(http, server)
    client, viewer = await stream_viewer(sio_clients, server, session_id)
    namespace = f"/stream/{session_id}"
    ack = await client.call("pause-stream", namespace=namespace, timeout=WAIT)
    assert ack == {"ok": False, "error": "Session has not started"}
    await start_stream(http, server, session_id)
    await viewer.wait_finished()
    ack = await client.call("resume-stream", namespace=namespace, timeout=WAIT)
    assert ack == {"ok": False, "error": "Session already completed"}


MALFORMED: list[Any] = [
    42,
    None,
    {},
    {"lastSeq": 3},
    {"sessionId": 5},
    {"sessionId": "not-a-uuid"},
    {"sessionId": "00000000-0000-4000-8000-000000000000", "lastSeq": "x"},
    {"sessionId": "00000000-0000-4000-8000-000000000000", "lastSeq": -5},
    ["a", "b"],
    True,
    "x" * (1024 * 1024),
    "00000000-0000-4000-8000-000000000000",
]


@pytest.mark.parametrize(
    "event", ["join-stream", "pause-stream", "resume-stream", "cancel-stream", "leave-stream"]
)
async def test_malformed_payloads_get_an_error_ack_and_change_nothing(event, server, http, sio_clients):
    bystander_id = await create_session(http, server, tokensPerSecond=200, maxTokens=200)
    _, bystander = await stream_viewer(sio_clients, server, bystander_id)
    await start_stream(http, server, bystander_id)

    client = sio_clients()
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    for payload in MALFORMED:
        ack = await client.call(event, payload, timeout=WAIT)
        assert ack["ok"] is False, (event, str(payload)[:40])
        assert isinstance(ack["error"], str) and 0 < len(ack["error"]) < 300
    ack = await client.call(event, timeout=WAIT)
    assert ack["ok"] is False
    assert client.connected

    await bystander.wait_finished()
    assert bystander.completes, "other viewers are unaffected"
    fresh = await create_session(http, server, "another-user")
    _, viewer = await stream_viewer(sio_clients, server, fresh)
    await start_stream(http, server, fresh)
    await viewer.wait_finished()
    assert viewer.completes


async def test_unknown_event_gets_an_error_ack(server, sio_clients):
    client = sio_clients()
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    ack = await client.call("no-such-event", "x", timeout=WAIT)
    assert ack == {"ok": False, "error": "Unknown event 'no-such-event'"}


async def test_viewer_limit_refuses_extra_viewers(start_server, http, sio_clients):
    server = await start_server(max_viewers_per_session=2)
    session_id = await create_session(http, server)
    await stream_viewer(sio_clients, server, session_id)
    await stream_viewer(sio_clients, server, session_id)
    third = sio_clients()
    refusals: list[Any] = []
    namespace = f"/stream/{session_id}"
    third.on("connect_error", refusals.append, namespace=namespace)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await third.connect(server.url, namespaces=[namespace], transports=["websocket"], wait_timeout=WAIT)
    assert "maximum of 2 viewers" in refusals[0]["message"]
    client = sio_clients()
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    ack = await client.call("join-stream", session_id, timeout=WAIT)
    assert ack["ok"] is False and "maximum of 2 viewers" in ack["error"]


async def test_stream_state_reaches_every_viewer(server, http, sio_clients):
    session_id = await create_session(http, server, tokensPerSecond=200, maxTokens=200)
    a_client, a = await stream_viewer(sio_clients, server, session_id)
    _, b = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await a.wait_for(lambda: len(a.chunks) >= 2)
    await a_client.call("pause-stream", namespace=f"/stream/{session_id}", timeout=WAIT)
    await b.wait_for(lambda: any(s["state"] == "paused" for s in b.states))
    await a_client.call("resume-stream", namespace=f"/stream/{session_id}", timeout=WAIT)
    await asyncio.gather(a.wait_finished(), b.wait_finished())
    assert [s["state"] for s in b.states] == ["streaming", "paused", "streaming", "completed"]
