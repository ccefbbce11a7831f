"""The streaming session and its state machine (the seed's ``StreamingSession``).

A session pulls its provider's async iterator in one task, logs every chunk with a
contiguous ``seq`` and hands events to its viewers. It knows nothing of aiohttp or
Socket.IO: a viewer is anything with ``send``/``backlog``/``close``.

Flow control, in one place:
- paused: the provider is not pulled and no chunk is emitted;
- a viewer whose backlog exceeds ``max_lag`` holds emission back; the tokens that
  arrive meanwhile are coalesced into one chunk; one that stays behind for
  ``stall_timeout`` is dropped (it can come back with ``lastSeq``);
- the provider is not pulled while more than ``max_pending_chars`` wait to be emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from providers.base import AIChunk, AIProvider, ProviderError, StreamConfig, Usage

log = logging.getLogger(__name__)

#: How often a session blocked by a lagging viewer checks whether it caught up.
BACKPRESSURE_POLL_SECONDS = 0.01


class SessionState(StrEnum):
    CREATED = "created"
    STREAMING = "streaming"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({SessionState.COMPLETED, SessionState.FAILED, SessionState.CANCELLED})

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


class SessionConflict(Exception):
    """The action does not fit the session's state (HTTP 409, ack ``ok: false``)."""


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
    """Provider tokens received but not yet emitted as a chunk."""

    parts: list[str] = field(default_factory=list)
    chars: int = 0
    metadata: Payload = field(default_factory=dict)


def short_id(session_id: str) -> str:
    """The id as it may appear in logs: a prefix, never the whole capability."""
    return session_id[:8]


class StreamingSession:
    """One prompt's stream: state, chunk log, viewers and the task that feeds them."""

    def __init__(
        self,
        session_id: str,
        user_id: str,
        config: StreamConfig,
        provider: AIProvider,
        limits: FlowLimits,
        pacer: Pacer | None = None,
    ) -> None:
        self.id = session_id
        self.user_id = user_id
        self.config = config
        self.provider = provider
        self.limits = limits
        self.pacer = pacer or Pacer()
        self.state = SessionState.CREATED
        self.created_at = time.time()
        self.chunks: list[Payload] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: Payload | None = None
        self.viewers: dict[str, Viewer] = {}
        self.touched = time.monotonic()
        self.finished_at: float | None = None
        self._pending = _Pending()
        self._pull_gate = asyncio.Event()
        self._flush_handle: asyncio.Handle | None = None
        self._last_flush = 0.0
        self._watch_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._pulling = False
        self._timed_out = False
        self._terminal_event: tuple[str, Payload] | None = None
        #: Called once when the session reaches a terminal state (the registry's quota count).
        self.on_finish: Callable[[StreamingSession], None] | None = None

    # -- queries -------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return len(self.chunks) - 1

    @property
    def text(self) -> str:
        return "".join(chunk["content"] for chunk in self.chunks)

    @property
    def is_live(self) -> bool:
        return self.state not in TERMINAL_STATES

    def snapshot(self) -> Payload:
        """The ``GET /api/streaming/{id}`` body."""
        return {
            "sessionId": self.id,
            "userId": self.user_id,
            "state": self.state.value,
            "chunks": len(self.chunks),
            "text": self.text,
            "provider": self.config.provider,
            "model": self.config.model,
            "createdAt": int(self.created_at * 1000),
            "usage": self.usage.to_wire() if self.usage else None,
            "finishReason": self.finish_reason,
            "error": self.error,
        }

    # -- viewers -------------------------------------------------------------

    def add_viewer(self, viewer: Viewer, last_seq: int | None = None) -> Payload:
        """Replay what the viewer missed (``seq > last_seq``), then keep it live.

        Replay and registration happen with no await in between, so no chunk can
        fall between them or arrive twice.
        """
        if viewer.key not in self.viewers and len(self.viewers) >= self.limits.max_viewers:
            raise SessionFull(f"Session has its maximum of {self.limits.max_viewers} viewers")
        self.touched = time.monotonic()
        start = 0 if last_seq is None else last_seq + 1
        for chunk in self.chunks[start:]:
            viewer.send("chunk", chunk)
        if self._terminal_event is not None:
            viewer.send(*self._terminal_event)
        self.viewers[viewer.key] = viewer
        return {"state": self.state.value, "lastSeq": self.last_seq}

    def remove_viewer(self, key: str) -> None:
        self.viewers.pop(key, None)
        if not self._lagging():
            self._schedule_flush()

    def _broadcast(self, event: str, payload: Payload) -> None:
        for viewer in tuple(self.viewers.values()):
            viewer.send(event, payload)

    def _state_payload(self) -> Payload:
        return {"sessionId": self.id, "state": self.state.value, "lastSeq": self.last_seq}

    def _set_state(self, state: SessionState) -> None:
        self.state = state
        self.touched = time.monotonic()
        self._broadcast("stream-state", self._state_payload())

    # -- commands ------------------------------------------------------------

    def start(self, prompt: str) -> None:
        if self.state is not SessionState.CREATED:
            raise SessionConflict(f"Session already started (state: {self.state.value})")
        self._set_state(SessionState.STREAMING)
        self._pull_gate.set()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(prompt))
        self._deadline = loop.time() + self.limits.first_token_timeout
        self._watchdog = loop.call_at(self._deadline, self._check_deadline)

    def pause(self) -> int:
        """Stop emitting and pulling; returns the last ``seq`` emitted."""
        self._require_started()
        if self.state is SessionState.STREAMING:
            self._set_state(SessionState.PAUSED)
            self._pull_gate.clear()
        return self.last_seq

    def resume(self) -> None:
        self._require_started()
        if self.state is SessionState.PAUSED:
            self._set_state(SessionState.STREAMING)
            self._pull_gate.set()
            self._schedule_flush()

    async def cancel(self) -> None:
        """End the session now and wait until the provider's iterator is closed."""
        if not self.is_live:
            raise SessionConflict(f"Session already {self.state.value}")
        self._finish(SessionState.CANCELLED, "cancelled")
        await self._stop_task()

    async def abort(self, code: str, message: str) -> None:
        """End a live session with ``stream-error`` (server shutdown, idle expiry)."""
        if self.is_live:
            self._finish(SessionState.FAILED, None, {"code": code, "error": message})
        await self._stop_task()

    def _require_started(self) -> None:
        if self.state is SessionState.CREATED:
            raise SessionConflict("Session has not started")
        if not self.is_live:
            raise SessionConflict(f"Session already {self.state.value}")

    async def _stop_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        if self._watch_task is not None:
            self._watch_task.cancel()

    # -- the stream ----------------------------------------------------------

    async def _run(self, prompt: str) -> None:
        stream = self.provider.create_stream(prompt, self.config)
        try:
            await self._pump(stream)
            await self._drain()
            self._finish(SessionState.COMPLETED, self.finish_reason or "stop")
        except ProviderError as exc:
            await self._drain()
            self._fail(exc.code, exc.message)
        except asyncio.CancelledError:
            if self.is_live:
                self._fail("shutdown", "The stream was stopped")
            raise
        except Exception:
            log.exception("session %s: internal error while streaming", short_id(self.id))
            await self._drain()
            self._fail("internal", "Internal error while streaming")
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _pump(self, stream: AsyncIterator[AIChunk]) -> None:
        loop = asyncio.get_running_loop()
        pacer = self.pacer
        # A provider whose pull hands over everything that is due (the demo) is pulled
        # once per chunk while the pacer is stretched: the tokens still leave at the same
        # flush, and the server wakes once per chunk instead of once per token.
        batching = bool(getattr(self.provider, "batches_backlog", False))
        first = True
        while True:
            if batching and pacer.interval > pacer.base:
                wait = self._last_flush + pacer.interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            while not self._may_pull():
                self._pull_gate.clear()
                await self._pull_gate.wait()
            timeout = self.limits.first_token_timeout if first else self.limits.token_idle_timeout
            self._deadline = loop.time() + timeout
            self._pulling = True
            try:
                item = await anext(stream)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not self._timed_out or task is None:
                    raise
                task.uncancel()
                which = "first token" if first else "next token"
                raise ProviderError(
                    "timeout", f"The provider sent no {which} within {timeout:g} seconds"
                ) from None
            finally:
                self._pulling = False
            first = False
            if item.usage is not None:
                self.usage = item.usage
            if item.finish_reason is not None:
                self.finish_reason = item.finish_reason
            if item.content:
                pending = self._pending
                pending.parts.append(item.content)
                pending.chars += len(item.content)
                pending.metadata = item.metadata
                if batching and loop.time() >= self._last_flush + pacer.interval:
                    if self._flush_handle is not None:
                        self._flush_handle.cancel()
                    self._flush()
                else:
                    self._schedule_flush()

    def _check_deadline(self) -> None:
        """The pull timeouts, with one timer per session rather than one per token.

        A pull that outlives its deadline cancels the stream task, which turns the
        cancellation into ``stream-error`` code ``timeout``.
        """
        self._watchdog = None
        if not self.is_live or self._task is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._pulling and now >= self._deadline:
            self._timed_out = True
            self._task.cancel()
            return
        when = self._deadline if self._pulling else now + self.limits.token_idle_timeout
        self._watchdog = loop.call_at(when, self._check_deadline)

    def _may_pull(self) -> bool:
        return self.state is SessionState.STREAMING and self._pending.chars < self.limits.max_pending_chars

    async def _drain(self) -> None:
        """Wait until every received token has been emitted (respecting pause)."""
        while self._pending.parts and self.is_live:
            self._pull_gate.clear()
            self._schedule_flush()
            await self._pull_gate.wait()

    def _schedule_flush(self) -> None:
        """Flush now if the last chunk left a while ago, else when the interval is up.

        An idle session sends each token at once; a fast one (or any, on a busy server)
        sends at most one chunk per ``pacer.interval``, with every token received meanwhile.
        """
        if self._flush_handle is None and self._pending.parts:
            loop = asyncio.get_running_loop()
            due = self._last_flush + self.pacer.interval
            if loop.time() >= due:
                self._flush_handle = loop.call_soon(self._flush)
            else:
                self._flush_handle = loop.call_at(due, self._flush)

    def _flush(self) -> None:
        """Emit everything pending as one chunk, unless paused or held by a viewer."""
        self._flush_handle = None
        pending = self._pending
        if self.state is not SessionState.STREAMING or not pending.parts:
            return
        if self._lagging():
            if self._watch_task is None:
                self._watch_task = asyncio.get_running_loop().create_task(self._watch_lag())
            return
        content = pending.parts[0] if len(pending.parts) == 1 else "".join(pending.parts)
        chunk = {
            "content": content,
            "timestamp": int(time.time() * 1000),
            "metadata": pending.metadata,
            "seq": len(self.chunks),
            "sessionId": self.id,
        }
        self.chunks.append(chunk)
        self._last_flush = asyncio.get_running_loop().time()
        self._pending = _Pending()
        self._broadcast("chunk", chunk)
        self._pull_gate.set()

    def _lagging(self) -> bool:
        max_lag = self.limits.max_lag
        return any(viewer.backlog() > max_lag for viewer in self.viewers.values())

    async def _watch_lag(self) -> None:
        """Hold emission while a viewer lags; drop one that stays behind too long."""
        loop = asyncio.get_running_loop()
        behind_since: dict[str, float] = {}
        try:
            while True:
                await asyncio.sleep(BACKPRESSURE_POLL_SECONDS)
                now = loop.time()
                lagging = [v for v in self.viewers.values() if v.backlog() > self.limits.max_lag]
                if not lagging:
                    break
                keys = {v.key for v in lagging}
                behind_since = {k: t for k, t in behind_since.items() if k in keys}
                for viewer in lagging:
                    since = behind_since.setdefault(viewer.key, now)
                    if now - since >= self.limits.stall_timeout:
                        log.info("session %s: dropping stalled viewer", short_id(self.id))
                        self.viewers.pop(viewer.key, None)
                        viewer.close("stalled")
        finally:
            self._watch_task = None
        self._schedule_flush()

    # -- endings -------------------------------------------------------------

    def _fail(self, code: str, message: str) -> None:
        self._finish(SessionState.FAILED, None, {"code": code, "error": message})

    def _finish(self, state: SessionState, finish_reason: str | None, error: Payload | None = None) -> None:
        if not self.is_live:
            return
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.finished_at = time.monotonic()
        self._set_state(state)
        if self.on_finish is not None:
            self.on_finish(self)
        self._pull_gate.set()
        if error is not None:
            self.error = error
            event: tuple[str, Payload] = (
                "stream-error",
                {"sessionId": self.id, "error": error["error"], "code": error["code"]},
            )
        else:
            self.finish_reason = finish_reason
            event = (
                "complete",
                {
                    "sessionId": self.id,
                    "totalChunks": len(self.chunks),
                    "finishReason": finish_reason,
                    "usage": self.usage.to_wire() if self.usage else None,
                },
            )
        self._terminal_event = event
        self._broadcast(*event)
