"""The first protocol of every connection when the direct Socket.IO path is on.

:class:`Handshake` reads the request head, within ``HANDSHAKE_TIMEOUT`` (``KEEPALIVE_TIMEOUT``
if shorter) and :data:`MAX_HANDSHAKE_BYTES`. A direct Engine.IO v4 WebSocket request
(:func:`direct_handshake`) is admitted by the limits of its address
(:func:`server.transports.sio_direct_limits.admit`: else a 429) and served by
:mod:`server.transports.sio_direct`; every other request is handed to aiohttp untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

from server.guards.ratelimit import Limits
from server.transports.sio_direct_limits import Refused, admit
from server.transports.wire import websocket as ws_wire

#: A request head longer than this is not ours: aiohttp gets it (and answers it).
MAX_HANDSHAKE_BYTES = 16 * 1024
SOCKETIO_PATHS = ("/socket.io/", "/socket.io")


def direct_handshake(head: bytes, origins: ws_wire.OriginCheck | None) -> ws_wire.Handshake | None:
    """The opening handshake of a direct Engine.IO v4 WebSocket request, else ``None``.

    ``head`` is the request line and headers. Anything unusual (another path, a ``sid``
    from long-polling, a missing or odd handshake header, an origin not allowed) gets
    ``None``: aiohttp and python-engineio then serve or refuse it as they always do.
    """
    if not head.startswith(b"GET /socket.io"):
        return None  # an HTTP request (most connections): not worth parsing
    handshake = ws_wire.parse_handshake(head)
    if handshake is None or handshake.path not in SOCKETIO_PATHS:
        return None
    query = handshake.query
    if query.get("EIO") != ["4"] or query.get("transport") != ["websocket"] or "sid" in query:
        return None
    if not ws_wire.origin_allowed(handshake, origins):
        return None
    return handshake


def websocket_accept(head: bytes, origins: ws_wire.OriginCheck | None) -> str | None:
    """``Sec-WebSocket-Accept`` for a direct Engine.IO v4 WebSocket request, else ``None``."""
    handshake = direct_handshake(head, origins)
    return None if handshake is None else ws_wire.accept_key(handshake.headers["sec-websocket-key"])


class Hub(Protocol):
    """What a :class:`Handshake` needs of its hub (``DirectHub``)."""

    limits: Limits | None
    handshake_timeout: float
    idle_timeout: float
    origins: ws_wire.OriginCheck | None
    #: Connections whose request head has not arrived yet.
    handshakes: set[Handshake]

    def open_connection(
        self, transport: asyncio.Transport, handshake: ws_wire.Handshake, address: str | None, rest: bytes
    ) -> None: ...


class Handshake(asyncio.Protocol):
    """The first protocol of every connection: reads the request head, then either
    serves a direct Socket.IO WebSocket or hands the connection to aiohttp."""

    __slots__ = ("_buffer", "_http", "_hub", "_timer", "_transport")

    def __init__(self, hub: Hub, http: Callable[[], asyncio.BaseProtocol]) -> None:
        self._hub = hub
        self._http = http
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)
        # aiohttp's own idle timeout starts only once it has the connection: until then a
        # request head has HANDSHAKE_TIMEOUT to arrive (KEEPALIVE_TIMEOUT if shorter).
        hub = self._hub
        self._timer = asyncio.get_running_loop().call_later(
            min(hub.handshake_timeout, hub.idle_timeout), self.close
        )
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
        hub = self._hub
        handshake = direct_handshake(self._buffer[:end], hub.origins)
        if handshake is None:
            self._hand_over(transport)
            return
        rest = self._buffer[end + 4 :]
        self._buffer = b""
        self._done()
        try:
            address = admit(hub.limits, transport, handshake)
        except Refused as refused:
            transport.write(refused.response)
            transport.close()
            return
        hub.open_connection(transport, handshake, address, rest)

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
