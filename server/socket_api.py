"""Socket.IO events: ``join-stream`` and friends on ``/``, and the ``/stream/{id}`` namespaces.

Every handler answers with an ack: ``{ok: true, ...}`` or ``{ok: false, error}``. A
malformed payload changes nothing and never affects other clients.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import socketio
from engineio.packet import MESSAGE as ENGINEIO_MESSAGE
from engineio.packet import Packet as EngineIOPacket
from pydantic import ValidationError

from server.manager import StreamingSessionManager
from server.models import JoinIn, encode_json, parse_last_seq, parse_session_id
from server.sessions import Payload, SessionConflict, SessionFull, StreamingSession, Viewer

log = logging.getLogger(__name__)

STREAM_NAMESPACE_PREFIX = "/stream/"
SESSION_NOT_FOUND = "Session not found"

Ack = dict[str, Any]


#: Events are written straight to a WebSocket only while less than this is buffered for it.
DIRECT_WRITE_LIMIT = 64 * 1024
ENGINEIO_MESSAGE_PREFIX = "4"


def websocket_text_frame(text: str) -> bytes:
    """One unmasked, final, uncompressed text frame (RFC 6455 section 5.2), server to client."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def _websocket_transport(environ: dict[str, Any] | None) -> asyncio.WriteTransport | None:
    """The connection under an Engine.IO session opened as a WebSocket (not upgraded from
    long-polling, whose first request is another connection)."""
    request = environ.get("aiohttp.request") if environ else None
    if request is None or request.headers.get("Upgrade", "").lower() != "websocket":
        return None
    transport: asyncio.WriteTransport | None = request.transport
    return transport


def event_prefix(namespace: str) -> str:
    """The start of a Socket.IO v5 EVENT packet for ``namespace`` (``2`` or ``2/ns,``)."""
    return "2" if namespace == "/" else f"2{namespace},"


def _error(message: str) -> Ack:
    return {"ok": False, "error": message}


class SocketIOViewer:
    """One Socket.IO connection watching one session.

    Events are encoded once. On a WebSocket connection whose Engine.IO writer is idle
    (nothing of Engine.IO's queued or in flight) and whose socket buffer is small, the
    frame is written to the connection at once, as Node's Socket.IO does; otherwise it
    goes on the Engine.IO socket's queue, which its writer drains. ``sio.emit`` would
    spawn and await a task per packet. The queue is the viewer's backlog: a client that
    stops reading fills the socket buffer, then the queue, and shows as lagging.
    Events sent before :meth:`release` (the replay on join) are held until the
    namespace's CONNECT or the join's ack has been queued ahead of them.
    """

    __slots__ = (
        "_closing",
        "_held",
        "_namespace",
        "_prefix",
        "_sid",
        "_sio",
        "_socket",
        "_transport",
        "key",
    )

    def __init__(self, sio: socketio.AsyncServer, sid: str, namespace: str) -> None:
        self.key = f"sio:{namespace}:{sid}"
        self._sio = sio
        self._sid = sid
        self._namespace = namespace
        self._prefix = event_prefix(namespace)
        eio_sid = sio.manager.eio_sid_from_sid(sid, namespace)
        self._socket: Any = sio.eio.sockets.get(eio_sid) if eio_sid is not None else None
        self._transport = _websocket_transport(sio.get_environ(sid, namespace))
        self._held: list[str] | None = []
        self._closing: asyncio.Task[None] | None = None

    def send(self, event: str, payload: Payload) -> None:
        data = self._prefix + encode_json([event, payload])
        if self._held is not None:
            self._held.append(data)
            return
        self._deliver(data)

    def _deliver(self, data: str) -> None:
        socket = self._socket
        if socket is None or socket.closed:
            return
        queue = socket.queue
        transport = self._transport
        if (
            transport is not None
            and queue.empty()
            and queue._getters  # the writer waits for work: nothing of Engine.IO's is in flight
            and not transport.is_closing()
            and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
        ):
            transport.write(websocket_text_frame(ENGINEIO_MESSAGE_PREFIX + data))
        else:
            queue.put_nowait(EngineIOPacket(ENGINEIO_MESSAGE, data))

    def release(self, attempt: int = 0) -> None:
        """Send what was held, once the client is connected to the namespace."""
        if self._held is None:
            return
        if not self._sio.manager.is_connected(self._sid, self._namespace) and attempt < 100:
            asyncio.get_running_loop().call_soon(self.release, attempt + 1)
            return
        held, self._held = self._held, None
        for data in held:
            self._deliver(data)

    def backlog(self) -> int:
        held = len(self._held) if self._held is not None else 0
        socket = self._socket
        return held + (socket.queue.qsize() if socket is not None else 0)

    def close(self, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._sio.disconnect(self._sid, namespace=self._namespace)
            )


def _session_ref(data: object) -> tuple[str, int | None]:
    """A ``sessionId`` or ``{sessionId, lastSeq?}``; raises ``ValueError`` with a clear message."""
    if isinstance(data, dict):
        try:
            ref = JoinIn.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            raise ValueError(f"Invalid {where}: {first['msg']}") from None
        return ref.session_id, ref.last_seq
    session_id = parse_session_id(data)
    if session_id is None:
        raise ValueError("Expected a sessionId (a session UUID) or {sessionId, lastSeq}")
    return session_id, None


Handler = Callable[..., Awaitable[Ack]]


def _guarded(handler: Handler) -> Handler:
    """Turn any unexpected exception into an ``ok: false`` ack instead of a silent drop."""

    async def wrapper(*args: Any) -> Ack:
        try:
            return await handler(*args)
        except Exception:
            log.exception("socket handler %s failed", handler.__name__)
            return _error("Internal server error")

    wrapper.__name__ = handler.__name__
    return wrapper


class ReleasableViewer(Viewer, Protocol):
    """A viewer that holds what it is sent until the client has its CONNECT or ack."""

    def release(self) -> None: ...


class ConnectRefused(Exception):
    """A ``/stream/{id}`` namespace refuses the connection (sent as CONNECT_ERROR)."""


Action = Callable[[StreamingSession], Awaitable[Ack]]


class SocketAPI:
    """The Socket.IO events, independent of the connection that carries them.

    Two transports feed it: python-socketio (long-polling, and WebSockets upgraded from
    it) through the handlers registered here, and :mod:`server.sio_direct` for clients
    that open a WebSocket straight away. Both call the same methods, so both behave
    the same on the wire.
    """

    def __init__(self, sio: socketio.AsyncServer, manager: StreamingSessionManager) -> None:
        self.sio = sio
        self.manager = manager
        #: Namespace ``/``: which sessions each connection joined (by connection key).
        self._joined: dict[str, dict[str, Viewer]] = {}
        #: ``/stream/{id}`` namespaces: (namespace, viewer key) -> viewer.
        self._stream_viewers: dict[tuple[str, str], Viewer] = {}
        self._root_actions: dict[str, Action] = {
            "pause-stream": _pause,
            "resume-stream": _resume,
            "cancel-stream": _cancel,
        }

        sio.on("*", _guarded(self._sio_root_event), namespace="/")
        sio.on("disconnect", self._sio_root_disconnect, namespace="/")
        sio.on("connect", self._sio_connect, namespace="*")
        sio.on("disconnect", self._sio_disconnect, namespace="*")
        sio.on("*", _guarded(self._sio_stream_event), namespace="*")

    def _lookup(self, data: object) -> tuple[StreamingSession, int | None]:
        session_id, last_seq = _session_ref(data)
        session = self.manager.get_session(session_id)
        if session is None:
            raise LookupError(SESSION_NOT_FOUND)
        return session, last_seq

    # -- namespace "/" ------------------------------------------------------

    async def root_event(
        self,
        conn: str,
        event: str,
        args: Sequence[object],
        make_viewer: Callable[[], ReleasableViewer],
    ) -> Ack:
        """One event on namespace ``/`` from connection ``conn``; returns its ack."""
        try:
            if event == "join-stream":
                return self._join(conn, args, make_viewer)
            if event == "leave-stream":
                return self._leave(conn, args)
            action = self._root_actions.get(event)
            if action is None:
                return _error(f"Unknown event {event[:64]!r}")
            session, _ = self._lookup(args[0] if args else None)
        except (ValueError, LookupError) as exc:
            return _error(str(exc))
        return await action(session)

    def _join(self, conn: str, args: Sequence[object], make_viewer: Callable[[], ReleasableViewer]) -> Ack:
        session, last_seq = self._lookup(args[0] if args else None)
        viewer = make_viewer()
        try:
            position = session.add_viewer(viewer, last_seq)
        except SessionFull as exc:
            return _error(str(exc))
        self._joined.setdefault(conn, {})[session.id] = viewer
        # The ack goes out as the event's handler returns; the replay follows it.
        asyncio.get_running_loop().call_soon(viewer.release)
        return {"ok": True, **position}

    def _leave(self, conn: str, args: Sequence[object]) -> Ack:
        session, _ = self._lookup(args[0] if args else None)
        viewer = self._joined.get(conn, {}).pop(session.id, None)
        if viewer is not None:
            session.remove_viewer(viewer.key)
        return {"ok": True}

    def root_closed(self, conn: str) -> None:
        """Connection ``conn`` left namespace ``/``: it stops watching what it joined."""
        for session_id, viewer in self._joined.pop(conn, {}).items():
            session = self.manager.get_session(session_id)
            if session is not None:
                session.remove_viewer(viewer.key)

    # -- namespaces "/stream/{id}" ------------------------------------------

    def _namespace_session(self, namespace: str) -> StreamingSession | None:
        if not namespace.startswith(STREAM_NAMESPACE_PREFIX):
            return None
        session_id = parse_session_id(namespace[len(STREAM_NAMESPACE_PREFIX) :])
        return self.manager.get_session(session_id) if session_id else None

    def attach(self, namespace: str, auth: object, viewer: Viewer) -> None:
        """A client connects to ``/stream/{id}``: replay from ``auth.lastSeq`` and keep it live.

        Raises :class:`ConnectRefused` with the reason the client is told.
        """
        session = self._namespace_session(namespace)
        if session is None:
            raise ConnectRefused(SESSION_NOT_FOUND)
        try:
            last_seq = parse_last_seq(auth.get("lastSeq") if isinstance(auth, dict) else None)
        except (ValueError, TypeError):
            raise ConnectRefused("Invalid lastSeq: expected an integer >= -1") from None
        try:
            session.add_viewer(viewer, last_seq)
        except SessionFull as exc:
            raise ConnectRefused(str(exc)) from None
        self._stream_viewers[(namespace, viewer.key)] = viewer

    def detach(self, namespace: str, key: str) -> None:
        """The viewer ``key`` left ``namespace`` (or its connection closed)."""
        viewer = self._stream_viewers.pop((namespace, key), None)
        session = self._namespace_session(namespace)
        if viewer is not None and session is not None:
            session.remove_viewer(key)

    async def stream_event(self, namespace: str, event: str) -> Ack:
        """One event on a ``/stream/{id}`` namespace; the namespace names the session."""
        action = self._root_actions.get(event)
        if action is None:
            return _error(f"Unknown event {event[:64]!r}")
        session = self._namespace_session(namespace)
        if session is None:
            return _error(SESSION_NOT_FOUND)
        return await action(session)

    def viewers(self) -> int:
        return len(self._stream_viewers) + sum(len(v) for v in self._joined.values())

    # -- python-socketio's handlers -----------------------------------------

    async def _sio_root_event(self, event: str, sid: str, *args: object) -> Ack:
        return await self.root_event(sid, event, args, lambda: SocketIOViewer(self.sio, sid, "/"))

    async def _sio_root_disconnect(self, sid: str, *args: object) -> None:
        self.root_closed(sid)

    async def _sio_connect(
        self, namespace: str, sid: str, environ: dict[str, Any], auth: object = None
    ) -> bool:
        if namespace == "/":
            return True
        viewer = SocketIOViewer(self.sio, sid, namespace)
        try:
            self.attach(namespace, auth, viewer)
        except ConnectRefused as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        # The CONNECT packet goes out as this handler returns; the replay follows it.
        asyncio.get_running_loop().call_soon(viewer.release)
        return True

    async def _sio_disconnect(self, namespace: str, sid: str, *args: object) -> None:
        self.detach(namespace, f"sio:{namespace}:{sid}")

    async def _sio_stream_event(self, event: str, namespace: str, sid: str, *args: object) -> Ack:
        return await self.stream_event(namespace, event)


async def _pause(session: StreamingSession) -> Ack:
    try:
        last_seq = session.pause()
    except SessionConflict as exc:
        return _error(str(exc))
    return {"ok": True, "state": session.state.value, "lastSeq": last_seq}


async def _resume(session: StreamingSession) -> Ack:
    try:
        session.resume()
    except SessionConflict as exc:
        return _error(str(exc))
    return {"ok": True, "state": session.state.value}


async def _cancel(session: StreamingSession) -> Ack:
    try:
        await session.cancel()
    except SessionConflict as exc:
        return _error(str(exc))
    return {"ok": True, "state": session.state.value}
