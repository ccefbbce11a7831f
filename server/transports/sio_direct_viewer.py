"""One namespace of a direct Socket.IO WebSocket connection (:mod:`server.transports.sio_direct`)
as a viewer of one session."""

from __future__ import annotations

from typing import Protocol

from server.core.models import encode_json
from server.core.sessions import Payload
from server.transports.wire import socketio as sio_wire


class Connection(Protocol):
    """What a :class:`DirectViewer` needs of its connection (``SioConnection``)."""

    def send_text(self, text: str) -> None: ...
    def queued(self) -> int: ...
    def drop_namespace(self, namespace: str, *, stalled: bool) -> None: ...


class DirectViewer:
    """One namespace of a direct connection watching one session (see ``Viewer``).

    Like ``SocketIOViewer``, events sent before :meth:`release` (the replay on connect
    or join) wait until the CONNECT packet or the join's ack is written.
    """

    #: The ``transport`` label of ``/metrics``.
    transport_label = "direct"

    __slots__ = ("_connection", "_held", "_namespace", "_prefix", "key")

    def __init__(self, connection: Connection, namespace: str, sid: str) -> None:
        self.key = f"sio:{namespace}:{sid}"
        self._connection = connection
        self._namespace = namespace
        self._prefix = sio_wire.EIO_MESSAGE + sio_wire.event_prefix(namespace)
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
