"""Backpressure: a viewer that stops reading never grows the server's queues without bound,
holds the others back at most ``viewer_stall_timeout``, is dropped, and can resume."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.fake_providers import ScriptedProvider
from tests.helpers import WAIT, create_session, get_session, start_stream, stream_viewer, wait_until
from tests.test_ws_api import open_ws

# Every test runs against both Socket.IO WebSocket paths (see conftest.sio_path).
pytestmark = pytest.mark.usefixtures("sio_path")

MAX_LAG = 16
STALL_TIMEOUT = 1.0


async def open_stalled_websocket(url: str, path: str) -> socket.socket:
    """A raw WebSocket with a tiny receive buffer that completes the handshake, then never reads."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


#: Big tokens, so that a stalled reader fills the kernel's socket buffers (megabytes on
#: loopback) quickly and the server's own queue is what is left to watch.
BIG_TOKENS = [f"{i:05d}" + "x" * 2043 for i in range(5000)]


async def big_session(start_server, http):
    """A server whose provider streams BIG_TOKENS, with tight viewer bounds, and one session."""
    server = await start_server(
        providers={"demo": ScriptedProvider(BIG_TOKENS)},
        viewer_max_lag=MAX_LAG,
        viewer_stall_timeout=STALL_TIMEOUT,
    )
    session_id = await create_session(http, server)
    session = server.manager.get_session(session_id)
    assert session is not None
    return server, session_id, session


async def stream_past_stalled_viewer(http, server, session, fast, key: str) -> int:
    """Start the stream, let the fast viewer finish, and return the stalled viewer's peak
    backlog, sampled until the server drops it."""
    viewer = session.viewers[key]
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while key in session.viewers:
            peak = max(peak, viewer.backlog())
            await asyncio.sleep(0.002)

    sampler = asyncio.get_running_loop().create_task(sample())
    await start_stream(http, server, session.id)
    await fast.wait_finished(timeout=WAIT + 30)
    await asyncio.wait_for(sampler, WAIT)
    assert fast.completes, fast.errors
    assert key not in session.viewers, "the stalled viewer was dropped"
    return peak


async def test_stalled_websocket_is_bounded_and_dropped(start_server, http, sio_clients):
    server, session_id, session = await big_session(start_server, http)

    _, fast = await stream_viewer(sio_clients, server, session_id)
    arrivals: list[float] = []
    original = fast.record

    def timed_record(event: str, payload: dict) -> None:
        arrivals.append(time.monotonic())
        original(event, payload)

    fast.record = timed_record  # type: ignore[method-assign]
    stalled = await open_stalled_websocket(server.url, f"/ws/stream/{session_id}")
    await wait_until(lambda: len(session.viewers) == 2)
    (key,) = [k for k in session.viewers if k.startswith("ws:")]
    peak = await stream_past_stalled_viewer(http, server, session, fast, key)
    stalled.close()

    assert 0 < peak <= MAX_LAG + 3, f"queue stayed bounded (peak {peak})"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < STALL_TIMEOUT + 1.5, "the others waited at most about the stall timeout"
    snapshot = await get_session(http, server, session_id)
    assert fast.seqs == list(range(snapshot["chunks"]))
    assert fast.text == snapshot["text"]
    assert snapshot["text"] == "".join(BIG_TOKENS)
    assert snapshot["chunks"] < len(BIG_TOKENS), "tokens that arrived while held back were coalesced"


async def test_dropped_viewer_comes_back_with_last_seq(start_server, http):
    server = await start_server(
        providers={"demo": ScriptedProvider(BIG_TOKENS)}, viewer_max_lag=MAX_LAG, viewer_stall_timeout=0.3
    )
    session_id = await create_session(http, server)
    session = server.manager.get_session(session_id)
    assert session is not None
    stalled = await open_stalled_websocket(server.url, f"/ws/stream/{session_id}")
    await wait_until(lambda: len(session.viewers) == 1)
    await start_stream(http, server, session_id)
    await wait_until(lambda: not session.viewers, timeout=WAIT)
    stalled.close()

    again = await open_ws(http, server, session_id, "?lastSeq=-1")
    await again.recorder.wait_finished(timeout=WAIT + 15)
    snapshot = await get_session(http, server, session_id)
    assert again.recorder.seqs == list(range(snapshot["chunks"]))
    assert again.recorder.text == snapshot["text"]
    await again.ws.close()


async def test_no_viewer_keeps_streaming_into_the_log(server, http):
    session_id = await create_session(http, server, maxTokens=500)
    await start_stream(http, server, session_id)
    session = server.manager.get_session(session_id)
    assert session is not None
    await wait_until(lambda: not session.is_live)
    snapshot = await get_session(http, server, session_id)
    assert snapshot["state"] == "completed" and snapshot["usage"]["completionTokens"] == 500


async def _read_frame(sock: socket.socket) -> str:
    loop = asyncio.get_running_loop()

    async def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            data += await loop.sock_recv(sock, n - len(data))
        return data

    head = await exactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await exactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await exactly(8), "big")
    return (await exactly(size)).decode()


def _client_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_stalled_socketio_viewer_is_bounded_and_dropped(start_server, http, sio_clients):
    """The same over Socket.IO: a client joins /stream/<id> over a raw WebSocket, then stops reading."""
    server, session_id, session = await big_session(start_server, http)
    _, fast = await stream_viewer(sio_clients, server, session_id)
    before = set(session.viewers)

    stalled = await open_stalled_websocket(server.url, "/socket.io/?EIO=4&transport=websocket")
    assert (await _read_frame(stalled)).startswith("0{")  # Engine.IO OPEN
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(stalled, _client_text_frame(f"40/stream/{session_id},"))
    assert (await _read_frame(stalled)).startswith(f"40/stream/{session_id},")  # Socket.IO CONNECT
    await wait_until(lambda: len(session.viewers) == 2)
    (key,) = set(session.viewers) - before
    peak = await stream_past_stalled_viewer(http, server, session, fast, key)
    stalled.close()

    assert 0 < peak <= MAX_LAG + 3, f"queue stayed bounded (peak {peak})"
    snapshot = await get_session(http, server, session_id)
    assert fast.seqs == list(range(snapshot["chunks"]))
    assert snapshot["text"] == "".join(BIG_TOKENS)
