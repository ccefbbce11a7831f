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
from dataclasses import dataclass
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

    def broadcast_chunk(self, chunk: Payload) -> None:
        """:meth:`broadcast` of a ``chunk`` event (once per chunk: the event is not compared)."""
        viewers = tuple(self.viewers.values())
        TALLY.chunk_sends += len(viewers)
        for viewer in viewers:
            viewer.send("chunk", chunk)

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


def _no_chunk(content: str, metadata: Payload) -> None:
    raise RuntimeError("the session is gone")


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


_monotonic = time.monotonic


class ChunkEmitter(ViewerSet):
    """Viewers, pending text and the flush schedule of one stream.

    ``make_chunk(content, metadata)`` logs a chunk and sends it on (now, or once it is
    written, see :meth:`server.core.sessions.StreamingSession.deliver`), and lets the
    producer read more; ``may_emit()`` says whether a chunk may leave now (not while
    paused, nor while the chunk before is still being written).

    The text waiting to go out is kept in plain attributes rather than an object of its
    own: they change on every token.
    """

    def __init__(
        self,
        label: str,
        limits: FlowLimits,
        pacer: Pacer,
        make_chunk: Callable[[str, Payload], None],
        may_emit: Callable[[], bool],
    ) -> None:
        super().__init__(label, limits, self.schedule)
        self.pacer = pacer
        self.last_flush = 0.0
        self._make_chunk = make_chunk
        self._may_emit = may_emit
        #: The text received and not yet emitted: its parts, their length in characters,
        #: the metadata of the latest part, and when its first part was received
        #: (``time.monotonic()``, for the chunk latency metric).
        self._parts: list[str] = []
        self.pending_chars = 0
        self._metadata: Payload = {}
        self._since = 0.0
        self._flush_handle: asyncio.Handle | None = None
        #: When the text of the chunk being made was first received (``time.monotonic()``).
        self.received_at = 0.0
        #: The event loop, once known: ``asyncio.get_running_loop()`` costs a ``getpid()``
        #: system call in CPython 3.11, and a flush needs the loop's time.
        self._loop: asyncio.AbstractEventLoop | None = None

    def dispose(self) -> None:
        """The session is gone: let go of its callbacks (they refer back to it)."""
        self.cancel_flush()
        self._make_chunk = _no_chunk
        self._may_emit = _never
        super().dispose()

    # -- pending text --------------------------------------------------------

    @property
    def has_pending(self) -> bool:
        return bool(self._parts)

    def push(self, content: str, metadata: Payload, flush_now: bool = False) -> None:
        """Add text to the next chunk, and flush at once (``flush_now``: a producer that
        hands over everything already due, when the interval is up) or when it is due."""
        parts = self._parts
        if not parts:
            self._since = _monotonic()
        parts.append(content)
        self.pending_chars += len(content)
        self._metadata = metadata
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
        if self._flush_handle is None and self._parts:
            loop = self._loop or self._running_loop()
            due = self.last_flush + self.pacer.interval
            if loop.time() >= due:
                self._flush_handle = loop.call_soon(self.flush)
            else:
                self._flush_handle = loop.call_at(due, self.flush)

    def flush(self) -> None:
        """Emit everything pending as one chunk, unless emission is stopped or held.

        While the chunk before is still being written (Redis mode), ``may_emit()`` is false:
        what arrives meanwhile joins the next chunk, sent when that write is done
        (``deliver`` schedules it). One chunk in flight per session makes a busy Redis get
        fewer, larger writes.
        """
        self._flush_handle = None
        parts = self._parts
        if not parts or not self._may_emit():
            return
        max_lag = self.limits.max_lag
        for viewer in self.viewers.values():
            if viewer.backlog() > max_lag:
                self.hold()
                return
        self.received_at = self._since
        # Taken before the chunk is made: delivering it (memory mode: at once) must not find
        # its own text still pending and schedule a second, off-interval flush.
        self._parts = []
        self.pending_chars = 0
        self.last_flush = (self._loop or self._running_loop()).time()
        self._make_chunk(parts[0] if len(parts) == 1 else "".join(parts), self._metadata)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        return loop

    def restamp(self) -> None:
        """Text held while paused counts as received now (the chunk latency metric
        measures the server, not the pause)."""
        if self._parts:
            self._since = _monotonic()

    def cancel_flush(self) -> None:
        """The stream has ended: no further chunk (what is pending is dropped)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
