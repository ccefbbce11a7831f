"""The python-socketio / python-engineio internals we rely on, in one place.

``SocketIOViewer`` writes an event straight to the connection when Engine.IO's writer is
idle, and otherwise puts it on the Engine.IO socket's queue itself (``sio.emit`` would
spawn and await a task per packet). That needs four things python-engineio does not
publish as API:

- ``sio.eio.sockets[eio_sid]`` is the ``AsyncSocket``, found through
  ``sio.manager.eio_sid_from_sid(sid, namespace)``;
- ``AsyncSocket.queue`` is an ``asyncio.Queue`` of ``engineio.packet.Packet`` that its
  writer drains, and ``AsyncSocket.closed`` says whether it is gone;
- the writer task, while idle, is parked in ``queue.get()``: ``queue._getters`` is then
  non-empty (nothing of Engine.IO's is in flight);
- ``environ["aiohttp.request"]`` is the aiohttp request that opened the socket.

Checked against python-engineio 4.9 to 4.15.1 and python-socketio 5.11 to 5.18.1
(``pyproject.toml`` pins their majors). ``tests/test_engineio_adapter.py`` fails loudly
when a release changes any of it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engineio.packet import MESSAGE as ENGINEIO_MESSAGE
from engineio.packet import Packet as EngineIOPacket


def websocket_transport(environ: dict[str, Any] | None) -> asyncio.WriteTransport | None:
    """The connection under an Engine.IO session opened as a WebSocket (not upgraded from
    long-polling, whose first request is another connection)."""
    request = environ.get("aiohttp.request") if environ else None
    if request is None or request.headers.get("Upgrade", "").lower() != "websocket":
        return None
    transport: asyncio.WriteTransport | None = request.transport
    return transport


class EngineIOSocket:
    """One Engine.IO socket's send queue, seen from outside python-engineio."""

    __slots__ = ("_socket",)

    def __init__(self, sio: Any, sid: str, namespace: str) -> None:
        eio_sid = sio.manager.eio_sid_from_sid(sid, namespace)
        self._socket: Any = sio.eio.sockets.get(eio_sid) if eio_sid is not None else None

    @property
    def closed(self) -> bool:
        return self._socket is None or bool(self._socket.closed)

    def writer_idle(self) -> bool:
        """Nothing queued and the writer parked in ``queue.get()``."""
        queue: asyncio.Queue[Any] = self._socket.queue
        return queue.empty() and bool(queue._getters)  # type: ignore[attr-defined]

    def queued(self) -> int:
        return 0 if self._socket is None else int(self._socket.queue.qsize())

    def enqueue(self, data: str) -> None:
        """Queue one Engine.IO MESSAGE packet (``data`` is the Socket.IO packet text)."""
        self._socket.queue.put_nowait(EngineIOPacket(ENGINEIO_MESSAGE, data))
