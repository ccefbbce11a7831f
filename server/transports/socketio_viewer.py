"""A python-socketio connection (long-polling, or a WebSocket upgraded from it) as a viewer."""

from __future__ import annotations

import asyncio

import socketio

from server.core.models import encode_json
from server.core.sessions import Payload
from server.transports.engineio_adapter import EngineIOSocket, websocket_transport
from server.transports.wire.socketio import EIO_MESSAGE, event_prefix
from server.transports.wire.websocket import websocket_text_frame

#: Events are written straight to a WebSocket only while less than this is buffered for it.
DIRECT_WRITE_LIMIT = 64 * 1024


class SocketIOViewer:
    """One Socket.IO connection watching one session.

    Events are encoded once. On a WebSocket connection whose Engine.IO writer is idle
    and whose socket buffer is small, the frame is written to the connection at once,
    as Node's Socket.IO does; otherwise it goes on the Engine.IO socket's queue, which
    its writer drains. The queue is the viewer's backlog: a client that stops reading
    fills the socket buffer, then the queue, and shows as lagging. Events sent before
    :meth:`release` (the replay on join) are held until the namespace's CONNECT or the
    join's ack has been queued ahead of them.
    """

    __slots__ = ("_closing", "_held", "_namespace", "_prefix", "_sid", "_sio", "_socket", "_transport", "key")

    def __init__(self, sio: socketio.AsyncServer, sid: str, namespace: str) -> None:
        self.key = f"sio:{namespace}:{sid}"
        self._sio = sio
        self._sid = sid
        self._namespace = namespace
        self._prefix = event_prefix(namespace)
        self._socket = EngineIOSocket(sio, sid, namespace)
        self._transport = websocket_transport(sio.get_environ(sid, namespace))
        self._held: list[str] | None = []
        self._closing: asyncio.Task[None] | None = None

    @property
    def transport_label(self) -> str:
        """The ``transport`` label of ``/metrics``: the connection's current transport."""
        try:
            current = self._sio.transport(self._sid, self._namespace)
        except (KeyError, ValueError):
            return "other"
        return "socketio_websocket" if current == "websocket" else "socketio_polling"

    def send(self, event: str, payload: Payload) -> None:
        data = self._prefix + encode_json([event, payload])
        if self._held is not None:
            self._held.append(data)
            return
        self._deliver(data)

    def _deliver(self, data: str) -> None:
        socket = self._socket
        if socket.closed:
            return
        transport = self._transport
        if (
            transport is not None
            and socket.writer_idle()
            and not transport.is_closing()
            and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
        ):
            transport.write(websocket_text_frame(EIO_MESSAGE + data))
        else:
            socket.enqueue(data)

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
        return held + self._socket.queued()

    def close(self, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._sio.disconnect(self._sid, namespace=self._namespace)
            )
