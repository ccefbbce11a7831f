"""Server-Sent Events (``GET /api/streaming/{id}/events``) with real HTTP clients: aiohttp
reading the stream, and Chromium's own ``EventSource`` reconnecting by itself."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.fake_providers import ScriptedProvider
from tests.helpers import WAIT, LiveServer, create_session, get_session, start_stream, wait_until


@dataclass
class SSEEvent:
    event: str
    data: dict[str, Any]
    id: str | None = None


@dataclass
class SSEReader:
    """Parses ``text/event-stream`` from an aiohttp response, comments kept apart."""

    response: aiohttp.ClientResponse
    events: list[SSEEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    async def __aiter__(self) -> AsyncIterator[SSEEvent]:
        fields: dict[str, str] = {}
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif not line:
                if "data" in fields:
                    event = SSEEvent(
                        fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")
                    )
                    self.events.append(event)
                    yield event
                fields = {}
            else:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.event == "chunk"]


async def read_until(reader: SSEReader, done: Any) -> None:
    async with asyncio.timeout(WAIT):
        async for event in reader:
            if done(event):
                return


def events_url(server: LiveServer, session_id: str, query: str = "") -> str:
    return f"{server.url}/api/streaming/{session_id}/events{query}"


async def test_a_whole_stream_as_server_sent_events(server, http):
    session_id = await create_session(http, server, maxTokens=120)
    async with http.get(events_url(server, session_id)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        await start_stream(http, server, session_id)
        reader = SSEReader(resp)
        await read_until(reader, lambda e: e.event == "complete")
        # The response ends after `complete`.
        assert await asyncio.wait_for(resp.content.read(), WAIT) == b""
    snapshot = await get_session(http, server, session_id)
    assert [c["seq"] for c in reader.chunks] == list(range(snapshot["chunks"]))
    assert [e.id for e in reader.events if e.event == "chunk"] == [str(c["seq"]) for c in reader.chunks]
    assert "".join(c["content"] for c in reader.chunks) == snapshot["text"]
    assert reader.events[-1].data["totalChunks"] == snapshot["chunks"]
    assert {"streaming", "completed"} <= {e.data["state"] for e in reader.events if e.event == "stream-state"}
    first = reader.chunks[0]
    assert set(first) == {"content", "timestamp", "metadata", "seq", "sessionId"}, "the Socket.IO payload"


@pytest.mark.parametrize("how", ["last-event-id", "query"])
async def test_reconnect_mid_stream_loses_and_doubles_nothing(server, http, how):
    # A stream of a second: long enough for two reconnects however busy the machine is
    # (at 400 tokens/s a loaded server coalesced it into too few chunks for them).
    session_id = await create_session(http, server, maxTokens=80, tokensPerSecond=80)
    await start_stream(http, server, session_id)
    received: list[dict[str, Any]] = []
    drops = 0
    async with asyncio.timeout(WAIT):
        while True:
            headers: dict[str, str] = {}
            query = ""
            if received and how == "last-event-id":
                headers["Last-Event-ID"] = str(received[-1]["seq"])
            elif received:
                query = f"?lastSeq={received[-1]['seq']}"
            async with http.get(events_url(server, session_id, query), headers=headers) as resp:
                reader = SSEReader(resp)
                await read_until(reader, lambda e, r=reader: e.event == "complete" or len(r.chunks) >= 5)
                received += reader.chunks
                if reader.events[-1].event == "complete":
                    break
                drops += 1  # leaving the block drops the connection mid-stream
    snapshot = await get_session(http, server, session_id)
    assert drops >= 2
    assert [c["seq"] for c in received] == list(range(snapshot["chunks"]))
    assert "".join(c["content"] for c in received) == snapshot["text"]


async def test_keep_alive_comments_arrive_before_any_event(start_server, http):
    server = await start_server(sse_keepalive_interval=0.05)
    session_id = await create_session(http, server)
    async with http.get(events_url(server, session_id)) as resp:
        lines: list[bytes] = []
        async with asyncio.timeout(WAIT):
            while lines.count(b": keep-alive\n") < 2:
                lines.append(await resp.content.readline())
        assert lines[0] == b"retry: 1000\n", "EventSource is told to reconnect after a second"


async def test_stream_error_ends_the_response(server, http):
    session_id = await create_session(http, server)
    async with http.get(events_url(server, session_id)) as resp:
        reader = SSEReader(resp)
        async with http.post(f"{server.url}/api/streaming/{session_id}/cancel") as cancel:
            assert cancel.status == 200
        await read_until(reader, lambda e: e.event == "complete")
        assert await asyncio.wait_for(resp.content.read(), WAIT) == b""
    assert reader.events[-1].data["finishReason"] == "cancelled"


async def test_epoch_mismatch_resets_and_replays_everything(server, http):
    session_id = await create_session(http, server, maxTokens=40)
    await start_stream(http, server, session_id)
    async with http.get(events_url(server, session_id)) as resp:
        await read_until(SSEReader(resp), lambda e: e.event == "complete")
    snapshot = await get_session(http, server, session_id)
    async with http.get(events_url(server, session_id, "?lastSeq=5&epoch=not-this-one")) as resp:
        reader = SSEReader(resp)
        await read_until(reader, lambda e: e.event == "complete")
    assert reader.events[0].event == "stream-reset"
    assert reader.events[0].data == {
        "sessionId": session_id,
        "epoch": snapshot["epoch"],
        "lastSeq": snapshot["chunks"] - 1,
    }
    assert [c["seq"] for c in reader.chunks] == list(range(snapshot["chunks"])), "replayed from seq 0"


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("?lastSeq=abc", {}, 400),
        ("?lastSeq=-2", {}, 400),
        ("", {"Last-Event-ID": "x"}, 400),
    ],
)
async def test_bad_resume_points_are_refused(server, http, query, headers, status):
    session_id = await create_session(http, server)
    async with http.get(events_url(server, session_id, query), headers=headers) as resp:
        assert resp.status == status
        assert "error" in await resp.json()


async def test_unknown_session_is_404(server, http):
    async with http.get(events_url(server, "00000000-0000-4000-8000-000000000000")) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "Session not found"}


async def test_counts_in_the_viewer_limit(start_server, http):
    server = await start_server(max_viewers_per_session=1)
    session_id = await create_session(http, server)
    async with http.get(events_url(server, session_id)) as first:
        assert first.status == 200
        session = server.manager.get_session(session_id)
        await wait_until(lambda: len(session.viewers) == 1)
        async with http.get(events_url(server, session_id)) as second:
            assert second.status == 429
            assert "maximum" in (await second.json())["error"]
    await wait_until(lambda: not session.viewers)


async def test_a_reader_that_stops_reading_is_bounded_and_dropped(start_server, http):
    tokens = [f"{i:05d}" + "x" * 2043 for i in range(3000)]
    server = await start_server(
        providers={"demo": ScriptedProvider(tokens)}, viewer_max_lag=16, viewer_stall_timeout=0.5
    )
    session_id = await create_session(http, server)
    session = server.manager.get_session(session_id)
    loop = asyncio.get_running_loop()
    parts = urlsplit(server.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (parts.hostname, parts.port))
    await loop.sock_sendall(
        sock, f"GET /api/streaming/{session_id}/events HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    )
    await wait_until(lambda: len(session.viewers) == 1)
    (viewer,) = session.viewers.values()
    peak = 0
    await start_stream(http, server, session_id)
    async with asyncio.timeout(WAIT + 15):
        while session.viewers:
            peak = max(peak, viewer.backlog())
            await asyncio.sleep(0.002)
    sock.close()
    assert 0 < peak <= 16 + 3, f"queue stayed bounded (peak {peak})"
    await wait_until(lambda: not session.is_live, timeout=WAIT + 15)
    snapshot = await get_session(http, server, session_id)
    assert snapshot["text"] == "".join(tokens), "the stream went on without the stalled reader"


EVENTSOURCE_JS = """([url]) => {
  window.__sse = {chunks: [], opens: 0, done: false, states: []}
  const source = new EventSource(url)
  source.onopen = () => { window.__sse.opens += 1 }
  source.addEventListener('chunk', e => {
    window.__sse.chunks.push({id: e.lastEventId, ...JSON.parse(e.data)})
  })
  source.addEventListener('complete', () => { window.__sse.done = true; source.close() })
}"""


async def test_browser_eventsource_reconnects_by_itself(server, http):
    """Chromium's own EventSource: the server drops it mid-stream, it reconnects with
    Last-Event-ID on its own, and ends up with every chunk exactly once."""
    from playwright.async_api import async_playwright

    session_id = await create_session(http, server, maxTokens=150, tokensPerSecond=200)
    session = server.manager.get_session(session_id)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{server.url}/healthz")
            await page.evaluate(EVENTSOURCE_JS, [f"/api/streaming/{session_id}/events"])
            await wait_until(lambda: len(session.viewers) == 1)
            await start_stream(http, server, session_id)
            await page.wait_for_function("window.__sse.chunks.length >= 5", timeout=WAIT * 1000)
            for viewer in tuple(session.viewers.values()):
                viewer.close("dropped by the test")
            await page.wait_for_function("window.__sse.done", timeout=WAIT * 1000)
            result = await page.evaluate("window.__sse")
        finally:
            await browser.close()
    status = await get_session(http, server, session_id)
    assert result["opens"] >= 2, "EventSource opened the stream again by itself"
    assert [c["seq"] for c in result["chunks"]] == list(range(status["chunks"]))
    assert [c["id"] for c in result["chunks"]] == [str(c["seq"]) for c in result["chunks"]]
    assert "".join(c["content"] for c in result["chunks"]) == status["text"]
