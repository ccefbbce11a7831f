"""Snapshot joins: one ``snapshot`` event with everything logged so far, then the live tail,
with no gap or duplicate at the seam, on both Socket.IO WebSocket paths."""

from __future__ import annotations

import pytest

from tests.helpers import WAIT, create_session, get_session, record_events, start_stream, stream_viewer

pytestmark = pytest.mark.usefixtures("sio_path")


async def test_snapshot_of_a_finished_session_is_one_event(server, http, sio_clients):
    session_id = await create_session(http, server, maxTokens=200)
    _, first = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await first.wait_finished()
    status = await get_session(http, server, session_id)

    client = sio_clients()
    namespace = f"/stream/{session_id}"
    late = record_events(client, namespace)
    await client.connect(
        server.url,
        namespaces=[namespace],
        transports=["websocket"],
        auth={"snapshot": True},
        wait_timeout=WAIT,
    )
    await late.wait_finished()
    assert late.chunks == [], "no chunk is replayed"
    assert late.snapshots == [
        {
            "sessionId": session_id,
            "epoch": status["epoch"],
            "text": status["text"],
            "lastSeq": status["chunks"] - 1,
            "state": "completed",
        }
    ]
    assert late.completes[0]["totalChunks"] == status["chunks"]


async def test_snapshot_then_live_tail_has_no_gap_or_duplicate(server, http, sio_clients):
    session_id = await create_session(http, server, maxTokens=300, tokensPerSecond=300)
    _, first = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await first.wait_for(lambda: len(first.chunks) >= 10)

    client = sio_clients()
    recorder = record_events(client, "/")
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    ack = await client.call("join-stream", {"sessionId": session_id, "snapshot": True}, timeout=WAIT)
    assert ack["ok"] is True
    await recorder.wait_finished()
    (snap,) = recorder.snapshots
    assert ack["lastSeq"] == snap["lastSeq"]
    assert snap["lastSeq"] >= 9
    assert recorder.seqs == list(range(snap["lastSeq"] + 1, snap["lastSeq"] + 1 + len(recorder.seqs)))
    status = await get_session(http, server, session_id)
    assert snap["text"] + recorder.text == status["text"]
    assert (
        recorder.seqs[-1] == status["chunks"] - 1
        if recorder.seqs
        else snap["lastSeq"] == status["chunks"] - 1
    )


async def test_snapshot_must_be_a_boolean(server, http, sio_clients):
    session_id = await create_session(http, server)
    client = sio_clients()
    await client.connect(server.url, transports=["websocket"], wait_timeout=WAIT)
    ack = await client.call("join-stream", {"sessionId": session_id, "snapshot": "yes"}, timeout=WAIT)
    assert ack["ok"] is False
    assert "snapshot" in ack["error"]
