"""What one client may cost on the direct Socket.IO WebSocket path (issue 12), and its refusals.

:mod:`server.transports.sio_direct` bounds it as python-socketio's path does: the
connections and new Engine.IO sessions of its address (:func:`admit`: 429 before the
upgrade), its messages' rate (an event over it is acked ``{ok: false}`` at once, nothing
spawned), the packets handled per event loop turn (reading pauses meanwhile, so one
flooding socket cannot starve the others) and, across all direct connections, the bytes
held in unfinished fragmented messages. The bounds of one connection are
:class:`ConnectionLimits`, a mixin of its protocol (``SioConnection``).

The time a client has to send its request head is the handshake's
(:mod:`server.transports.sio_direct_handshake`), the time it has to connect a namespace
the heartbeat's (:mod:`server.transports.sio_direct_heartbeat`): ``HANDSHAKE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections import deque
from typing import Protocol

from server.core.models import encode_json
from server.guards.ratelimit import Limits, TokenBucket
from server.transports.socket_api import TOO_MANY_MESSAGES
from server.transports.wire import socketio as sio_wire
from server.transports.wire import websocket as ws_wire
from server.transports.wire.socketio import Ack, error_ack

#: The direct path's logger: its records keep the name they have always had.
log = logging.getLogger("server.transports.sio_direct")

#: ``Retry-After`` of a connection refused at ``MAX_CONNECTIONS_PER_ADDRESS``, in seconds.
CONNECTION_RETRY_AFTER = 1
#: The longest ``Retry-After`` announced (a rate of 0 would make it infinite).
MAX_RETRY_AFTER = 3600.0
#: Socket.IO packets counted against ``SOCKET_MESSAGE_RATE`` (as python-socketio's path
#: counts events and namespace CONNECTs).
COUNTED = frozenset((sio_wire.SIO_CONNECT, sio_wire.SIO_EVENT, sio_wire.SIO_BINARY_EVENT))

#: What a connection's reader returns: a whole message or control frame, or a violation.
Item = ws_wire.Frame | ws_wire.Violation


def too_many_connections(limit: int, retry_after: int) -> str:
    """The refusal at ``MAX_CONNECTIONS_PER_ADDRESS``, in the words of the other paths."""
    return (
        f"Too many open connections from this address (MAX_CONNECTIONS_PER_ADDRESS {limit}): "
        f"retry in {retry_after} s"
    )


class Refused(Exception):
    """A direct WebSocket request refused by a limit; ``response`` is the HTTP answer."""

    def __init__(self, response: bytes) -> None:
        super().__init__("refused")
        self.response = response


def too_many_requests(message: str, retry_after: int) -> bytes:
    """429 ``{"error": message}`` with ``Retry-After``, as the HTTP routes answer it."""
    return ws_wire.refusal(
        429, "Too Many Requests", encode_json({"error": message}).encode(), {"Retry-After": str(retry_after)}
    )


def admit(
    limits: Limits | None, transport: asyncio.BaseTransport, handshake: ws_wire.Handshake
) -> str | None:
    """Count a new direct connection against its client address: its handshake rate
    and its open connections. Returns the address to release when it ends (``None``:
    no limits); raises :class:`Refused` with the 429 to answer."""
    if limits is None:
        return None
    peer = transport.get_extra_info("peername")
    host = peer[0] if isinstance(peer, tuple) and peer else None
    # Interned: the connections of one address share one string (2 KiB per idle connection).
    address = sys.intern(limits.proxies.client_address(host, handshake.headers.get("x-forwarded-for")))
    wait = limits.handshakes_per_address.take(address)
    if wait:
        seconds = max(1, math.ceil(min(wait, MAX_RETRY_AFTER)))
        raise Refused(
            too_many_requests(
                "Too many new Socket.IO connections from this address (HANDSHAKE_RATE_PER_ADDRESS): "
                f"retry in {seconds} s",
                seconds,
            )
        )
    if not limits.connections.acquire(address):
        raise Refused(
            too_many_requests(
                too_many_connections(limits.connections.limit, CONNECTION_RETRY_AFTER),
                CONNECTION_RETRY_AFTER,
            )
        )
    return address


class _HubLimits(Protocol):
    """What :class:`ConnectionLimits` reads and counts in its hub (``DirectHub``)."""

    limits: Limits | None
    max_packets_per_turn: int
    max_partial_total: int
    partial_bytes: int


class _Limited(Protocol):
    """What :class:`ConnectionLimits` works with in the connection (``SioConnection``)."""

    sid: str
    _address: str | None
    _backlog: deque[Item] | None
    _closing: bool
    _messages: TokenBucket | None
    _namespaces: dict[str, str]
    _partial: int

    @property
    def _hub(self) -> _HubLimits: ...

    @property
    def _transport(self) -> asyncio.Transport: ...

    def _on_item(self, item: Item) -> None: ...
    def _resume_reading(self) -> None: ...
    def _send_close(self, code: int) -> None: ...
    def _send_ack(self, namespace: str, ack_id: int, ack: Ack) -> None: ...
    def _send_connect_error(self, namespace: str, message: str) -> None: ...
    def _on_items(self, items: deque[Item]) -> None: ...
    def _on_backlog(self) -> None: ...
    def _release_partial(self) -> None: ...


class ConnectionLimits:
    """The bounds of one direct connection: what it holds of the unfinished-message
    budget, its message rate, the packets handled per loop turn and its address's count.

    A mixin of ``SioConnection``, which holds the state (its ``__slots__``).
    """

    __slots__ = ()

    # The state set here: slots of ``SioConnection``, described in its ``__init__``.
    _address: str | None
    _backlog: deque[Item] | None
    _messages: TokenBucket | None
    _partial: int

    def _hold_partial(self: _Limited, size: int) -> bool:
        """Count ``size`` bytes of unfinished messages in the hub's total; ``False`` (and
        closed with 1009) when that would pass ``max_partial_total``."""
        hub = self._hub
        grown = size > self._partial
        hub.partial_bytes += size - self._partial
        self._partial = size
        if grown and hub.partial_bytes > hub.max_partial_total:
            log.info("direct socket %s: unfinished messages over MAX_PARTIAL_MESSAGE_BYTES_TOTAL", self.sid)
            self._release_partial()
            self._send_close(ws_wire.CLOSE_TOO_BIG)
            return False
        return True

    def _release_partial(self: _Limited) -> None:
        self._hub.partial_bytes -= self._partial
        self._partial = 0

    def _release_address(self: _Limited) -> None:
        """The connection ended: it no longer counts against its address's connections."""
        address, self._address = self._address, None
        limits = self._hub.limits
        if address is not None and limits is not None:
            limits.connections.release(address)

    def _on_items(self: _Limited, items: deque[Item]) -> None:
        """Handle at most ``max_packets_per_turn`` of ``items``; the rest wait for the next
        loop turn, and reading waits for them (other connections get their turn first)."""
        for _ in range(self._hub.max_packets_per_turn):
            if not items:
                break
            self._on_item(items.popleft())
            if self._closing:
                return
        if items:
            if self._backlog is None:
                self._backlog = items
                self._transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._on_backlog)

    def _on_backlog(self: _Limited) -> None:
        backlog = self._backlog
        if backlog is None or self._closing:
            return
        self._on_items(backlog)
        if not backlog and self._backlog is backlog:
            self._backlog = None
            self._resume_reading()

    def _within_rate(self: _Limited) -> bool:
        """One more message (``SOCKET_MESSAGE_RATE``): whether it is within the rate."""
        limits = self._hub.limits
        if limits is None:
            return True
        if self._messages is None:
            self._messages = limits.message_bucket()
        return limits.message_allowed(self._messages)

    def _on_over_rate(self: _Limited, kind: str, namespace: str, ack_id: int | None) -> None:
        """A message over the rate does nothing but get its refusal, at once: an ack (when
        it asked for one) or CONNECT_ERROR, as on python-socketio's path."""
        if kind == sio_wire.SIO_CONNECT:
            if namespace not in self._namespaces:
                self._send_connect_error(namespace, TOO_MANY_MESSAGES)
        elif ack_id is not None and namespace in self._namespaces:
            self._send_ack(namespace, ack_id, error_ack(TOO_MANY_MESSAGES))
