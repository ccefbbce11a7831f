"""Socket.IO for clients that open a WebSocket straight away, without Engine.IO's machinery.

socket.io-client with ``transports: ['websocket']`` (the frontend's service, the seed's
client, the benchmark) opens ``GET /socket.io/?EIO=4&transport=websocket`` and keeps
that one connection. python-engineio serves it with an aiohttp request handler and
``WebSocketResponse``, an Engine.IO socket with two asyncio queues, and three tasks:
about 36 KiB per idle client (``bench/RESULTS.md``, scenario e). Here such a
connection is one asyncio protocol object: bytes are fed to the codecs of
:mod:`server.transports.wire` as they arrive, events are written straight to the transport, and
one task pings every connection.

Every other request (HTTP, long-polling, a WebSocket upgraded from long-polling, a
handshake this module does not accept) is handed to aiohttp untouched, where
python-socketio answers it. Both paths call the same :class:`SocketAPI` methods.

On the wire this is Engine.IO v4 and Socket.IO v5 as python-socketio speaks them:
the ``open`` packet with the same ping settings and ``maxPayload``, CONNECT and
CONNECT_ERROR ``{"message": ...}``, EVENT with ack ids, DISCONNECT both ways, and a
server ping every ``pingInterval``. Binary attachments are not part of our protocol:
a binary event is answered with ``{ok: false, error}`` and its attachments skipped.

Around this connection protocol: every connection's request head is read by
:mod:`server.transports.sio_direct_handshake`; what one client may cost (issue 12), and
its refusals, is :mod:`server.transports.sio_direct_limits`; the pings, and who is dropped
for not answering them, are :mod:`server.transports.sio_direct_heartbeat`.

Handlers are named by direction: ``_on_*`` receive, ``_send_*`` send.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from server.core.models import encode_json
from server.guards.ratelimit import Limits, TokenBucket
from server.transports.sio_direct_handshake import Handshake
from server.transports.sio_direct_heartbeat import Heartbeat, Pinged
from server.transports.sio_direct_limits import COUNTED, ConnectionLimits, Item
from server.transports.sio_direct_viewer import DirectViewer
from server.transports.socket_api import MALFORMED_EVENT, ConnectRefused, SocketAPI
from server.transports.socketio_viewer import DIRECT_WRITE_LIMIT
from server.transports.wire import socketio as sio_wire
from server.transports.wire import websocket as ws_wire
from server.transports.wire.socketio import Ack, error_ack

log = logging.getLogger(__name__)


class DirectHub(Heartbeat):
    """The direct connections of one app, their heartbeat (:class:`Heartbeat`) and their
    shutdown."""

    def __init__(
        self,
        api: SocketAPI,
        *,
        ping_interval: float,
        ping_timeout: float,
        max_payload: int,
        origins: ws_wire.OriginCheck | None,
        idle_timeout: float = 75.0,
        limits: Limits | None = None,
        handshake_timeout: float = 10.0,
        max_partial_total: int = 64 * 1024 * 1024,
        max_packets_per_turn: int = 32,
    ) -> None:
        super().__init__(ping_interval, ping_timeout)
        self.api = api
        #: The app's rate limits and counts per address (``None``: unlimited, in unit tests).
        self.limits = limits
        self.handshake_timeout = handshake_timeout
        self.max_partial_total = max_partial_total
        self.max_packets_per_turn = max_packets_per_turn
        self.idle_timeout = idle_timeout
        self.max_payload = max_payload
        self.origins = origins
        self.connections: set[SioConnection] = set()
        #: Connections whose request head has not arrived yet.
        self.handshakes: set[Handshake] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.open_fields = sio_wire.open_fields(ping_interval, ping_timeout, max_payload)
        #: Bytes all connections hold in unfinished messages (``max_partial_total`` at most).
        self.partial_bytes = 0

    def protocol_factory(self, http: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        """Wrap aiohttp's protocol factory: each connection is looked at here first."""
        return lambda: Handshake(self, http)

    def open_connection(
        self, transport: asyncio.Transport, handshake: ws_wire.Handshake, address: str | None, rest: bytes
    ) -> None:
        """Serve an admitted direct request (``rest``: what followed its head) on ``transport``."""
        connection = SioConnection(self, transport, address)
        transport.set_protocol(connection)
        accept = ws_wire.accept_key(handshake.headers["sec-websocket-key"])
        connection.open(accept, rest, asyncio.get_running_loop().time())

    def close_all(self) -> None:
        """Server shutdown: every connection gets Engine.IO's close, then a close frame;
        connections still sending their request head are closed."""
        for connection in tuple(self.connections):
            connection.close(ws_wire.CLOSE_GOING_AWAY)
        for handshake in tuple(self.handshakes):
            handshake.close()


class SioConnection(ConnectionLimits, Pinged, asyncio.Protocol):
    """One direct Engine.IO/Socket.IO WebSocket connection.

    Its bounds are :class:`ConnectionLimits`, its heartbeat :class:`Pinged`: mixins
    whose state is held here.
    """

    __slots__ = (
        "_address",
        "_backlog",
        "_closing",
        "_connect_by",
        "_deadline",
        "_hub",
        "_messages",
        "_namespaces",
        "_next_ping",
        "_out",
        "_partial",
        "_paused",
        "_reader",
        "_skip_binary",
        "_transport",
        "_viewers",
        "sid",
    )

    def __init__(self, hub: DirectHub, transport: asyncio.Transport, address: str | None = None) -> None:
        self._hub = hub
        self._transport = transport
        #: The client address counted in ``limits.connections`` until the connection ends.
        self._address = address
        self.sid = secrets.token_urlsafe(12)
        self._reader = ws_wire.FrameReader(hub.max_payload)
        #: Connected namespaces: name -> the namespace's Socket.IO sid.
        self._namespaces: dict[str, str] = {}
        self._viewers: dict[str, DirectViewer] = {}
        #: Frames waiting while the transport's buffer is over its high-water mark.
        self._out: deque[bytes] | None = None
        #: What was read beyond this loop turn's ``max_packets_per_turn`` (reading paused).
        self._backlog: deque[Item] | None = None
        #: Bytes of unfinished messages counted in ``hub.partial_bytes``.
        self._partial = 0
        #: The rate of messages, made on the first one (an idle connection has none).
        self._messages: TokenBucket | None = None
        self._paused = False
        self._closing = False
        self._skip_binary = 0
        #: When the connection is closed unless a CONNECT is answered by then (``inf``:
        #: one was).
        self._connect_by = math.inf
        #: When the unanswered ping expires (``inf``: no ping unanswered).
        self._deadline = math.inf
        self._next_ping = 0.0

    # -- lifecycle -----------------------------------------------------------

    def open(self, accept: str, rest: bytes, now: float) -> None:
        hub = self._hub
        transport = self._transport
        transport.set_write_buffer_limits(high=DIRECT_WRITE_LIMIT)
        self._connect_by = now + hub.handshake_timeout
        self._next_ping = hub.first_ping(now)
        hub.connections.add(self)
        transport.write(ws_wire.switching_protocols(accept))
        self.send_text(sio_wire.open_packet(self.sid, hub.open_fields))
        if rest:
            self.data_received(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._out = None
        self._backlog = None
        hub = self._hub
        hub.connections.discard(self)
        self._release_partial()
        self._release_address()
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
            self._resume_reading()

    def _resume_reading(self) -> None:
        """Read again once neither the write queue nor the backlog holds reading back."""
        if self._out is None and self._backlog is None and not self._closing:
            self._transport.resume_reading()

    def close(self, code: int = ws_wire.CLOSE_NORMAL, *, announce: bool = True) -> None:
        """Engine.IO ``close`` (unless the client sent it), a close frame, then the TCP
        close once both are flushed."""
        if self._closing:
            return
        if announce:
            self.send_text(sio_wire.EIO_CLOSE)
        self._send_close(code)

    def abort(self) -> None:
        """Drop the connection at once, unsent data included."""
        self._closing = True
        self._transport.abort()

    # -- sending -------------------------------------------------------------

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
        self._write(ws_wire.websocket_text_frame(text))

    #: One whole frame, built by the caller (a viewer's events:
    #: :func:`server.transports.sio_direct_viewer.event_frame`).
    send_frame = _write

    def _send_close(self, code: int) -> None:
        """A close frame, then the TCP close once it is flushed."""
        self._write(ws_wire.close_frame(code))
        self._closing = True
        self._backlog = None
        self._transport.close()

    def _send_packet(self, kind: str, namespace: str, body: str = "") -> None:
        self.send_text(sio_wire.encode_packet(kind, namespace, body))

    def _send_ack(self, namespace: str, ack_id: int, ack: Ack) -> None:
        self.send_text(sio_wire.ack_packet(namespace, ack_id, ack))

    def _send_connect_error(self, namespace: str, message: str) -> None:
        # Not the end of the handshake: a socket with no namespace connected is still
        # closed at HANDSHAKE_TIMEOUT, as on python-socketio's path.
        self._send_packet(sio_wire.SIO_CONNECT_ERROR, namespace, encode_json({"message": message}))

    def queued(self) -> int:
        return len(self._out) if self._out else 0

    # -- receiving: WebSocket ------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        reader = self._reader
        items = reader.feed(data)
        if reader.partial_bytes != self._partial and not self._hold_partial(reader.partial_bytes):
            return
        if self._backlog is not None:
            self._backlog.extend(items)
        elif items:
            self._on_items(deque(items))

    def _on_item(self, item: Item) -> None:
        if isinstance(item, ws_wire.Violation):
            log.info("direct socket %s: %s, closing", self.sid, item.reason)
            self._send_close(item.code)
        else:
            self._on_frame(item)

    def _on_frame(self, frame: ws_wire.Frame) -> None:
        opcode = frame.opcode
        if opcode == ws_wire.OP_TEXT:
            try:
                text = frame.payload.decode()
            except UnicodeDecodeError:
                log.info("direct socket %s: text frame is not UTF-8, closing", self.sid)
                self._send_close(ws_wire.CLOSE_INVALID_DATA)
                return
            self._on_engineio_packet(text)
        elif opcode == ws_wire.OP_BINARY:
            if self._skip_binary:
                self._skip_binary -= 1
        elif opcode == ws_wire.OP_PING:
            self._write(ws_wire.control_frame(ws_wire.OP_PONG, frame.payload))
        elif opcode == ws_wire.OP_CLOSE:
            self._send_close(ws_wire.close_reply(frame.payload))

    # -- receiving: Engine.IO and Socket.IO ----------------------------------

    def _on_engineio_packet(self, text: str) -> None:
        kind = sio_wire.engineio_kind(text)
        if kind == sio_wire.EIO_MESSAGE:
            self._on_socketio_packet(text[1:])
        elif kind == sio_wire.EIO_PONG:
            # The only sign of life: WebSocket pings and fragments do not count.
            self._deadline = math.inf
        elif kind == sio_wire.EIO_CLOSE:
            self.close(announce=False)
        elif kind == sio_wire.EIO_UPGRADE:
            self.send_text(sio_wire.EIO_NOOP)  # as python-engineio answers it
        elif kind is None:
            # python-engineio's reader dies on it (the packet cannot be decoded), and the
            # session ends with a bare close frame at the next unanswered ping: the same
            # end, at once.
            log.info("direct socket %s: text message is no Engine.IO packet, closing", self.sid)
            self.close(announce=False)
        # A client ping belongs to a transport upgrade, which a direct WebSocket never
        # has: ignored, as python-engineio does, like noop, open, other types and base64
        # binary messages (no binary in our protocol).

    def _on_socketio_packet(self, text: str) -> None:
        try:
            packet = sio_wire.parse_packet(text)
        except ValueError:
            log.debug("direct socket %s: malformed Socket.IO packet ignored", self.sid)
            return
        kind, namespace = packet.kind, packet.namespace
        if kind in COUNTED and not self._within_rate():
            self._on_over_rate(kind, namespace, packet.ack_id)
        elif kind == sio_wire.SIO_CONNECT:
            self._on_connect(namespace, packet.data)
        elif kind == sio_wire.SIO_DISCONNECT:
            self._leave(namespace)
        elif kind == sio_wire.SIO_EVENT:
            self._on_event(namespace, packet.ack_id, packet.data)
        elif kind in (sio_wire.SIO_BINARY_EVENT, sio_wire.SIO_BINARY_ACK):
            self._skip_binary += packet.attachments
            if (
                kind == sio_wire.SIO_BINARY_EVENT
                and packet.ack_id is not None
                and namespace in self._namespaces
            ):
                self._send_ack(namespace, packet.ack_id, error_ack("Binary payloads are not supported"))

    def _on_connect(self, namespace: str, auth: object) -> None:
        if namespace in self._namespaces:
            return
        if namespace == "/":
            sid = secrets.token_urlsafe(12)
            try:
                self._hub.api.connect_root(sid, auth)
            except ConnectRefused as exc:
                self._send_connect_error(namespace, str(exc))
                return
            self._connected(namespace, sid, None)
            return
        self._spawn(self._connect_stream(namespace, auth))

    async def _connect_stream(self, namespace: str, auth: object) -> None:
        """CONNECT to ``/stream/{id}``: the session may have to be looked up in Redis."""
        sid = secrets.token_urlsafe(12)
        viewer = DirectViewer(self, namespace, sid)
        api = self._hub.api
        try:
            await api.attach(namespace, auth, viewer)
        except ConnectRefused as exc:
            self._send_connect_error(namespace, str(exc))
            return
        if self._closing or namespace in self._namespaces:
            api.detach(namespace, viewer.key)
            return
        self._connected(namespace, sid, viewer)

    def _connected(self, namespace: str, sid: str, viewer: DirectViewer | None) -> None:
        self._connect_by = math.inf  # answered: the handshake is over
        self._namespaces[namespace] = sid
        if viewer is not None:
            self._viewers[namespace] = viewer
        self._send_packet(sio_wire.SIO_CONNECT, namespace, encode_json({"sid": sid}))
        if viewer is not None:
            viewer.release()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        tasks = self._hub.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

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
            self._send_packet(sio_wire.SIO_DISCONNECT, namespace)
            self._leave(namespace)
        if stalled and not self._closing:
            self._closing = True
            self._transport.abort()

    def _on_event(self, namespace: str, ack_id: int | None, data: object) -> None:
        sid = self._namespaces.get(namespace)
        if sid is None:
            return
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            if ack_id is not None:
                self._send_ack(namespace, ack_id, error_ack(MALFORMED_EVENT))
            return
        self._spawn(self._dispatch(namespace, sid, ack_id, data[0], data[1:]))

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
                ack = await api.stream_event(namespace, self._viewers[namespace].key, event)
        except Exception:
            log.exception("direct socket %s: event %r failed", self.sid, event[:64])
            ack = error_ack("Internal server error")
        if ack_id is not None and self._namespaces.get(namespace) == sid:
            self._send_ack(namespace, ack_id, ack)
