"""Socket.IO for clients that open a WebSocket straight away, without Engine.IO's machinery.

socket.io-client with ``transports: ['websocket']`` (the frontend's service, the seed's
client, the benchmark) opens ``GET /socket.io/?EIO=4&transport=websocket`` and keeps
that one connection. python-engineio serves it with an aiohttp request handler and
``WebSocketResponse``, an Engine.IO socket with two asyncio queues, and three tasks:
about 36 KiB per idle client (``bench/RESULTS.md``, scenario e). Here such a
connection is one asyncio protocol object: frames are parsed as bytes arrive, events
are written straight to the transport, and one task pings every connection.

Every other request (HTTP, long-polling, a WebSocket upgraded from long-polling, a
handshake this module does not accept) is handed to aiohttp untouched, where
python-socketio answers it. Both paths call the same :class:`SocketAPI` methods.

On the wire this is Engine.IO v4 and Socket.IO v5 as python-socketio speaks them:
the ``open`` packet with the same ping settings and ``maxPayload``, CONNECT and
CONNECT_ERROR ``{"message": ...}``, EVENT with ack ids, DISCONNECT both ways, and a
server ping every ``pingInterval``. Binary attachments are not part of our protocol:
a binary event is answered with ``{ok: false, error}`` and its attachments skipped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import secrets
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs

import orjson

from server.models import encode_json
from server.sessions import Payload
from server.socket_api import DIRECT_WRITE_LIMIT, Ack, ConnectRefused, SocketAPI, websocket_text_frame

log = logging.getLogger(__name__)

#: A request head longer than this is not ours: aiohttp gets it (and answers it).
MAX_HANDSHAKE_BYTES = 16 * 1024
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: How often the heartbeat task looks at the connections, at most, in seconds.
HEARTBEAT_TICK = 1.0
#: Most frames one fragmented message may have (empty fragments cost nothing otherwise).
MAX_FRAGMENTS = 1024
#: Close codes a peer may send (RFC 6455 section 7.4); others are answered with 1002.
_VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

# WebSocket opcodes (RFC 6455 section 5.2) and close codes (section 7.4.1).
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR = 1000, 1001, 1002
CLOSE_INVALID_DATA, CLOSE_TOO_BIG = 1007, 1009

# Socket.IO v5 packet types.
SIO_CONNECT, SIO_DISCONNECT, SIO_EVENT, SIO_ACK, SIO_CONNECT_ERROR, SIO_BINARY_EVENT, SIO_BINARY_ACK = (
    "0123456"
)


def _control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


def _close_frame(code: int) -> bytes:
    return _control_frame(OP_CLOSE, struct.pack("!H", code))


def _unmask(data: bytes, mask: bytes) -> bytes:
    size = len(data)
    if not size:
        return data
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def _close_reply(payload: bytes) -> int:
    """The code to answer a close frame with (RFC 6455 sections 5.5.1 and 7.4)."""
    if not payload:
        return CLOSE_NORMAL
    if len(payload) < 2:
        return CLOSE_PROTOCOL_ERROR
    code: int = struct.unpack("!H", payload[:2])[0]
    if code not in _VALID_CLOSE_CODES and not 3000 <= code < 5000:
        return CLOSE_PROTOCOL_ERROR
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        return CLOSE_INVALID_DATA
    return code


def _namespace_prefix(namespace: str) -> str:
    return "" if namespace == "/" else namespace + ","


@dataclass(frozen=True, slots=True)
class SioPacket:
    """One decoded Socket.IO packet (``<type>[<n>-][<nsp>,][<id>][<json>]``)."""

    kind: str
    namespace: str
    ack_id: int | None
    data: Any
    attachments: int = 0


def parse_packet(text: str) -> SioPacket:
    """Decode a Socket.IO v5 packet; raises ``ValueError`` when it is malformed."""
    if not text or text[0] not in "0123456":
        raise ValueError("unknown packet type")
    kind, pos, size = text[0], 1, len(text)
    attachments = 0
    if kind in (SIO_BINARY_EVENT, SIO_BINARY_ACK):
        dash = text.index("-", pos)
        attachments = int(text[pos:dash])
        pos = dash + 1
    namespace = "/"
    if pos < size and text[pos] == "/":
        comma = text.find(",", pos)
        end = size if comma == -1 else comma
        namespace = text[pos:end]
        pos = end + 1 if comma != -1 else size
    start = pos
    while pos < size and text[pos].isdigit():
        pos += 1
    ack_id = int(text[start:pos]) if pos > start else None
    data = orjson.loads(text[pos:]) if pos < size else None
    return SioPacket(kind, namespace, ack_id, data, attachments)


def websocket_accept(head: bytes, origins: Sequence[str] | None) -> str | None:
    """``Sec-WebSocket-Accept`` for a direct Engine.IO v4 WebSocket request, else ``None``.

    ``head`` is the request line and headers. Anything unusual (another path, a ``sid``
    from long-polling, a missing or odd handshake header, an origin not allowed) gets
    ``None``: aiohttp and python-engineio then serve or refuse it as they always do.
    """
    lines = head.decode("latin-1").split("\r\n")
    request = lines[0].split(" ")
    if len(request) != 3 or request[0] != "GET" or request[2] != "HTTP/1.1":
        return None
    path, _, query = request[1].partition("?")
    if path not in ("/socket.io/", "/socket.io"):
        return None
    params = parse_qs(query)
    if params.get("EIO") != ["4"] or params.get("transport") != ["websocket"] or "sid" in params:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            return None
        headers[name.strip().lower()] = value.strip()
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if (
        headers.get("upgrade", "").lower() != "websocket"
        or "upgrade" not in connection
        or headers.get("sec-websocket-version") != "13"
    ):
        return None
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    origin = headers.get("origin")
    if origins is not None and origin is not None and origin not in origins:
        return None
    return base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()


class DirectHub:
    """The direct connections of one app, their heartbeat and their shutdown."""

    def __init__(
        self,
        api: SocketAPI,
        *,
        ping_interval: float,
        ping_timeout: float,
        max_payload: int,
        origins: Sequence[str] | None,
        idle_timeout: float = 75.0,
    ) -> None:
        self.api = api
        self.idle_timeout = idle_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_payload = max_payload
        self.origins = origins
        self.connections: set[SioConnection] = set()
        #: Connections whose request head has not arrived yet.
        self.handshakes: set[Handshake] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        #: The Engine.IO ``open`` packet's fields after ``sid``.
        self.open_fields = encode_json(
            {
                "upgrades": [],
                "pingInterval": int(ping_interval * 1000),
                "pingTimeout": int(ping_timeout * 1000),
                "maxPayload": max_payload,
            }
        )[1:]

    def protocol_factory(self, http: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        """Wrap aiohttp's protocol factory: each connection is looked at here first."""
        return lambda: Handshake(self, http)

    async def run_heartbeat(self) -> None:
        """Ping every connection each ``ping_interval``; drop those silent for longer than
        ``ping_interval + ping_timeout`` (python-engineio's rule)."""
        loop = asyncio.get_running_loop()
        tick = min(HEARTBEAT_TICK, self.ping_interval / 4, self.ping_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for connection in tuple(self.connections):
                try:
                    connection.heartbeat(now)
                except Exception:
                    log.exception("direct socket %s: heartbeat failed", connection.sid)
                    connection.abort()

    def close_all(self) -> None:
        """Server shutdown: every connection gets Engine.IO's close, then a close frame;
        connections still sending their request head are closed."""
        for connection in tuple(self.connections):
            connection.close(CLOSE_GOING_AWAY)
        for handshake in tuple(self.handshakes):
            handshake.close()


class Handshake(asyncio.Protocol):
    """The first protocol of every connection: reads the request head, then either
    serves a direct Socket.IO WebSocket or hands the connection to aiohttp."""

    __slots__ = ("_buffer", "_http", "_hub", "_timer", "_transport")

    def __init__(self, hub: DirectHub, http: Callable[[], asyncio.BaseProtocol]) -> None:
        self._hub = hub
        self._http = http
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)
        # aiohttp's own idle timeout starts only once it has the connection.
        self._timer = asyncio.get_running_loop().call_later(self._hub.idle_timeout, self.close)
        self._hub.handshakes.add(self)

    def close(self) -> None:
        """Give up on a connection that never sent a whole request head."""
        if self._transport is not None:
            self._transport.close()
        self._done()

    def _done(self) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._hub.handshakes.discard(self)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end == -1:
            if len(self._buffer) > MAX_HANDSHAKE_BYTES:
                self._hand_over(transport)
            return
        accept = websocket_accept(self._buffer[:end], self._hub.origins)
        if accept is None:
            self._hand_over(transport)
            return
        rest = self._buffer[end + 4 :]
        self._buffer = b""
        self._done()
        connection = SioConnection(self._hub, transport)
        transport.set_protocol(connection)
        connection.open(accept, rest)

    def _hand_over(self, transport: asyncio.Transport) -> None:
        protocol = cast(asyncio.Protocol, self._http())
        buffered, self._buffer = self._buffer, b""
        self._done()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(buffered)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()


class DirectViewer:
    """One namespace of a direct connection watching one session (see ``Viewer``).

    Like ``SocketIOViewer``, events sent before :meth:`release` (the replay on connect
    or join) wait until the CONNECT packet or the join's ack is written.
    """

    __slots__ = ("_connection", "_held", "_namespace", "_prefix", "key")

    def __init__(self, connection: SioConnection, namespace: str, sid: str) -> None:
        self.key = f"sio:{namespace}:{sid}"
        self._connection = connection
        self._namespace = namespace
        self._prefix = "42" + _namespace_prefix(namespace)
        self._held: list[str] | None = []

    def send(self, event: str, payload: Payload) -> None:
        data = self._prefix + encode_json([event, payload])
        if self._held is not None:
            self._held.append(data)
        else:
            self._connection.send_text(data)

    def release(self) -> None:
        held, self._held = self._held, None
        for data in held or ():
            self._connection.send_text(data)

    def backlog(self) -> int:
        return (len(self._held) if self._held else 0) + self._connection.queued()

    def close(self, reason: str) -> None:
        self._connection.drop_namespace(self._namespace, stalled=reason == "stalled")


class SioConnection(asyncio.Protocol):
    """One direct Engine.IO/Socket.IO WebSocket connection."""

    __slots__ = (
        "_buffer",
        "_closing",
        "_fragment_opcode",
        "_fragment_size",
        "_fragments",
        "_hub",
        "_last_seen",
        "_namespaces",
        "_next_ping",
        "_out",
        "_paused",
        "_skip_binary",
        "_transport",
        "_viewers",
        "sid",
    )

    def __init__(self, hub: DirectHub, transport: asyncio.Transport) -> None:
        self._hub = hub
        self._transport = transport
        self.sid = secrets.token_urlsafe(12)
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = OP_TEXT
        self._fragment_size = 0
        #: Connected namespaces: name -> the namespace's Socket.IO sid.
        self._namespaces: dict[str, str] = {}
        self._viewers: dict[str, DirectViewer] = {}
        #: Frames waiting while the transport's buffer is over its high-water mark.
        self._out: deque[bytes] | None = None
        self._paused = False
        self._closing = False
        self._skip_binary = 0
        self._last_seen = 0.0
        self._next_ping = 0.0

    # -- lifecycle -----------------------------------------------------------

    def open(self, accept: str, rest: bytes) -> None:
        hub = self._hub
        transport = self._transport
        transport.set_write_buffer_limits(high=DIRECT_WRITE_LIMIT)
        now = asyncio.get_running_loop().time()
        self._last_seen = now
        self._next_ping = now + hub.ping_interval
        hub.connections.add(self)
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        self._write(websocket_text_frame(f'0{{"sid":"{self.sid}",{hub.open_fields}'))
        if rest:
            self.data_received(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._out = None
        self._hub.connections.discard(self)
        for namespace in tuple(self._namespaces):
            self._leave(namespace)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        out = self._out
        while out and not self._paused:
            self._transport.write(out.popleft())
        if out is not None and not out and not self._closing:
            self._out = None
            self._transport.resume_reading()

    def heartbeat(self, now: float) -> None:
        hub = self._hub
        if now - self._last_seen > hub.ping_interval + hub.ping_timeout:
            log.debug("direct socket %s: no pong, closing", self.sid)
            self.abort()
        elif now >= self._next_ping:
            self._next_ping = now + hub.ping_interval
            self._write(websocket_text_frame("2"))

    def close(self, code: int = CLOSE_NORMAL, *, announce: bool = True) -> None:
        """Engine.IO ``close`` (unless the client sent it), a close frame, then the TCP
        close once both are flushed."""
        if self._closing:
            return
        if announce:
            self._write(websocket_text_frame("1"))
        self._write(_close_frame(code))
        self._closing = True
        self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, unsent data included."""
        self._closing = True
        self._transport.abort()

    def _fail(self, code: int, why: str) -> None:
        log.info("direct socket %s: %s, closing", self.sid, why)
        self._write(_close_frame(code))
        self._closing = True
        self._transport.close()

    # -- writing -------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self._closing:
            return
        if self._paused or self._out:
            if self._out is None:
                self._out = deque()
                # A client that does not read is not read either: what it sends could
                # only add replies to this queue.
                self._transport.pause_reading()
            self._out.append(frame)
        else:
            self._transport.write(frame)

    def send_text(self, text: str) -> None:
        """One Engine.IO packet (``text`` starts with its type) in one text frame."""
        self._write(websocket_text_frame(text))

    def queued(self) -> int:
        return len(self._out) if self._out else 0

    def _send_packet(self, kind: str, namespace: str, body: str) -> None:
        self.send_text("4" + kind + _namespace_prefix(namespace) + body)

    # -- reading -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos, size = 0, len(buffer)
        while size - pos >= 2 and not self._closing:
            first, second = buffer[pos], buffer[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if first & 0x70 or not second & 0x80:
                self._fail(CLOSE_PROTOCOL_ERROR, "unmasked frame or unknown extension bits")
                return
            if length > self._hub.max_payload:
                self._fail(CLOSE_TOO_BIG, f"frame of {length} bytes")
                return
            end = pos + head + 4 + length
            if end > size:
                break
            mask = bytes(buffer[pos + head : pos + head + 4])
            payload = _unmask(bytes(buffer[pos + head + 4 : end]), mask)
            pos = end
            self._frame(bool(first & 0x80), first & 0x0F, payload)
        del buffer[:pos]

    def _frame(self, final: bool, opcode: int, payload: bytes) -> None:
        self._last_seen = asyncio.get_running_loop().time()
        if opcode >= OP_CLOSE:
            if not final or len(payload) > 125:
                self._fail(CLOSE_PROTOCOL_ERROR, "fragmented or oversized control frame")
                return
            self._control(opcode, payload)
            return
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                self._fail(CLOSE_PROTOCOL_ERROR, "continuation without a first frame")
                return
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if self._fragment_size > self._hub.max_payload or len(self._fragments) > MAX_FRAGMENTS:
                self._fail(CLOSE_TOO_BIG, "fragmented message too big")
                return
            if not final:
                return
            payload, self._fragments = b"".join(self._fragments), None
            opcode = self._fragment_opcode
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                self._fail(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                return
            if not final:
                self._fragments, self._fragment_opcode = [payload], opcode
                self._fragment_size = len(payload)
                return
        else:
            self._fail(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            return
        if opcode == OP_BINARY:
            if self._skip_binary:
                self._skip_binary -= 1
            return
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self._fail(CLOSE_INVALID_DATA, "text frame is not UTF-8")
            return
        self._engineio(text)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self._write(_control_frame(OP_PONG, payload[:125]))
        elif opcode == OP_CLOSE:
            self._write(_close_frame(_close_reply(payload)))
            self._closing = True
            self._transport.close()
        elif opcode != OP_PONG:
            self._fail(CLOSE_PROTOCOL_ERROR, f"unknown control opcode {opcode}")

    def _engineio(self, text: str) -> None:
        kind = text[:1]
        if kind == "4":
            self._socketio(text[1:])
        elif kind == "1":
            self.close(announce=False)
        # "3" (pong) only refreshes _last_seen. A client "2" (ping) belongs to a transport
        # upgrade, which a direct WebSocket never has: ignored, as python-engineio does,
        # like "6" (noop) and anything else.

    def _socketio(self, text: str) -> None:
        try:
            packet = parse_packet(text)
        except ValueError:
            log.debug("direct socket %s: malformed Socket.IO packet ignored", self.sid)
            return
        kind, namespace = packet.kind, packet.namespace
        if kind == SIO_CONNECT:
            self._connect(namespace, packet.data)
        elif kind == SIO_DISCONNECT:
            self._leave(namespace)
        elif kind == SIO_EVENT:
            self._event(namespace, packet.ack_id, packet.data)
        elif kind in (SIO_BINARY_EVENT, SIO_BINARY_ACK):
            self._skip_binary += packet.attachments
            if kind == SIO_BINARY_EVENT and packet.ack_id is not None and namespace in self._namespaces:
                self._ack(
                    namespace, packet.ack_id, {"ok": False, "error": "Binary payloads are not supported"}
                )

    # -- Socket.IO -----------------------------------------------------------

    def _connect(self, namespace: str, auth: object) -> None:
        if namespace in self._namespaces:
            return
        sid = secrets.token_urlsafe(12)
        if namespace != "/":
            viewer = DirectViewer(self, namespace, sid)
            try:
                self._hub.api.attach(namespace, auth, viewer)
            except ConnectRefused as exc:
                self._send_packet(SIO_CONNECT_ERROR, namespace, encode_json({"message": str(exc)}))
                return
            self._viewers[namespace] = viewer
        self._namespaces[namespace] = sid
        self._send_packet(SIO_CONNECT, namespace, encode_json({"sid": sid}))
        if namespace != "/":
            self._viewers[namespace].release()

    def _leave(self, namespace: str) -> None:
        sid = self._namespaces.pop(namespace, None)
        if sid is None:
            return
        if namespace == "/":
            self._hub.api.root_closed(sid)
        else:
            viewer = self._viewers.pop(namespace)
            self._hub.api.detach(namespace, viewer.key)

    def drop_namespace(self, namespace: str, *, stalled: bool) -> None:
        """The server ends this namespace; a stalled connection is dropped entirely
        (whatever else it carries is stuck behind the same full buffer)."""
        if namespace in self._namespaces:
            self._send_packet(SIO_DISCONNECT, namespace, "")
            self._leave(namespace)
        if stalled and not self._closing:
            self._closing = True
            self._transport.abort()

    def _event(self, namespace: str, ack_id: int | None, data: object) -> None:
        sid = self._namespaces.get(namespace)
        if sid is None:
            return
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            if ack_id is not None:
                self._ack(namespace, ack_id, {"ok": False, "error": "Malformed event"})
            return
        task = asyncio.get_running_loop().create_task(
            self._dispatch(namespace, sid, ack_id, data[0], data[1:])
        )
        tasks = self._hub.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _dispatch(
        self, namespace: str, sid: str, ack_id: int | None, event: str, args: Sequence[object]
    ) -> None:
        if self._namespaces.get(namespace) != sid:
            return  # the client left the namespace before its event got its turn
        api = self._hub.api
        try:
            if namespace == "/":
                ack = await api.root_event(sid, event, args, lambda: DirectViewer(self, "/", sid))
            else:
                ack = await api.stream_event(namespace, event)
        except Exception:
            log.exception("direct socket %s: event %r failed", self.sid, event[:64])
            ack = {"ok": False, "error": "Internal server error"}
        if ack_id is not None and self._namespaces.get(namespace) == sid:
            self._ack(namespace, ack_id, ack)

    def _ack(self, namespace: str, ack_id: int, ack: Ack) -> None:
        self._send_packet(SIO_ACK, namespace, f"{ack_id}{encode_json([ack])}")
