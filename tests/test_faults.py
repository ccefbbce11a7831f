"""Faults: broken providers, viewer storms, clients that stop reading, SIGTERM mid-stream.

None of them may crash the server, corrupt another session or lose a chunk another viewer
should get. So every test streams healthy sessions (a :class:`SteadyProvider`, watched over
Socket.IO and the plain WebSocket) alongside the faulty thing, and checks that their viewers
got every chunk exactly once, in order, with the text ``GET /api/streaming/{id}`` returns and
the provider sent; that the faulty session ends as it should; and that the server still
serves a new session afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import socketio
from aiohttp import web

from providers.base import AIChunk, AIProvider, ProviderError
from server.app import direct_hub_key
from server.transports.ws_api import websockets_key
from tests.fake_providers import BrokenFactoryProvider, RawProvider, ScriptedProvider, SteadyProvider
from tests.helpers import (
    WAIT,
    LiveServer,
    Recorder,
    ServerFactory,
    assert_exactly_once,
    create_session,
    get_session,
    record_events,
    start_stream,
    stream_viewer,
    wait_until,
)
from tests.server_process import ServerProcess
from tests.test_backpressure import BIG_TOKENS, _client_text_frame, _read_frame, open_stalled_websocket
from tests.test_sse import SSEReader, events_url
from tests.test_ws_api import WsViewer

MakeClient = Callable[[], socketio.AsyncClient]

#: How long a faulty session may take to end: its timeouts are well under a second.
FAULT_WAIT = 5.0
#: First-token and idle timeouts of the provider fault tests.
PROVIDER_TIMEOUT = 0.5


# -- healthy sessions ------------------------------------------------------------------------


@dataclass
class Watched:
    """A session with two viewers: Socket.IO on ``/stream/<id>`` and the plain WebSocket."""

    session_id: str
    prompt: str
    recorders: list[Recorder]
    sockets: list[WsViewer] = field(default_factory=list)

    async def close(self) -> None:
        for viewer in self.sockets:
            await viewer.ws.close()


async def watch(
    http: aiohttp.ClientSession,
    server: LiveServer,
    sio_clients: MakeClient,
    provider: str,
    prompt: str,
    **config: Any,
) -> Watched:
    """Create a session of ``provider`` and connect its two viewers (not started yet)."""
    session_id = await create_session(http, server, provider=provider, **config)
    _, sio_viewer = await stream_viewer(sio_clients, server, session_id)
    ws_viewer = WsViewer(await http.ws_connect(f"{server.ws_url}/ws/stream/{session_id}"))
    return Watched(session_id, prompt, [sio_viewer, ws_viewer.recorder], [ws_viewer])


async def wait_chunks(recorder: Recorder, count: int) -> None:
    await recorder.wait_for(lambda: len(recorder.chunks) >= count)


async def stream_healthy(
    http: aiohttp.ClientSession, server: LiveServer, sio_clients: MakeClient, count: int = 2
) -> list[Watched]:
    """``count`` sessions of the ``steady`` provider, started, each viewer past its first chunk."""
    healthy = [await watch(http, server, sio_clients, "steady", f"healthy-{index}") for index in range(count)]
    for watched in healthy:
        await start_stream(http, server, watched.session_id, watched.prompt)
    for watched in healthy:
        for recorder in watched.recorders:
            await wait_chunks(recorder, 1)
    return healthy


async def still_streaming(healthy: list[Watched]) -> None:
    """Every healthy viewer receives more chunks after the fault than it had before."""
    for watched in healthy:
        for recorder in watched.recorders:
            await wait_chunks(recorder, len(recorder.chunks) + 1)


async def check_lossless(
    http: aiohttp.ClientSession, server: LiveServer, watched: Watched, text: str, timeout: float = WAIT
) -> dict[str, Any]:
    """Every viewer finished with every chunk of the log exactly once, in order, and the
    log's text is ``text``; returns the session's ``GET`` body."""
    for recorder in watched.recorders:
        try:
            await recorder.wait_finished(timeout)
        except TimeoutError:
            async with http.get(f"{server.url}/api/streaming/{watched.session_id}") as resp:
                status = f"{resp.status} {await resp.text()}"
            raise AssertionError(
                f"no complete/stream-error within {timeout}s; states {recorder.states}; GET {status}"
            ) from None
    snapshot = await get_session(http, server, watched.session_id)
    for recorder in watched.recorders:
        assert_exactly_once(recorder, snapshot["chunks"])
        assert recorder.text == snapshot["text"]
        assert all(chunk["sessionId"] == watched.session_id for chunk in recorder.chunks)
    assert snapshot["text"] == text
    return snapshot


async def finish_healthy(
    http: aiohttp.ClientSession, server: LiveServer, steady: SteadyProvider, healthy: list[Watched]
) -> None:
    """Let the healthy streams end, and check that they completed without loss."""
    await still_streaming(healthy)
    steady.release()
    for watched in healthy:
        for recorder in watched.recorders:
            await recorder.wait_finished()
        snapshot = await check_lossless(http, server, watched, steady.sent(watched.prompt))
        assert snapshot["state"] == "completed", snapshot
        for recorder in watched.recorders:
            assert recorder.errors == []
            assert [c["totalChunks"] for c in recorder.completes] == [snapshot["chunks"]]
        await watched.close()


async def serves_a_new_session(
    http: aiohttp.ClientSession, server: LiveServer, sio_clients: MakeClient
) -> None:
    """The server still streams a fresh session (the built-in demo provider) to the end."""
    session_id = await create_session(http, server, provider="demo", maxTokens=30)
    _, viewer = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id, "after the fault")
    await viewer.wait_finished()
    snapshot = await get_session(http, server, session_id)
    assert snapshot["state"] == "completed", snapshot
    assert_exactly_once(viewer, snapshot["chunks"])
    assert viewer.text == snapshot["text"] != ""


def assert_no_crash(caplog: pytest.LogCaptureFixture, expected_logger: str | None = None) -> None:
    """Nothing was logged at ERROR (an exception in a callback or a task, an unhandled
    request error), except by ``expected_logger``."""
    crashes = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name != expected_logger
    ]
    assert not crashes, crashes


# -- providers that fail -----------------------------------------------------------------------


def chunk(content: object, **extra: Any) -> AIChunk:
    """An AIChunk, with whatever ``content`` (garbage included)."""
    return AIChunk(content, {"provider": "demo", "model": "raw"}, **extra)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Fault:
    """A broken provider, how its session must end (``code`` of ``stream-error``, or
    ``None``: ``complete``) and the text its log must hold."""

    make: Callable[[], AIProvider]
    code: str | None
    text: str


FAULTS: dict[str, Fault] = {
    "provider-error-mid-stream": Fault(
        lambda: ScriptedProvider(
            ["one ", "two "], error=ProviderError("upstream", "The connection was lost")
        ),
        "upstream",
        "one two ",
    ),
    "provider-error-before-first-token": Fault(
        lambda: ScriptedProvider([], error=ProviderError("auth", "The key was rejected")), "auth", ""
    ),
    "non-provider-error-mid-stream": Fault(
        lambda: ScriptedProvider(["one ", "two "], error=RuntimeError("a bug in the provider")),
        "internal",
        "one two ",
    ),
    "cancelled-error-raised-by-the-provider": Fault(
        lambda: RawProvider([chunk("one ")], error=asyncio.CancelledError()), "internal", "one "
    ),
    "hangs-before-first-token": Fault(lambda: ScriptedProvider(["never "], hang_after=0), "timeout", ""),
    "hangs-after-first-token": Fault(
        lambda: ScriptedProvider(["first ", "never "], hang_after=1), "timeout", "first "
    ),
    "empty-stream": Fault(lambda: RawProvider([]), None, ""),
    "only-empty-chunks": Fault(lambda: ScriptedProvider([]), None, ""),
    "yields-a-str": Fault(lambda: RawProvider([chunk("ok "), "not a chunk"]), "internal", "ok "),
    "yields-none": Fault(lambda: RawProvider([chunk("ok "), None]), "internal", "ok "),
    "int-content": Fault(lambda: RawProvider([chunk("ok "), chunk(42)]), "internal", "ok "),
    "bytes-content": Fault(lambda: RawProvider([chunk("ok "), chunk(b"bytes")]), "internal", "ok "),
    "usage-not-a-usage": Fault(
        lambda: RawProvider([chunk("ok "), chunk("", usage={"completionTokens": 1})]), "internal", "ok "
    ),
    "create-stream-raises": Fault(lambda: BrokenFactoryProvider(RuntimeError("no stream")), "internal", ""),
    "create-stream-raises-provider-error": Fault(
        lambda: BrokenFactoryProvider(ProviderError("bad_request", "Unknown model")), "bad_request", ""
    ),
    "create-stream-returns-a-list": Fault(
        lambda: BrokenFactoryProvider(returns=["not", "an", "iterator"]), "internal", ""
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_provider_fault_ends_its_session_and_spares_the_others(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    sio_clients: MakeClient,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    case = FAULTS[fault]
    steady, broken = SteadyProvider(), case.make()
    server = await start_server(
        providers={"steady": steady, "faulty": broken},
        first_token_timeout=PROVIDER_TIMEOUT,
        token_idle_timeout=PROVIDER_TIMEOUT,
    )
    healthy = await stream_healthy(http, server, sio_clients)
    faulty = await watch(http, server, sio_clients, "faulty", "faulty")

    await start_stream(http, server, faulty.session_id, faulty.prompt)
    snapshot = await check_lossless(http, server, faulty, case.text, timeout=FAULT_WAIT)
    if case.code is None:
        assert snapshot["state"] == "completed", snapshot
        for recorder in faulty.recorders:
            assert recorder.errors == []
            assert [c["totalChunks"] for c in recorder.completes] == [snapshot["chunks"]]
    else:
        assert snapshot["state"] == "failed", snapshot
        assert snapshot["error"]["code"] == case.code, snapshot["error"]
        for recorder in faulty.recorders:
            assert recorder.completes == []
            assert [(e["sessionId"], e["code"]) for e in recorder.errors] == [(faulty.session_id, case.code)]
            assert recorder.errors[0]["error"], "a message for the user"
    if isinstance(broken, ScriptedProvider | RawProvider):
        await asyncio.wait_for(broken.closed.wait(), WAIT)  # the upstream stream was closed
    await faulty.close()

    await finish_healthy(http, server, steady, healthy)
    await serves_a_new_session(http, server, sio_clients)
    # The session reports a provider's bug with its traceback; nothing else fails.
    assert_no_crash(caplog, expected_logger="server.core.sessions")


# -- viewers that come and go --------------------------------------------------------------------

STORM_CONNECTIONS = 400
STORM_CONCURRENCY = 16


def reset_and_close(sock: socket.socket) -> None:
    """Close with a TCP reset: no close frame, no FIN (a client that vanishes)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def storm_one(
    http: aiohttp.ClientSession, server: LiveServer, sio_clients: MakeClient, session_id: str, n: int
) -> None:
    """Viewer ``n`` joins ``session_id`` and leaves at once, in one of five ways."""
    namespace = f"/stream/{session_id}"
    kind = n % 5
    if kind == 0:  # Socket.IO (direct WebSocket path), resuming every other time
        client = sio_clients()
        auth = {"lastSeq": 0} if n % 2 else None
        await client.connect(
            server.url, namespaces=[namespace], transports=["websocket"], auth=auth, wait_timeout=WAIT
        )
        await client.disconnect()
    elif kind == 1:  # plain WebSocket, closed properly after its first frame
        async with http.ws_connect(f"{server.ws_url}/ws/stream/{session_id}") as ws:
            await ws.receive(timeout=WAIT)
    elif kind == 2:  # plain WebSocket, reset right after the upgrade
        reset_and_close(await open_stalled_websocket(server.url, f"/ws/stream/{session_id}"))
    elif kind == 3:  # Server-Sent Events, dropped after the first line
        async with http.get(events_url(server, session_id)) as resp:
            assert resp.status == 200
            await resp.content.readline()
    else:  # raw Socket.IO: joins the namespace, then resets the connection
        sock = await open_stalled_websocket(server.url, "/socket.io/?EIO=4&transport=websocket")
        assert (await _read_frame(sock)).startswith("0{")
        await asyncio.get_running_loop().sock_sendall(sock, _client_text_frame(f"40{namespace},"))
        assert (await _read_frame(sock)).startswith(f"40{namespace},")
        reset_and_close(sock)


async def test_viewer_storm_while_others_stream(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    sio_clients: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    steady = SteadyProvider()
    server = await start_server(
        providers={"steady": steady},
        max_viewers_per_session=STORM_CONCURRENCY + 8,
        handshake_rate_per_address=100_000.0,
        handshake_burst_per_address=100_000.0,
        max_connections_per_address=100_000,
    )
    healthy = await stream_healthy(http, server, sio_clients)
    sessions = [server.manager.get_session(w.session_id) for w in healthy]
    steady_viewers = [set(s.viewers) for s in sessions if s is not None]
    assert len(steady_viewers) == len(healthy) and all(len(v) == 2 for v in steady_viewers)
    hub, websockets = server.app[direct_hub_key], server.app[websockets_key]
    steady_connections = (len(hub.connections), len(websockets))
    counter = itertools.count()

    async def worker() -> None:
        while (n := next(counter)) < STORM_CONNECTIONS:
            await storm_one(http, server, sio_clients, healthy[n % len(healthy)].session_id, n)

    began = time.monotonic()
    async with asyncio.timeout(WAIT * 2):
        await asyncio.gather(*(worker() for _ in range(STORM_CONCURRENCY)))
    rate = STORM_CONNECTIONS / (time.monotonic() - began)
    print(f"storm: {STORM_CONNECTIONS} viewers joined and left at {rate:.0f}/s")

    # Every storm viewer is gone from the sessions; the steady ones are still there.
    await wait_until(lambda: [set(s.viewers) for s in sessions if s is not None] == steady_viewers)
    # ... and from the server's connection bookkeeping.
    await wait_until(lambda: (len(hub.connections), len(websockets)) == steady_connections)
    assert not hub.handshakes
    for watched in healthy:
        assert (await get_session(http, server, watched.session_id))["state"] == "streaming"
    await finish_healthy(http, server, steady, healthy)
    await serves_a_new_session(http, server, sio_clients)
    assert_no_crash(caplog)


# -- clients that stop reading ---------------------------------------------------------------------

MAX_LAG = 16
STALL_TIMEOUT = 1.0


async def open_stalled_sse(url: str, session_id: str) -> socket.socket:
    """An SSE request on a socket with a tiny receive buffer that is never read."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (parts.hostname, parts.port))
    request = f"GET /api/streaming/{session_id}/events HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n"
    await loop.sock_sendall(sock, request.encode())
    return sock


async def open_stalled_socketio(url: str, session_id: str) -> socket.socket:
    """A direct-path Socket.IO WebSocket that joins ``/stream/<id>``, then never reads."""
    sock = await open_stalled_websocket(url, "/socket.io/?EIO=4&transport=websocket")
    assert (await _read_frame(sock)).startswith("0{")  # Engine.IO OPEN
    await asyncio.get_running_loop().sock_sendall(sock, _client_text_frame(f"40/stream/{session_id},"))
    assert (await _read_frame(sock)).startswith(f"40/stream/{session_id},")  # Socket.IO CONNECT
    return sock


@pytest.mark.parametrize("path", ["socketio", "websocket", "sse"])
async def test_a_client_that_stops_reading_is_dropped_and_harms_no_one(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    sio_clients: MakeClient,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    steady = SteadyProvider()
    server = await start_server(
        providers={"steady": steady, "big": ScriptedProvider(BIG_TOKENS)},
        viewer_max_lag=MAX_LAG,
        viewer_stall_timeout=STALL_TIMEOUT,
    )
    healthy = await stream_healthy(http, server, sio_clients)
    big = await watch(http, server, sio_clients, "big", "big")
    session = server.manager.get_session(big.session_id)
    assert session is not None
    before = set(session.viewers)
    if path == "socketio":
        stalled = await open_stalled_socketio(server.url, big.session_id)
    elif path == "websocket":
        stalled = await open_stalled_websocket(server.url, f"/ws/stream/{big.session_id}")
    else:
        stalled = await open_stalled_sse(server.url, big.session_id)
    await wait_until(lambda: len(session.viewers) == len(before) + 1)
    (key,) = set(session.viewers) - before
    stalled_viewer = session.viewers[key]

    await start_stream(http, server, big.session_id, big.prompt)
    # While the client that stopped reading holds its session back, the others stream on.
    await wait_until(lambda: stalled_viewer.backlog() > MAX_LAG, timeout=WAIT + 30)
    await still_streaming(healthy)
    assert key in session.viewers, "the others streamed while this one was still held back"
    snapshot = await check_lossless(http, server, big, "".join(BIG_TOKENS), timeout=WAIT + 30)
    assert snapshot["state"] == "completed", snapshot
    assert key not in session.viewers, "the client that stopped reading was dropped"
    stalled.close()
    await big.close()

    await finish_healthy(http, server, steady, healthy)
    await serves_a_new_session(http, server, sio_clients)
    assert_no_crash(caplog)


# -- SIGTERM mid-stream ------------------------------------------------------------------------------

SHUTDOWN_TIMEOUT = 2.0
#: Exiting after the shutdown: the loop's last tasks, the interpreter's teardown.
EXIT_MARGIN = 2.0


@dataclass
class SSEWatcher:
    """An SSE response read in the background into a :class:`Recorder`."""

    response: aiohttp.ClientResponse
    recorder: Recorder = field(default_factory=Recorder)

    def __post_init__(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for event in SSEReader(self.response):
            self.recorder.record(event.event, event.data)


def ended_with_shutdown(recorder: Recorder, session_id: str) -> None:
    """``stream-error`` code ``shutdown`` came last, after every chunk the log had made."""
    assert [(e["sessionId"], e["code"]) for e in recorder.errors] == [(session_id, "shutdown")]
    assert recorder.completes == []
    assert recorder.seqs == list(range(len(recorder.chunks)))
    final = recorder.states[-1]
    assert final["state"] == "failed", recorder.states
    assert final["lastSeq"] == len(recorder.chunks) - 1, "every chunk made reached the viewer"


async def test_sigterm_mid_stream_ends_every_viewer_with_shutdown_and_exits_in_time(
    http: aiohttp.ClientSession, sio_clients: MakeClient
) -> None:
    process = ServerProcess(
        {"DEMO_TOKENS_PER_SECOND": "200", "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT), "LOG_LEVEL": "info"}
    )
    await asyncio.to_thread(process.__enter__)
    stalled: list[socket.socket] = []
    try:
        proc = process.process
        assert proc is not None
        # Only its URL is used: the helpers take a LiveServer, this one runs in another process.
        server = LiveServer(process.url, web.Application())
        sessions = [await create_session(http, server, maxTokens=5000) for _ in range(2)]
        recorders: dict[str, list[Recorder]] = {session_id: [] for session_id in sessions}
        sockets: list[WsViewer] = []
        for session_id in sessions:
            recorders[session_id].append((await stream_viewer(sio_clients, server, session_id))[1])
            ws_viewer = WsViewer(await http.ws_connect(f"{server.ws_url}/ws/stream/{session_id}"))
            sockets.append(ws_viewer)
            recorders[session_id].append(ws_viewer.recorder)
        first = sessions[0]
        sse = SSEWatcher(await http.get(events_url(server, first)))
        recorders[first].append(sse.recorder)
        polling = sio_clients()
        recorders[first].append(record_events(polling))
        await polling.connect(server.url, transports=["polling"], wait_timeout=WAIT)
        assert (await polling.call("join-stream", first, timeout=WAIT))["ok"]
        # Clients that never read, and one that never finishes its request head.
        stalled.append(await open_stalled_websocket(server.url, f"/ws/stream/{first}"))
        stalled.append(await open_stalled_socketio(server.url, first))
        stalled.append(await open_stalled_sse(server.url, sessions[1]))
        half = socket.create_connection(("127.0.0.1", process.port))
        half.sendall(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n")
        stalled.append(half)

        for session_id in sessions:
            await start_stream(http, server, session_id, f"a long answer {session_id}")
        for recorder in itertools.chain.from_iterable(recorders.values()):
            await wait_chunks(recorder, 3)

        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for session_id, viewers in recorders.items():
            for recorder in viewers:
                try:
                    await recorder.wait_finished()
                except TimeoutError:
                    raise AssertionError(
                        f"no end after SIGTERM: {recorder.states}\n{process.output}"
                    ) from None
                ended_with_shutdown(recorder, session_id)
            texts = {r.text for r in viewers}
            assert len(texts) == 1, "every viewer of a session got the same chunks"
        code = await asyncio.to_thread(proc.wait, SHUTDOWN_TIMEOUT + EXIT_MARGIN + 5)
        took = time.monotonic() - signalled
        print(f"SIGTERM: exited {took:.2f}s after the signal")
        assert code == 0, process.output
        assert "Traceback" not in process.output, process.output
        assert took <= SHUTDOWN_TIMEOUT + EXIT_MARGIN, f"exited {took:.1f}s after SIGTERM"
        sse.response.release()
        for ws_viewer in sockets:
            await ws_viewer.ws.close()
    finally:
        for sock in stalled:
            sock.close()
        process.__exit__(None, None, None)
