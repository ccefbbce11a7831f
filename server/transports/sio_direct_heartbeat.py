"""The heartbeat of the direct Socket.IO WebSocket connections (:mod:`server.transports.sio_direct`).

One task pings every connection (:class:`Heartbeat`, the hub's part): it wakes every
tick, and each connection is pinged on one tick of each ``pingInterval``, its phase,
given in turn as connections open, so that connections opened together are pinged on
different ticks. A client is alive while it answers Engine.IO pings: nothing else it
sends counts. One that leaves a ping unanswered for ``pingTimeout`` is dropped
(python-engineio's rule), one that connected no namespace within ``HANDSHAKE_TIMEOUT``
closed (:class:`Pinged`, the connection's part).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Set
from typing import Protocol

from server.transports.wire import socketio as sio_wire

#: The direct path's logger: its records keep the name they have always had.
log = logging.getLogger("server.transports.sio_direct")

#: How often the heartbeat task looks at the connections, at most, in seconds.
HEARTBEAT_TICK = 1.0


class Beating(Protocol):
    """A connection as the heartbeat task sees it."""

    sid: str

    def heartbeat(self, now: float) -> None: ...
    def abort(self) -> None: ...


class Heartbeat:
    """The heartbeat of a hub's connections: its tick, their phases and the task.

    A base of ``DirectHub``, which holds the connections.
    """

    connections: Set[Beating]

    def __init__(self, ping_interval: float, ping_timeout: float) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        #: The heartbeat's period: connections are pinged on one tick of each interval.
        self.tick = min(HEARTBEAT_TICK, ping_interval / 4, ping_timeout / 4)
        #: Ticks per ping interval: each new connection gets the next one as its phase,
        #: so that connections opened together are pinged on different ticks.
        self._phases = max(1, int(ping_interval / self.tick))
        self._next_phase = 0

    def first_ping(self, now: float) -> float:
        """When a connection opened at ``now`` gets its first ping: within one interval,
        on the phase after the previous connection's."""
        phase = self._next_phase
        self._next_phase = (phase + 1) % self._phases
        return now + self.ping_interval * (phase + 1) / self._phases

    async def run_heartbeat(self) -> None:
        """:meth:`heartbeat` every tick, for the app's lifetime."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            self.heartbeat(loop.time())

    def heartbeat(self, now: float) -> None:
        """Ping the connections whose turn it is; drop those that left a ping unanswered
        for ``ping_timeout`` (python-engineio's rule) and close those that connected no
        namespace within ``handshake_timeout``."""
        for connection in tuple(self.connections):
            try:
                connection.heartbeat(now)
            except Exception:
                log.exception("direct socket %s: heartbeat failed", connection.sid)
                connection.abort()


class _Pinged(Protocol):
    """What :class:`Pinged` works with in the connection (``SioConnection``)."""

    sid: str
    _connect_by: float
    _deadline: float
    _next_ping: float

    @property
    def _hub(self) -> Heartbeat: ...

    def send_text(self, text: str) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Pinged:
    """The heartbeat of one connection: a mixin of ``SioConnection``, which holds the
    state (its ``__slots__``); an Engine.IO pong sets ``_deadline`` back to ``inf``."""

    __slots__ = ()

    # The state set here: slots of ``SioConnection``, described in its ``__init__``.
    _deadline: float
    _next_ping: float

    def heartbeat(self: _Pinged, now: float) -> None:
        hub = self._hub
        if now >= self._deadline:
            log.debug("direct socket %s: no pong, closing", self.sid)
            self.abort()
        elif now >= self._connect_by:
            log.info("direct socket %s: no namespace connected within HANDSHAKE_TIMEOUT, closing", self.sid)
            self.close()
        elif now >= self._next_ping:
            # Keep the connection's phase: its pings stay one interval apart and on
            # their own tick, unless the loop fell a whole interval behind.
            next_ping = self._next_ping + hub.ping_interval
            self._next_ping = next_ping if next_ping > now else now + hub.ping_interval
            if self._deadline == math.inf:
                self._deadline = now + hub.ping_timeout
            self.send_text(sio_wire.EIO_PING)
