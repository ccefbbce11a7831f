"""The plain WebSocket at ``wsEndpoint``: JSON frames out, pause/resume/cancel frames in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.helpers import WAIT, Recorder, create_session, get_session, start_stream

UNKNOWN = "00000000-0000-4000-8000-000000000000"


class WsViewer:
    """Reads frames in the background into a :class:`Recorder`; acks go to ``acks``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.recorder = Recorder()
        self.acks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: list[dict[str, Any]] = []
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            frame = json.loads(msg.data)
            self.frames.append(dict(frame))
            kind = frame.pop("type")
            if kind == "ack":
                self.acks.put_nowait(frame)
            else:
                self.recorder.record(kind, frame)

    async def command(self, frame: Any) -> dict[str, Any]:
        await self.ws.send_str(json.dumps(frame))
        async with asyncio.timeout(WAIT):
            return await self.acks.get()


async def open_ws(http, server, session_id: str, query: str = "") -> WsViewer:
    ws = await http.ws_connect(f"{server.ws_url}/ws/stream/{session_id}{query}")
    return WsViewer(ws)


async def test_ws_endpoint_streams_json_frames(server, http):
    session_id = await create_session(http, server)
    viewer = await open_ws(http, server, session_id)
    await start_stream(http, server, session_id)
    await viewer.recorder.wait_finished()
    snapshot = await get_session(http, server, session_id)
    assert viewer.recorder.seqs == list(range(snapshot["chunks"]))
    assert viewer.recorder.text == snapshot["text"]
    types = [f.get("type") for f in viewer.frames]
    assert viewer.frames[0] == {
        "type": "stream-state",
        "sessionId": session_id,
        "state": "streaming",
        "lastSeq": -1,
        "epoch": snapshot["epoch"],
    }
    assert viewer.recorder.completes[0]["totalChunks"] == snapshot["chunks"]
    assert types.count("chunk") == snapshot["chunks"]
    assert types[-2:] == ["stream-state", "complete"]
    await viewer.ws.close()


async def test_ws_pause_resume_cancel_frames(server, http):
    session_id = await create_session(http, server, tokensPerSecond=200, maxTokens=2000)
    viewer = await open_ws(http, server, session_id)
    await start_stream(http, server, session_id)
    rec = viewer.recorder
    await rec.wait_for(lambda: len(rec.chunks) >= 3)

    ack = await viewer.command({"type": "pause"})
    assert ack["ok"] is True and ack["action"] == "pause" and ack["state"] == "paused"
    with pytest.raises(TimeoutError):
        await rec.wait_for(lambda: rec.seqs[-1] > ack["lastSeq"], timeout=0.4)
    assert (await viewer.command({"type": "resume"}))["state"] == "streaming"
    await rec.wait_for(lambda: rec.seqs[-1] > ack["lastSeq"])
    assert (await viewer.command({"type": "cancel"}))["state"] == "cancelled"
    await rec.wait_finished()
    assert rec.completes[0]["finishReason"] == "cancelled"
    bad = await viewer.command({"type": "explode"})
    assert bad["ok"] is False and "pause" in bad["error"]
    bad = await viewer.command("not an object")
    assert bad["ok"] is False
    await viewer.ws.send_str("{{{ not json")
    assert (await viewer.acks.get())["ok"] is False
    await viewer.ws.close()


async def test_ws_resumes_from_last_seq(server, http):
    session_id = await create_session(http, server, maxTokens=200)
    first = await open_ws(http, server, session_id)
    await start_stream(http, server, session_id)
    await first.recorder.wait_finished()
    total = len(first.recorder.chunks)
    again = await open_ws(http, server, session_id, f"?lastSeq={total // 2}")
    await again.recorder.wait_finished()
    assert again.recorder.seqs == list(range(total // 2 + 1, total))
    await first.ws.close()
    await again.ws.close()


@pytest.mark.parametrize(("path", "status"), [(UNKNOWN, 404), ("garbage", 404)])
async def test_ws_unknown_session_is_404(server, http, path, status):
    async with http.get(f"{server.url}/ws/stream/{path}") as resp:
        assert resp.status == status
        assert await resp.json() == {"error": "Session not found"}


@pytest.mark.parametrize("value", ["x", "-7", "1.5", ""])
async def test_ws_bad_last_seq_is_400(server, http, value):
    session_id = await create_session(http, server)
    async with http.get(f"{server.url}/ws/stream/{session_id}?lastSeq={value}") as resp:
        assert resp.status == 400 and "lastSeq" in (await resp.json())["error"]


async def test_ws_upgrade_declines_compression_and_echoes_the_request_id(server, http):
    """The upgrade goes through the same edge as every request: its id is echoed, and the
    client's permessage-deflate offer is declined (frames are small JSON events)."""
    session_id = await create_session(http, server)
    async with http.ws_connect(
        f"{server.url}/ws/stream/{session_id}", compress=15, headers={"X-Request-ID": "ws-upgrade-1"}
    ) as ws:
        assert ws.compress == 0
        assert ws._response.headers["X-Request-ID"] == "ws-upgrade-1"
        assert "Sec-WebSocket-Extensions" not in ws._response.headers
