"""One namespace of a direct Socket.IO WebSocket connection (:mod:`server.transports.sio_direct`)
as a viewer of one session."""

from __future__ import annotations

from typing import Protocol

import orjson

from server.core.sessions import Payload
from server.transports.wire import socketio as sio_wire
from server.transports.wire.websocket import text_frame_header


class Connection(Protocol):
    """What a :class:`DirectViewer` needs of its connection (``SioConnection``)."""

    def send_frame(self, frame: bytes) -> None: ...
    def queued(self) -> int: ...
    def drop_namespace(self, namespace: str, *, stalled: bool) -> None: ...


class DirectViewer:
    """One namespace of a direct connection watching one session (see ``Viewer``).

    Like ``SocketIOViewer``, events sent before :meth:`release` (the replay on connect
    or join) wait until the CONNECT packet or the join's ack is written.

    An event is built as bytes, frame included, in one go (:func:`event_frame`): the
    viewers of one session share a namespace, so a chunk sent to several of them is
    encoded once.
    """

    #: The ``transport`` label of ``/metrics``.
    transport_label = "direct"

    __slots__ = ("_connection", "_held", "_namespace", "_prefix", "key")

    def __init__(self, connection: Connection, namespace: str, sid: str) -> None:
        self.key = f"sio:{namespace}:{sid}"
        self._connection = connection
        self._namespace = namespace
        self._prefix = (sio_wire.EIO_MESSAGE + sio_wire.event_prefix(namespace)).encode()
        self._held: list[bytes] | None = []

    def send(self, event: str, payload: Payload) -> None:
        frame = event_frame(self._prefix, event, payload)
        if self._held is not None:
            self._held.append(frame)
        else:
            self._connection.send_frame(frame)

    def release(self) -> None:
        held, self._held = self._held, None
        for frame in held or ():
            self._connection.send_frame(frame)

    def backlog(self) -> int:
        # Once per chunk (the session's lag check): the held list is gone once released.
        held = self._held
        if held is None:
            return self._connection.queued()
        return len(held) + self._connection.queued()

    def close(self, reason: str) -> None:
        self._connection.drop_namespace(self._namespace, stalled=reason == "stalled")


def event_frame(prefix: bytes, event: str, payload: Payload) -> bytes:
    """The WebSocket text frame of a Socket.IO event: ``prefix`` (Engine.IO message,
    EVENT, namespace) and ``[event, payload]`` in JSON."""
    if event == "chunk":
        return _last_chunk.frame(prefix, payload)
    body = orjson.dumps([event, payload])
    return text_frame_header(len(prefix) + len(body)) + prefix + body


class _LastChunk:
    """The frame of the last chunk sent: the other viewers of its session (same
    namespace, same payload object, in the same broadcast) get it as it is. Only
    ``chunk`` payloads are looked up so: each is a new object, never changed once sent."""

    __slots__ = ("_frame", "_payload", "_prefix")

    def __init__(self) -> None:
        self._payload: Payload | None = None
        self._prefix = b""
        self._frame = b""

    def frame(self, prefix: bytes, payload: Payload) -> bytes:
        if payload is self._payload and prefix == self._prefix:
            return self._frame
        body = orjson.dumps(["chunk", payload])
        frame = self._frame = text_frame_header(len(prefix) + len(body)) + prefix + body
        self._payload = payload
        self._prefix = prefix
        return frame


_last_chunk = _LastChunk()
