"""Chunk emission: a session's viewers, the text waiting to go out, and flow control.

A :class:`ChunkEmitter` sits between whatever produces text (a provider pump, or a
relay that reads a shared log) and the viewers. It joins the text that arrives between
two flushes into one chunk, sends at most one chunk per ``pacer.interval``, and holds
emission back while a viewer lags (dropping one that stays behind too long), so a slow
viewer costs a bounded backlog and never unbounded memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.guards.metrics import TALLY

log = logging.getLogger(__name__)

#: How often an emitter held back by a lagging viewer checks whether it caught up.
BACKPRESSURE_POLL_SECONDS = 0.01

Payload = dict[str, Any]


class Viewer(Protocol):
    """Where a session's events go: one socket, one WebSocket, or another process."""

    key: str

    def send(self, event: str, payload: Payload) -> None:
        """Queue one event; must not block and must keep order."""

    def backlog(self) -> int:
        """How many events are queued for this viewer and not yet written."""

    def close(self, reason: str) -> None:
        """Drop the connection (the viewer may reconnect with ``lastSeq``)."""


class SessionFull(Exception):
    """The session already has its maximum number of viewers."""


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """The bounds a session applies; all come from the server settings."""

    max_lag: int = 64
    stall_timeout: float = 10.0
    max_pending_chars: int = 64 * 1024
    max_viewers: int = 32
    first_token_timeout: float = 30.0
    token_idle_timeout: float = 30.0


@dataclass(slots=True)
class Pacer:
    """The shortest time between two chunks of one session, shared by all sessions.

    ``base`` while the event loop keeps time; stretched up to ``ceiling`` while it runs
    late, so that a busy server sends fewer, larger chunks instead of falling behind.
    """

    base: float = 0.005
    ceiling: float = 0.05
    interval: float = 0.005

    def observe(self, lag: float) -> None:
        """Feed the event loop's current lateness, in seconds."""
        self.interval = min(self.ceiling, max(self.base, 2 * lag))


@dataclass(slots=True)
class _Pending:
    """Text received but not yet emitted as a chunk."""

    parts: list[str] = field(default_factory=list)
    chars: int = 0
    metadata: Payload = field(default_factory=dict)
    #: When its first part was received (``time.monotonic()``), for the chunk latency metric.
    since: float = 0.0


class ViewerSet:
    """The viewers of one stream and their flow control.

    While a viewer's backlog is above ``max_lag`` the stream holds its output (the caller
    asks :meth:`lagging` and calls :meth:`hold`); a viewer that stays behind for
    ``stall_timeout`` is dropped; ``on_caught_up`` is called once none lags any more.
    A session's :class:`ChunkEmitter` is one; a relay that feeds viewers from a shared
    log uses one directly.
    """

    def __init__(self, label: str, limits: FlowLimits, on_caught_up: Callable[[], None]) -> None:
        self.label = label
        self.limits = limits
        self.viewers: dict[str, Viewer] = {}
        self._on_caught_up = on_caught_up
        self._watch_task: asyncio.Task[None] | None = None

    def dispose(self) -> None:
        """The session is gone: let go of its callback (it refers back to it)."""
        self._on_caught_up = _nothing
        self.viewers.clear()

    def check_room(self, key: str | None) -> None:
        """Raise :class:`SessionFull` unless ``key`` is already a viewer or one more fits."""
        if (key is None or key not in self.viewers) and len(self.viewers) >= self.limits.max_viewers:
            raise SessionFull(f"Session has its maximum of {self.limits.max_viewers} viewers")

    def add(self, viewer: Viewer) -> None:
        self.viewers[viewer.key] = viewer

    def remove(self, key: str) -> None:
        self.viewers.pop(key, None)
        if not self.lagging():
            self._on_caught_up()

    def broadcast(self, event: str, payload: Payload) -> None:
        viewers = tuple(self.viewers.values())
        if event == "chunk":
            TALLY.chunk_sends += len(viewers)
        for viewer in viewers:
            viewer.send(event, payload)

    def lagging(self) -> bool:
        max_lag = self.limits.max_lag
        for viewer in self.viewers.values():  # noqa: SIM110 (a loop, not any(genexpr): once per chunk)
            if viewer.backlog() > max_lag:
                return True
        return False

    def hold(self) -> None:
        """Output is held for a lagging viewer: watch until it catches up or is dropped."""
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_lag())

    def stop_watch(self) -> None:
        """Stop waiting for lagging viewers (the stream was stopped)."""
        if self._watch_task is not None:
            self._watch_task.cancel()

    async def _watch_lag(self) -> None:
        """Hold output while a viewer lags; drop one that stays behind too long."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        behind_since: dict[str, float] = {}
        try:
            while True:
                await asyncio.sleep(BACKPRESSURE_POLL_SECONDS)
                now = loop.time()
                lagging = [v for v in self.viewers.values() if v.backlog() > limits.max_lag]
                if not lagging:
                    break
                keys = {v.key for v in lagging}
                behind_since = {k: t for k, t in behind_since.items() if k in keys}
                for viewer in lagging:
                    since = behind_since.setdefault(viewer.key, now)
                    if now - since >= limits.stall_timeout:
                        log.info(
                            "session %s: dropping stalled viewer", self.label, extra={"session": self.label}
                        )
                        self.viewers.pop(viewer.key, None)
                        viewer.close("stalled")
        finally:
            self._watch_task = None
        self._on_caught_up()


def _no_chunk(content: str, metadata: Payload) -> Payload:
    raise RuntimeError("the session is gone")


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


def _none_in_flight() -> int:
    return 0


class ChunkEmitter(ViewerSet):
    """Viewers, pending text and the flush schedule of one stream.

    ``make_chunk(content, metadata)`` logs a chunk and sends it on (now, or once it is
    written, see :meth:`server.core.sessions.StreamingSession.deliver`); ``may_emit()``
    says whether chunks may leave now (not while paused); ``on_emitted()`` is called
    after each chunk, so the producer can read more.
    """

    def __init__(
        self,
        label: str,
        limits: FlowLimits,
        pacer: Pacer,
        make_chunk: Callable[[str, Payload], Payload],
        may_emit: Callable[[], bool],
        on_emitted: Callable[[], None],
        in_flight: Callable[[], int] = lambda: 0,
    ) -> None:
        super().__init__(label, limits, self.schedule)
        self.pacer = pacer
        self.last_flush = 0.0
        self._make_chunk = make_chunk
        self._may_emit = may_emit
        self._on_emitted = on_emitted
        self._in_flight = in_flight
        self._pending = _Pending()
        self._flush_handle: asyncio.Handle | None = None
        #: When the text of the chunk being made was first received (``time.monotonic()``).
        self.received_at = 0.0

    def dispose(self) -> None:
        """The session is gone: let go of its callbacks (they refer back to it)."""
        self.cancel_flush()
        self._make_chunk = _no_chunk
        self._may_emit = _never
        self._on_emitted = _nothing
        self._in_flight = _none_in_flight
        super().dispose()

    # -- pending text --------------------------------------------------------

    @property
    def pending_chars(self) -> int:
        return self._pending.chars

    @property
    def has_pending(self) -> bool:
        return bool(self._pending.parts)

    def push(self, content: str, metadata: Payload, *, flush_now: bool = False) -> None:
        """Add text to the next chunk, and flush at once (``flush_now``: a producer that
        hands over everything already due, when the interval is up) or when it is due."""
        pending = self._pending
        if not pending.parts:
            pending.since = time.monotonic()
        pending.parts.append(content)
        pending.chars += len(content)
        pending.metadata = metadata
        if flush_now:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self.flush()
        elif self._flush_handle is None:
            self.schedule()

    def schedule(self) -> None:
        """Flush now if the last chunk left a while ago, else when the interval is up.

        An idle stream sends each piece at once; a fast one (or any, on a busy server)
        sends at most one chunk per ``pacer.interval``, with everything received meanwhile.
        """
        if self._flush_handle is None and self._pending.parts:
            loop = asyncio.get_running_loop()
            due = self.last_flush + self.pacer.interval
            if loop.time() >= due:
                self._flush_handle = loop.call_soon(self.flush)
            else:
                self._flush_handle = loop.call_at(due, self.flush)

    def flush(self) -> None:
        """Emit everything pending as one chunk, unless emission is stopped or held."""
        self._flush_handle = None
        pending = self._pending
        if not pending.parts or not self._may_emit():
            return
        in_flight = self._in_flight()
        if in_flight:
            # The chunk before is still being written (Redis mode): what arrives meanwhile
            # joins the next one, sent when that write is done (``deliver`` schedules it).
            # One chunk in flight per session makes a busy Redis get fewer, larger writes.
            return
        if self.lagging():
            self.hold()
            return
        content = pending.parts[0] if len(pending.parts) == 1 else "".join(pending.parts)
        self.received_at = pending.since
        # Taken before the chunk is made: delivering it (memory mode: at once) must not find
        # its own text still pending and schedule a second, off-interval flush.
        self._pending = _Pending()
        self.last_flush = asyncio.get_running_loop().time()
        self._make_chunk(content, pending.metadata)
        self._on_emitted()

    def restamp(self) -> None:
        """Text held while paused counts as received now (the chunk latency metric
        measures the server, not the pause)."""
        if self._pending.parts:
            self._pending.since = time.monotonic()

    def cancel_flush(self) -> None:
        """The stream has ended: no further chunk (what is pending is dropped)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
