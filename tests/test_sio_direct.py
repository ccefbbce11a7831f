"""The direct Socket.IO WebSocket path (``server.transports.sio_direct``) at the frame level: a raw
client speaks RFC 6455, Engine.IO v4 and Socket.IO v5 to the real server.

What every Socket.IO client sees is covered by the suites that run against both paths
(``test_socket_api``, ``test_replay``, ``test_backpressure``), by the seed's own
socket.io-client (``test_seed_client``) and by the browser test. Here: what only a
misbehaving or unusual client does, and what is handed over to aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from typing import Any
from urllib.parse import urlsplit

import pytest
import socketio

from server.app import direct_hub_key
from server.core.models import encode_json
from server.transports.sio_direct_viewer import DirectViewer, event_frame
from server.transports.wire.websocket import websocket_text_frame
from tests.helpers import (
    WAIT,
    LiveServer,
    ServerFactory,
    assert_exactly_once,
    create_session,
    get_session,
    record_events,
    start_stream,
    stream_viewer,
    wait_until,
)

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class RawSocket:
    """A hand-written WebSocket client: full control over every frame it sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls, server: LiveServer, query: str = "EIO=4&transport=websocket", headers: str = ""
    ) -> tuple[RawSocket, bytes]:
        """Connect and send the handshake; returns the socket and the response head."""
        parts = urlsplit(server.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /socket.io/?{query} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{headers}\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        return cls(reader, writer), head

    def send(self, opcode: int, payload: bytes, *, final: bool = True, masked: bool = True) -> None:
        first = (0x80 if final else 0) | opcode
        size = len(payload)
        if size < 126:
            head = bytes((first, (0x80 if masked else 0) | size))
        elif size < 1 << 16:
            head = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, size)
        else:
            head = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, size)
        if masked:
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            head += mask
        self.writer.write(head + payload)

    def send_text(self, text: str) -> None:
        self.send(TEXT, text.encode())

    async def recv(self) -> tuple[int, bytes]:
        async with asyncio.timeout(WAIT):
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            assert not second & 0x80, "server frames are not masked"
            return first & 0x0F, await self.reader.readexactly(size)

    async def recv_text(self) -> str:
        """The next text frame, answering the server's Engine.IO pings on the way."""
        while True:
            opcode, payload = await self.recv()
            assert opcode == TEXT, (opcode, payload)
            text = payload.decode()
            if text != "2":
                return text
            self.send_text("3")

    async def recv_close(self) -> int:
        """Skip to the close frame; return its status code and expect the TCP close."""
        while True:
            opcode, payload = await self.recv()
            if opcode == CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                assert await asyncio.wait_for(self.reader.read(), WAIT) == b""
                return int(code)

    async def handshake(self) -> dict[str, Any]:
        text = await self.recv_text()
        assert text.startswith("0"), text
        opened: dict[str, Any] = json.loads(text[1:])
        return opened

    async def connect(self, namespace: str = "/", auth: object = None) -> str:
        prefix = "" if namespace == "/" else namespace + ","
        self.send_text("40" + prefix + (json.dumps(auth) if auth is not None else ""))
        return await self.recv_text()

    def close(self) -> None:
        self.writer.close()


async def open_direct(server: LiveServer) -> RawSocket:
    raw, head = await RawSocket.open(server)
    assert head.startswith(b"HTTP/1.1 101"), head
    await raw.handshake()
    return raw


async def test_open_packet_has_engineio_fields(start_server: ServerFactory) -> None:
    server = await start_server(
        socketio_ping_interval=7, socketio_ping_timeout=3, max_socket_message_bytes=4096
    )
    raw, head = await RawSocket.open(server)
    assert b"Sec-WebSocket-Accept" in head and b"Sec-WebSocket-Extensions" not in head
    opened = await raw.handshake()
    assert opened.pop("sid")
    assert opened == {"upgrades": [], "pingInterval": 7000, "pingTimeout": 3000, "maxPayload": 4096}
    assert (await raw.connect()).startswith('40{"sid":')
    raw.close()


async def test_fragments_and_pings_between_them(server: LiveServer) -> None:
    raw = await open_direct(server)
    raw.send(TEXT, b"4", final=False)
    raw.send(PING, b"are you there")
    raw.send(0x0, b"0", final=True)
    assert await raw.recv() == (PONG, b"are you there")
    assert (await raw.recv_text()).startswith('40{"sid":')
    raw.send_text('420["resume-stream","nope"]')
    ack = await raw.recv_text()
    assert ack.startswith("430[") and json.loads(ack[3:])[0]["ok"] is False
    raw.close()


async def test_binary_events_get_an_error_ack_and_change_nothing(server: LiveServer, http: Any) -> None:
    session_id = await create_session(http, server)
    raw = await open_direct(server)
    await raw.connect()
    raw.send_text('451-7["pause-stream",{"_placeholder":true,"num":0}]')
    raw.send(BINARY, b"\x00\x01\x02")
    assert json.loads((await raw.recv_text())[3:]) == [
        {"ok": False, "error": "Binary payloads are not supported"}
    ]
    raw.send_text(f'428["join-stream","{session_id}"]')
    epoch = (await get_session(http, server, session_id))["epoch"]
    assert json.loads((await raw.recv_text())[3:]) == [
        {"ok": True, "state": "created", "lastSeq": -1, "epoch": epoch}
    ]
    raw.close()


async def test_malformed_packets_are_ignored(server: LiveServer, http: Any) -> None:
    session_id = await create_session(http, server)
    raw = await open_direct(server)
    await raw.connect()
    # (An empty message is no Engine.IO packet: it ends the connection, see
    # test_sio_direct_limits.py.)
    for junk in ("4x", "49", "42[", "42/nowhere,1[]", "4", "7", "42", '42{"a":1}'):
        raw.send_text(junk)
    raw.send_text('421["nope"]')
    assert json.loads((await raw.recv_text())[3:]) == [{"ok": False, "error": "Unknown event 'nope'"}]
    raw.send_text("4212[]")
    assert json.loads((await raw.recv_text())[4:]) == [{"ok": False, "error": "Malformed event"}]
    raw.send_text(f'422["join-stream","{session_id}"]')
    assert json.loads((await raw.recv_text())[3:])[0]["ok"] is True
    raw.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param({"opcode": TEXT, "payload": b"40", "masked": False}, 1002, id="unmasked"),
        pytest.param({"opcode": TEXT, "payload": b"4" * 2000}, 1009, id="too-big"),
        pytest.param({"opcode": TEXT, "payload": b"\xff\xfe"}, 1007, id="not-utf8"),
        pytest.param({"opcode": 0x3, "payload": b""}, 1002, id="unknown-opcode"),
        pytest.param({"opcode": 0x0, "payload": b"x"}, 1002, id="stray-continuation"),
        pytest.param({"opcode": PING, "payload": b"x", "final": False}, 1002, id="fragmented-ping"),
        pytest.param({"opcode": PING, "payload": b"x" * 126}, 1002, id="oversized-ping"),
        pytest.param({"opcode": CLOSE, "payload": b"\x03"}, 1002, id="one-byte-close"),
        pytest.param({"opcode": CLOSE, "payload": struct.pack("!H", 1005)}, 1002, id="reserved-close-code"),
        pytest.param(
            {"opcode": CLOSE, "payload": struct.pack("!H", 1000) + b"\xff"}, 1007, id="close-reason-not-utf8"
        ),
        pytest.param(
            {"opcode": CLOSE, "payload": struct.pack("!H", 4001) + b"bye"}, 4001, id="application-close-code"
        ),
    ],
)
async def test_protocol_errors_close_with_the_rfc_code(
    start_server: ServerFactory, http: Any, frame: dict[str, Any], code: int
) -> None:
    server = await start_server(max_socket_message_bytes=1024)
    session_id = await create_session(http, server)
    _, bystander = await stream_viewer(lambda: socketio.AsyncClient(reconnection=False), server, session_id)
    raw = await open_direct(server)
    raw.send(**frame)
    assert await raw.recv_close() == code
    # Everyone else is still served.
    await start_stream(http, server, session_id)
    await bystander.wait_finished()
    assert_exactly_once(bystander, (await get_session(http, server, session_id))["chunks"])


async def test_endless_empty_fragments_are_refused(server: LiveServer) -> None:
    raw = await open_direct(server)
    raw.send(TEXT, b"4", final=False)
    for _ in range(2000):
        raw.send(0x0, b"", final=False)
    hub = server.app[direct_hub_key]
    # Closed with the rest of the fragments unread, the kernel may reset instead.
    with contextlib.suppress(ConnectionResetError):
        assert await raw.recv_close() == 1009
    await wait_until(lambda: not hub.connections)


async def test_leaving_before_a_join_is_handled_leaves_no_viewer(server: LiveServer, http: Any) -> None:
    session_id = await create_session(http, server)
    session = server.manager.get_session(session_id)
    assert session is not None
    raw = await open_direct(server)
    await raw.connect()
    # One write: the join is still queued when the namespace is left.
    raw.send_text(f'421["join-stream","{session_id}"]')
    raw.send_text("41")
    raw.send_text('422["nope"]')
    raw.send_text("40")
    assert (await raw.recv_text()).startswith('40{"sid":')
    raw.send_text('423["nope"]')
    assert (await raw.recv_text()).startswith("433[")
    assert not session.viewers
    raw.close()


async def test_client_pings_are_not_echoed(server: LiveServer) -> None:
    """A client ping only belongs to a transport upgrade; python-engineio ignores it too."""
    raw = await open_direct(server)
    await raw.connect()
    raw.send_text("2probe")
    raw.send_text('421["nope"]')
    assert (await raw.recv_text()).startswith("431[")
    raw.close()


@pytest.mark.parametrize("sent", [b"", b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"])
async def test_a_connection_without_a_whole_request_is_closed(
    start_server: ServerFactory, sent: bytes
) -> None:
    server = await start_server(keepalive_timeout=0.3)
    parts = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(sent)
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()


async def test_close_frame_is_answered_and_the_viewer_leaves(server: LiveServer, http: Any) -> None:
    session_id = await create_session(http, server)
    session = server.manager.get_session(session_id)
    assert session is not None
    raw = await open_direct(server)
    assert (await raw.connect(f"/stream/{session_id}", {"lastSeq": -1})).startswith(
        f"40/stream/{session_id},"
    )
    assert len(session.viewers) == 1
    raw.send(CLOSE, struct.pack("!H", 1000))
    assert await raw.recv_close() == 1000
    await wait_until(lambda: not session.viewers)


async def test_refused_namespace_gets_connect_error(server: LiveServer) -> None:
    raw = await open_direct(server)
    reply = await raw.connect("/stream/not-a-session")
    assert reply == '44/stream/not-a-session,{"message":"Session not found"}'
    raw.close()


async def test_silent_client_is_dropped_after_ping_timeout(start_server: ServerFactory, http: Any) -> None:
    server = await start_server(socketio_ping_interval=0.2, socketio_ping_timeout=0.2)
    session_id = await create_session(http, server)
    session = server.manager.get_session(session_id)
    assert session is not None
    raw = await open_direct(server)
    await raw.connect(f"/stream/{session_id}")
    # A client that answers pings stays connected through several intervals.
    for _ in range(3):
        assert await raw.recv() == (TEXT, b"2")
        raw.send_text("3")
    assert len(session.viewers) == 1
    # One that stops answering is dropped, and stops being a viewer.
    async with asyncio.timeout(WAIT):
        while await raw.reader.read(1024):
            pass
    await wait_until(lambda: not session.viewers)


async def test_requests_it_does_not_take_go_to_python_socketio(start_server: ServerFactory) -> None:
    server = await start_server(cors_origins="http://allowed.example")
    # A WebSocket for an Engine.IO session opened by long-polling: python-engineio's answer.
    _, head = await RawSocket.open(server, "EIO=4&transport=websocket&sid=unknown")
    assert head.startswith(b"HTTP/1.1 400"), head
    # An origin that is not allowed: refused as any request from it (tests/test_access.py).
    _, head = await RawSocket.open(server, headers="Origin: http://evil.example\r\n")
    assert head.startswith(b"HTTP/1.1 403"), head
    _, head = await RawSocket.open(server, headers="Origin: http://allowed.example\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head


async def test_http_on_the_same_port_is_untouched(server: LiveServer) -> None:
    """Keep-alive, pipelining and a request head that arrives a few bytes at a time."""
    parts = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    request = f"GET /healthz HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    for i in range(0, len(request), 5):
        writer.write(request[i : i + 5])
        await writer.drain()
    writer.write(request + request)
    body = b""
    async with asyncio.timeout(WAIT):
        while body.count(b'{"status":"ok"}') < 3:
            body += await reader.read(4096)
    assert body.count(b"HTTP/1.1 200 OK") == 3
    writer.close()


async def test_polling_and_direct_viewers_share_a_session(
    server: LiveServer, http: Any, sio_clients: Any
) -> None:
    session_id = await create_session(http, server, maxTokens=200)
    namespace = f"/stream/{session_id}"
    polling = sio_clients()
    slow_path = record_events(polling, namespace)
    await polling.connect(server.url, namespaces=[namespace], transports=["polling"], wait_timeout=WAIT)
    _, direct = await stream_viewer(sio_clients, server, session_id)
    await start_stream(http, server, session_id)
    await slow_path.wait_finished()
    await direct.wait_finished()
    chunks = (await get_session(http, server, session_id))["chunks"]
    assert_exactly_once(slow_path, chunks)
    assert_exactly_once(direct, chunks)
    assert slow_path.text == direct.text
    # python-socketio's polling client waits about 20 s for its last long-poll when it
    # disconnects gracefully; this test is not about that.
    await polling.eio.disconnect(abort=True)


class FakeConnection:
    """What a ``DirectViewer`` writes to, recorded."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def queued(self) -> int:
        return 0

    def drop_namespace(self, namespace: str, *, stalled: bool) -> None:
        raise AssertionError("not dropped here")


@pytest.mark.parametrize("size", [1, 60, 200, 70_000])
def test_event_frames_are_the_text_frames_of_the_packet(size: int) -> None:
    """Built as bytes in one go: the same frame as the packet's text framed (each header size)."""
    namespace = "/stream/3f2b8c1e-1111-4222-8333-444455556666"
    prefix = f"42{namespace},"
    chunk = {"content": "é" * size, "seq": 3, "metadata": {"tokens": 1}}
    for event, payload in (("chunk", chunk), ("status", {"state": "streaming"})):
        expected = websocket_text_frame(prefix + encode_json([event, payload]))
        assert event_frame(prefix.encode(), event, payload) == expected
        connection = FakeConnection()
        viewer = DirectViewer(connection, namespace, "sid")
        viewer.send(event, payload)  # held until released
        assert connection.frames == []
        viewer.release()
        viewer.send(event, payload)
        assert connection.frames == [expected, expected]


def test_viewers_of_one_session_share_a_chunk_frame() -> None:
    """A chunk sent to several viewers of one session is encoded once; another namespace,
    or a new chunk, gets its own frame."""
    chunk = {"content": "hello", "seq": 0, "metadata": {}}
    connections = [FakeConnection() for _ in range(3)]
    viewers = [DirectViewer(c, "/stream/a", f"sid{i}") for i, c in enumerate(connections)]
    other = FakeConnection()
    viewers.append(DirectViewer(other, "/stream/b", "sid3"))
    for viewer in viewers:
        viewer.release()
        viewer.send("chunk", chunk)
    frames = [c.frames[0] for c in connections]
    assert frames[0] is frames[1] is frames[2]
    assert other.frames[0] == websocket_text_frame("42/stream/b," + encode_json(["chunk", chunk]))
    following = {"content": "hello", "seq": 1, "metadata": {}}
    viewers[0].send("chunk", following)
    assert connections[0].frames[1] == websocket_text_frame(
        "42/stream/a," + encode_json(["chunk", following])
    )
