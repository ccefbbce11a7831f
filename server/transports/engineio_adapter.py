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

The limits on Engine.IO sessions (``SocketAPI``) need three more:

- python-socketio handles Engine.IO's ``connect`` and ``disconnect`` events itself
  (``sio.eio.handlers``); :func:`on_engineio_sessions` wraps those handlers. Engine.IO
  calls ``disconnect`` exactly once for a session its ``connect`` accepted, from
  ``AsyncSocket.close``, which every way a session ends goes through;
- ``AsyncSocket.close(wait=False)`` ends a session without waiting for its client to read
  the CLOSE packet (``eio.disconnect`` waits for that, forever for a client that never
  polls again), and a ``None`` on its queue ends its writer (poll or WebSocket);
- ``sio.manager.get_namespaces()`` and ``sid_from_eio_sid(eio_sid, namespace)`` say
  which namespaces an Engine.IO session has connected.

Checked against python-engineio 4.9 to 4.15.1 and python-socketio 5.11 to 5.18.1
(``pyproject.toml`` pins their majors). ``tests/test_engineio_adapter.py`` fails loudly
when a release changes any of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
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


def aiohttp_request(environ: dict[str, Any]) -> web.Request | None:
    """The aiohttp request that opened an Engine.IO session."""
    request = environ.get("aiohttp.request")
    return request if isinstance(request, web.Request) else None


def engineio_sid(sio: Any, sid: str, namespace: str) -> str | None:
    """The Engine.IO session under Socket.IO connection ``sid`` of ``namespace``."""
    eio_sid: str | None = sio.manager.eio_sid_from_sid(sid, namespace)
    return eio_sid


def on_engineio_sessions(
    sio: Any, opened: Callable[[str, dict[str, Any]], None], closed: Callable[[str], None]
) -> None:
    """Call ``opened(eio_sid, environ)`` when python-engineio accepts a new session and
    ``closed(eio_sid)`` once when that session ends, around python-socketio's own handlers."""
    connect = sio.eio.handlers["connect"]
    disconnect = sio.eio.handlers["disconnect"]

    async def on_connect(eio_sid: str, environ: dict[str, Any]) -> object:
        accepted = await connect(eio_sid, environ)
        if accepted is None or accepted is True:
            opened(eio_sid, environ)
        return accepted

    async def on_disconnect(eio_sid: str, *reason: object) -> None:
        try:
            await disconnect(eio_sid, *reason)
        finally:
            closed(eio_sid)

    sio.eio.on("connect", on_connect)
    sio.eio.on("disconnect", on_disconnect)


def has_namespace(sio: Any, eio_sid: str) -> bool:
    """Whether Engine.IO session ``eio_sid`` has connected (or is connecting) a namespace."""
    return any(
        sio.manager.sid_from_eio_sid(eio_sid, namespace) is not None
        for namespace in list(sio.manager.get_namespaces())
    )


async def close_engineio_session(sio: Any, eio_sid: str) -> None:
    """End Engine.IO session ``eio_sid`` now: a CLOSE packet for its client if it is
    still listening, its writer stopped, and the session forgotten."""
    socket = sio.eio.sockets.get(eio_sid)
    if socket is None:
        return
    await socket.close(wait=False)
    socket.queue.put_nowait(None)
    sio.eio.sockets.pop(eio_sid, None)
