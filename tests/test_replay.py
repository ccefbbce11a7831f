"""Lossless reconnect: a viewer that drops and comes back with ``lastSeq`` gets every chunk once."""

from __future__ import annotations

import pytest

from tests.helpers import (
    WAIT,
    assert_exactly_once,
    create_session,
    get_session,
    record_events,
    start_stream,
    stream_viewer,
    wait_until,
)

# Every test runs against both Socket.IO WebSocket paths (see conftest.sio_path).
pytestmark = pytest.mark.usefixtures("sio_path")


async def test_reconnect_to_stream_namespace_with_auth_last_seq(server, http, sio_clients):
    session_id = await create_session(http, server, tokensPerSecond=300, maxTokens=600)
    client, first = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await first.wait_for(lambda: len(first.chunks) >= 10)
    await client.disconnect()
    last_seq = first.seqs[-1]

    session = server.manager.get_session(session_id)
    assert session is not None
    # The stream keeps going into the log with no viewer connected.
    await wait_until(lambda: session.last_seq > last_seq + 5)

    _, second = await stream_viewer(sio_clients, server, session_id, auth={"lastSeq": last_seq})
    await second.wait_finished()
    snapshot = await get_session(http, server, session_id)
    combined = first.chunks + second.chunks
    assert [c["seq"] for c in combined] == list(range(snapshot["chunks"]))
    assert "".join(c["content"] for c in combined) == snapshot["text"]


async def test_rejoin_on_root_namespace_with_last_seq(server, http, sio_clients):
    session_id = await create_session(http, server, tokensPerSecond=300, maxTokens=500)
    client = sio_clients()
    first = record_events(client)
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    await client.call("join-stream", {"sessionId": session_id}, timeout=WAIT)
    await start_stream(http, server, session_id)
    await first.wait_for(lambda: len(first.chunks) >= 8)
    await client.disconnect()
    last_seq = first.seqs[-1]

    again = sio_clients()
    second = record_events(again)
    await again.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    ack = await again.call("join-stream", {"sessionId": session_id, "lastSeq": last_seq}, timeout=WAIT)
    assert ack["ok"] is True and ack["lastSeq"] >= last_seq
    await second.wait_finished()
    snapshot = await get_session(http, server, session_id)
    assert first.seqs + second.seqs == list(range(snapshot["chunks"]))


async def test_server_side_disconnect_then_resume(server, http, sio_clients):
    """The server drops the socket (as it does to a stalled viewer); the client resumes."""
    session_id = await create_session(http, server, tokensPerSecond=300, maxTokens=500)
    client, first = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await first.wait_for(lambda: len(first.chunks) >= 5)
    session = server.manager.get_session(session_id)
    assert session is not None
    (viewer,) = session.viewers.values()
    viewer.close("test")
    await wait_until(lambda: f"/stream/{session_id}" not in client.namespaces)
    assert not session.viewers

    _, second = await stream_viewer(sio_clients, server, session_id, auth={"lastSeq": first.seqs[-1]})
    await second.wait_finished()
    snapshot = await get_session(http, server, session_id)
    assert first.seqs + second.seqs == list(range(snapshot["chunks"]))


async def test_many_drops_lose_and_double_nothing(server, http, sio_clients):
    session_id = await create_session(http, server, tokensPerSecond=400, maxTokens=800)
    await start_stream(http, server, session_id)
    received: list[dict] = []
    last_seq = -1
    for _ in range(6):
        client, viewer = await stream_viewer(sio_clients, server, session_id, auth={"lastSeq": last_seq})
        await viewer.wait_for(lambda v=viewer: len(v.chunks) >= 3 or v.finished)
        await client.disconnect()
        received += viewer.chunks
        if received:
            last_seq = received[-1]["seq"]
    _, viewer = await stream_viewer(sio_clients, server, session_id, auth={"lastSeq": last_seq})
    await viewer.wait_finished()
    received += viewer.chunks
    snapshot = await get_session(http, server, session_id)
    assert [c["seq"] for c in received] == list(range(snapshot["chunks"]))
    assert "".join(c["content"] for c in received) == snapshot["text"]


async def test_bad_auth_last_seq_is_refused(server, http, sio_clients):
    import pytest
    import socketio

    session_id = await create_session(http, server)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await stream_viewer(sio_clients, server, session_id, auth={"lastSeq": "soon"})
    _, viewer = await stream_viewer(sio_clients, server, session_id, auth={"lastSeq": -1})
    await start_stream(http, server, session_id)
    await viewer.wait_finished()
    assert_exactly_once(viewer, len(viewer.chunks))


async def finished(http, server, sio_clients, **config) -> tuple[str, dict]:
    """A finished session. Its tokens come over 0.4 s, so it has several chunks even when a
    busy machine stretches the coalescing window to COALESCE_MAX_MS."""
    session_id = await create_session(http, server, **config)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await viewer.wait_finished()
    return session_id, await get_session(http, server, session_id)


async def test_same_epoch_resumes_after_last_seq(server, http, sio_clients):
    session_id, status = await finished(http, server, sio_clients, maxTokens=40, tokensPerSecond=40)
    # A loop that runs late makes fewer, larger chunks: resume inside the log however many.
    assert status["chunks"] >= 2
    last_seq = min(3, status["chunks"] - 2)
    client = sio_clients()
    namespace = f"/stream/{session_id}"
    viewer = record_events(client, namespace)
    auth = {"lastSeq": last_seq, "epoch": status["epoch"]}
    await client.connect(
        server.url, namespaces=[namespace], transports=["websocket"], auth=auth, wait_timeout=WAIT
    )
    await viewer.wait_finished()
    assert viewer.resets == []
    assert viewer.seqs == list(range(last_seq + 1, status["chunks"]))


@pytest.mark.parametrize("auth", [{"lastSeq": 3, "epoch": "another"}, {"lastSeq": 10_000}])
async def test_another_epoch_or_a_last_seq_past_the_log_resets(server, http, sio_clients, auth):
    session_id, status = await finished(http, server, sio_clients, maxTokens=40, tokensPerSecond=100)
    client = sio_clients()
    namespace = f"/stream/{session_id}"
    viewer = record_events(client, namespace)
    await client.connect(
        server.url, namespaces=[namespace], transports=["websocket"], auth=auth, wait_timeout=WAIT
    )
    await viewer.wait_finished()
    assert viewer.resets == [
        {"sessionId": session_id, "epoch": status["epoch"], "lastSeq": status["chunks"] - 1}
    ]
    assert_exactly_once(viewer, status["chunks"])
    assert viewer.text == status["text"], "the whole history, never a splice"


async def test_join_stream_with_another_epoch_resets(server, http, sio_clients):
    session_id, status = await finished(http, server, sio_clients, maxTokens=40, tokensPerSecond=100)
    client = sio_clients()
    viewer = record_events(client)
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    ack = await client.call(
        "join-stream", {"sessionId": session_id, "lastSeq": 2, "epoch": "x"}, timeout=WAIT
    )
    assert ack["epoch"] == status["epoch"]
    await viewer.wait_finished()
    assert len(viewer.resets) == 1
    assert_exactly_once(viewer, status["chunks"])


async def test_plain_websocket_with_another_epoch_resets(server, http, sio_clients):
    from tests.test_ws_api import open_ws

    session_id, status = await finished(http, server, sio_clients, maxTokens=40, tokensPerSecond=100)
    viewer = await open_ws(http, server, session_id, "?lastSeq=2&epoch=x")
    await viewer.recorder.wait_finished()
    assert viewer.frames[0] == {
        "type": "stream-reset",
        "sessionId": session_id,
        "epoch": status["epoch"],
        "lastSeq": status["chunks"] - 1,
    }
    assert viewer.recorder.seqs == list(range(status["chunks"]))
    await viewer.ws.close()
