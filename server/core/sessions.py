"""The streaming session and its state machine (the seed's ``StreamingSession``).

A session pulls its provider's async iterator in one task and hands the text to its
:class:`~server.core.emitter.ChunkEmitter`, which logs every chunk with a contiguous ``seq``
and sends it to the viewers. It knows nothing of aiohttp or Socket.IO: a viewer is
anything with ``send``/``backlog``/``close``.

Flow control, in one place each:
- paused: the provider is not pulled and no chunk is emitted (here);
- the provider is not pulled while more than ``max_pending_chars`` wait to be emitted
  (here);
- a lagging viewer holds emission back, and one that stays behind is dropped (the
  emitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from typing import Any, Protocol, cast

from providers.base import (
    AIChunk,
    AIProvider,
    ProviderError,
    ResumableProvider,
    StreamConfig,
    Usage,
    is_resumable,
)
from server.core.chunklog import ChunkLog, LogBudget
from server.core.emitter import ChunkEmitter, FlowLimits, Pacer, Payload, SessionFull, Viewer, ViewerSet
from server.guards.logs import SESSION
from server.guards.metrics import JOINS, STREAM_ERRORS, TALLY, TIME_TO_FIRST_TOKEN

__all__ = [
    "TERMINAL_STATES",
    "FlowLimits",
    "Journal",
    "Pacer",
    "Payload",
    "SessionConflict",
    "SessionFull",
    "SessionState",
    "SessionView",
    "StreamingSession",
    "Viewer",
    "short_id",
]

log = logging.getLogger(__name__)


class SessionState(StrEnum):
    CREATED = "created"
    STREAMING = "streaming"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({SessionState.COMPLETED, SessionState.FAILED, SessionState.CANCELLED})


class SessionConflict(Exception):
    """The action does not fit the session's state (HTTP 409, ack ``ok: false``)."""


def short_id(session_id: str) -> str:
    """The id as it may appear in logs: a prefix, never the whole capability."""
    return session_id[:8]


class Journal(Protocol):
    """Where an owner's session writes what must outlive its process (Redis mode).

    What the journal takes it also delivers: once an entry is written it hands it to
    :meth:`StreamingSession.deliver`, so a viewer never sees a chunk that a successor
    (after this process died) would not find in the log.
    """

    def chunk(self, session: StreamingSession, chunk: Payload) -> bool:
        """Write a chunk, then deliver it; ``False`` when the journal does not take it."""

    def event(self, session: StreamingSession, event: str, payload: Payload) -> bool:
        """Write a ``stream-state``, ``complete`` or ``stream-error``, then deliver it."""

    def checkpoint(self, session: StreamingSession) -> None:
        """Write the session's resume point (:meth:`StreamingSession.take_resume`) alone."""

    def backlog(self, session: StreamingSession) -> int:
        """Entries of this session not yet written; the provider is not read while high."""

    async def settled(self, session: StreamingSession) -> None:
        """Return once everything this session logged so far is written."""


#: The provider is not read while this many journal entries of a session wait.
MAX_JOURNAL_BACKLOG = 256


def _well_formed(item: object) -> bool:
    """An :class:`AIChunk` whose fields have their declared types (else a provider's bug)."""
    return (
        isinstance(item, AIChunk)
        and isinstance(item.content, str)
        and isinstance(item.metadata, dict)
        and (item.usage is None or isinstance(item.usage, Usage))
        and (item.finish_reason is None or isinstance(item.finish_reason, str))
        and (item.checkpoint is None or isinstance(item.checkpoint, dict))
    )


class SessionView:
    """What every view of a session has, wherever its provider runs: identity, state,
    the chunk log and the viewers (replay on join, then live)."""

    def __init__(
        self,
        session_id: str,
        user_id: str,
        config: StreamConfig,
        viewer_set: ViewerSet,
        *,
        epoch: str | None = None,
        created_at: float | None = None,
        log_budget: LogBudget | None = None,
    ) -> None:
        self.id = session_id
        self.user_id = user_id
        self.config = config
        self.viewer_set = viewer_set
        self.state = SessionState.CREATED
        #: The identity of this chunk log's history (PROTOCOL.md, "Epoch").
        self.epoch = epoch or secrets.token_hex(4)
        self.created_at = time.time() if created_at is None else created_at
        #: The chunks so far, kept compactly (their payloads are built when read).
        self.chunks = ChunkLog(session_id, log_budget)
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: Payload | None = None
        self.touched = time.monotonic()
        self._terminal_event: tuple[str, Payload] | None = None

    # -- queries -------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return len(self.chunks) - 1

    @property
    def text(self) -> str:
        return self.chunks.text

    @property
    def is_live(self) -> bool:
        return self.state not in TERMINAL_STATES

    @property
    def viewers(self) -> dict[str, Viewer]:
        return self.viewer_set.viewers

    def status(self) -> Payload:
        """The ``GET /api/streaming/{id}`` body."""
        return {
            "sessionId": self.id,
            "userId": self.user_id,
            "state": self.state.value,
            "epoch": self.epoch,
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

    def add_viewer(
        self, viewer: Viewer, last_seq: int | None = None, *, epoch: str | None = None, snapshot: bool = False
    ) -> Payload:
        """Replay what the viewer missed (``seq > last_seq``), then keep it live.

        A viewer that knew another history (``epoch``), or claims chunks the log does
        not have, first gets ``stream-reset`` and then the whole log. With ``snapshot``
        it gets one ``snapshot`` event with the text so far instead of the replay.
        Replay and registration happen with no await in between, so no chunk can
        fall between them or arrive twice.
        """
        self.viewer_set.check_room(viewer.key)
        self.touched = time.monotonic()
        if snapshot:
            viewer.send("snapshot", self._snapshot_payload())
            start = len(self.chunks)
            kind = "snapshot"
        elif (epoch is not None and epoch != self.epoch) or (
            last_seq is not None and last_seq > self.last_seq
        ):
            viewer.send("stream-reset", {"sessionId": self.id, "epoch": self.epoch, "lastSeq": self.last_seq})
            start = 0
            kind = "reset"
        elif last_seq is None:
            start = 0
            kind = "new"
        else:
            start = last_seq + 1
            kind = "resume"
        JOINS.labels(kind=kind).inc()
        for chunk in self.chunks.iter_from(start):
            viewer.send("chunk", chunk)
        if self._terminal_event is not None:
            viewer.send(*self._terminal_event)
        self.viewer_set.add(viewer)
        return {"state": self.state.value, "lastSeq": self.last_seq, "epoch": self.epoch}

    def remove_viewer(self, key: str) -> None:
        self.viewer_set.remove(key)

    @property
    def head_seq(self) -> int:
        """The last ``seq`` made, sent or not yet (an owner's log may be ahead of its viewers)."""
        return self.last_seq

    def _state_payload(self) -> Payload:
        return {
            "sessionId": self.id,
            "state": self.state.value,
            "lastSeq": self.head_seq,
            "epoch": self.epoch,
        }

    def _snapshot_payload(self) -> Payload:
        return {
            "sessionId": self.id,
            "epoch": self.epoch,
            "text": self.text,
            "lastSeq": self.last_seq,
            "state": self.state.value,
        }


class StreamingSession(SessionView):
    """One prompt's stream where its provider runs: the state machine and the task that
    pulls the provider. The viewers and the flush schedule are the emitter's.
    """

    def __init__(
        self,
        session_id: str,
        user_id: str,
        config: StreamConfig,
        provider: AIProvider,
        limits: FlowLimits,
        pacer: Pacer | None = None,
        *,
        epoch: str | None = None,
        created_at: float | None = None,
        journal: Journal | None = None,
        log_budget: LogBudget | None = None,
    ) -> None:
        self.emitter = ChunkEmitter(
            short_id(session_id),
            limits,
            pacer or Pacer(),
            make_chunk=self._log_chunk,
            may_emit=self._streaming,
            on_emitted=self.wake,
            in_flight=self._in_flight,
        )
        super().__init__(
            session_id,
            user_id,
            config,
            self.emitter,
            epoch=epoch,
            created_at=created_at,
            log_budget=log_budget,
        )
        self.provider = provider
        self.limits = limits
        self.journal = journal
        self.finished_at: float | None = None
        #: Chunks made so far (delivered or waiting for the journal), and their characters.
        self._made = 0
        self._made_chars = 0
        # Resumable providers: characters received, the checkpoints not yet covered by a
        # logged chunk, the latest that is (``(chars, checkpoint)``), and the latest seen.
        self._resumable = is_resumable(provider, config)
        self._received = 0
        self._checkpoints: deque[tuple[int, dict[str, Any]]] = deque()
        self.resume_point: tuple[int, dict[str, Any]] | None = None
        self._resume_dirty = False
        self._last_checkpoint: dict[str, Any] | None = None
        #: Stopped here without an end, to be continued by another process.
        self.handed_over = False
        self._pull_gate = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._pulling = False
        self._timed_out = False
        #: Called once when the session reaches a terminal state (the registry's quota count).
        self.on_finish: Callable[[StreamingSession], None] | None = None
        # Metrics: when it started (until its first chunk is delivered), and when the text
        # of each chunk made and not yet delivered was received (``(seq, monotonic)``).
        self._started_at: float | None = None
        self._received_at: deque[tuple[int, float]] = deque()

    @property
    def head_seq(self) -> int:
        return self._made - 1

    def _set_state(self, state: SessionState) -> None:
        self.state = state
        self.touched = time.monotonic()
        self._publish("stream-state", self._state_payload())

    def _publish(self, event: str, payload: Payload) -> None:
        """Send an event to the viewers: through the journal, which delivers it once
        written, or (one process) at once."""
        journal = self.journal
        if journal is None:
            self.deliver(event, payload)
        elif event == "chunk":
            if not journal.chunk(self, payload):
                self.deliver(event, payload)
        elif not journal.event(self, event, payload):
            self.deliver(event, payload)

    def deliver(self, event: str, payload: Payload) -> None:
        """An event is logged (or needs no log): the viewers get it, joiners replay it."""
        if event == "chunk":
            self.chunks.append(payload)
            self._count_chunk(payload)
        elif event in ("complete", "stream-error"):
            self._terminal_event = (event, payload)
            self.chunks.seal()
        self.emitter.broadcast(event, payload)
        if event == "chunk" and self.emitter.has_pending:
            self.emitter.schedule()  # it may have waited for this chunk to be delivered

    def _in_flight(self) -> int:
        """Chunks made and waiting for the journal before the viewers get them."""
        return self._made - len(self.chunks)

    def _count_chunk(self, chunk: Payload) -> None:
        now = time.monotonic()
        tally = TALLY
        tally.chunks += 1
        tally.chunk_bytes += len(chunk["content"].encode())
        marks = self._received_at
        seq = chunk["seq"]
        while marks and marks[0][0] < seq:
            marks.popleft()
        if marks and marks[0][0] == seq:
            tally.chunk_latency.observe(now - marks.popleft()[1])
        if self._started_at is not None:
            TIME_TO_FIRST_TOKEN.labels(provider=self.config.provider).observe(now - self._started_at)
            self._started_at = None

    def restore(self, chunks: ChunkLog, state: SessionState, usage: Usage | None) -> None:
        """The log of a session taken over from another process (counted from now on
        against this session's budget)."""
        chunks.adopt(self.chunks.budget)
        self.chunks = chunks
        self._made = len(chunks)
        self._made_chars = self._received = chunks.chars
        self.state = state
        self.usage = usage

    # -- commands ------------------------------------------------------------

    def start(self, prompt: str) -> None:
        if self.handed_over:
            raise SessionConflict("The session is moving to another process; try again")
        if self.state is not SessionState.CREATED:
            raise SessionConflict(f"Session already started (state: {self.state.value})")
        self._started_at = time.monotonic()
        self._set_state(SessionState.STREAMING)
        provider = self.provider
        if self._resumable:
            checkpoint = cast(ResumableProvider, provider).start_checkpoint(prompt, self.config)
            if checkpoint is not None:
                self._add_checkpoint(checkpoint)
        self._launch(lambda: provider.create_stream(prompt, self.config))

    def continue_stream(self, chars: int, checkpoint: dict[str, Any]) -> None:
        """Go on with a stream another process started, from its logged resume point
        (``chars`` characters of content at ``checkpoint``): the provider yields the text
        after what the log holds, and the chunks follow with the next ``seq``. A paused
        stream stays paused."""
        provider = cast(ResumableProvider, self.provider)
        skip = self._made_chars - chars
        self._received = self._made_chars
        self.resume_point = (self._made_chars, checkpoint)
        self._last_checkpoint = checkpoint
        self._launch(lambda: provider.resume_stream(self.config, checkpoint, skip))

    def _launch(self, open_stream: Callable[[], AsyncIterator[AIChunk]]) -> None:
        if self.state is SessionState.STREAMING:
            self._pull_gate.set()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(open_stream))
        self._deadline = loop.time() + self.limits.first_token_timeout
        self._watchdog = loop.call_at(self._deadline, self._check_deadline)

    def pause(self) -> int:
        """Stop emitting and pulling; returns the last ``seq`` emitted."""
        self._require_started()
        if self.state is SessionState.STREAMING:
            self._set_state(SessionState.PAUSED)
            self._pull_gate.clear()
        return self.head_seq

    def resume(self) -> None:
        self._require_started()
        if self.handed_over:
            raise SessionConflict("The session is moving to another process; try again")
        if self.state is SessionState.PAUSED:
            self._set_state(SessionState.STREAMING)
            self._pull_gate.set()
            self.emitter.restamp()
            self.emitter.schedule()

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

    async def persisted(self, within: float) -> None:
        """Wait (at most ``within`` seconds) until what happened so far is in the journal,
        so that every process sees it once a command is acknowledged."""
        if self.journal is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self.journal.settled(self)

    async def abandon(self) -> None:
        """Another process owns this session now: stop here and write nothing more; the
        viewers here are disconnected and come back (with ``lastSeq``) to the new owner's log."""
        self.journal = None
        await self.hand_over()

    async def hand_over(self) -> None:
        """Stop here with no end, so that another process continues the stream (its
        provider upstream is left running): the viewers here are disconnected and come
        back (with ``lastSeq``) to wherever it runs next."""
        self.handed_over = True
        self.emitter.cancel_flush()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for viewer in tuple(self.viewers.values()):
            viewer.close("moved")
        self.viewers.clear()
        await self._stop_task()

    def dispose(self) -> None:
        """The session has expired: drop the references that tie it to itself (its
        emitter's callbacks, its finished task's coroutine), so that reference counting
        frees it at once. Left to the cyclic collector, it would wait for a full
        collection, which this process's GC thresholds (``server.runner``) make rare."""
        if self._task is not None and not self._task.done():
            return
        self._task = None
        self.on_finish = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.emitter.dispose()

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
        self.emitter.stop_watch()

    # -- the stream ----------------------------------------------------------

    async def _run(self, open_stream: Callable[[], AsyncIterator[AIChunk]]) -> None:
        # This task's own context (a copy of its starter's): its log lines name the session.
        SESSION.set(short_id(self.id))
        stream: AsyncIterator[AIChunk] | None = None
        try:
            # Inside the try: a provider whose create_stream raises at once must still end
            # the session (the deadline watchdog only fires while a pull is pending).
            stream = open_stream()
            await self._pump(stream)
            await self._drain()
            self._finish(SessionState.COMPLETED, self.finish_reason or "stop")
        except ProviderError as exc:
            await self._drain()
            self._fail(exc.code, exc.message)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling() > 0 or self.handed_over:
                if self.is_live and not self.handed_over:
                    self._fail("shutdown", "The stream was stopped")
                raise
            # Nobody cancelled this task: the provider raised CancelledError itself (its bug).
            log.error("session %s: the provider raised CancelledError", short_id(self.id))
            await self._drain()
            self._fail("internal", "Internal error while streaming")
        except Exception:
            log.exception("session %s: internal error while streaming", short_id(self.id))
            await self._drain()
            self._fail("internal", "Internal error while streaming")
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            checkpoint = self._last_checkpoint
            if checkpoint is not None and not self.handed_over and self.state is not SessionState.COMPLETED:
                # Ended early and nobody will resume it: stop the work upstream too.
                await cast(ResumableProvider, self.provider).cancel(checkpoint)

    async def _pump(self, stream: AsyncIterator[AIChunk]) -> None:
        """Pull the provider while the session may, and hand its text to the emitter."""
        loop = asyncio.get_running_loop()
        emitter = self.emitter
        pacer = emitter.pacer
        # A provider whose pull hands over everything that is due (the demo) is pulled
        # once per chunk while the pacer is stretched: the tokens still leave at the same
        # flush, and the server wakes once per chunk instead of once per token.
        batching = bool(getattr(self.provider, "batches_backlog", False))
        first = True
        while True:
            if batching and pacer.interval > pacer.base:
                wait = emitter.last_flush + pacer.interval - loop.time()
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
                self._raise_if_timed_out(first, timeout)
                raise
            finally:
                self._pulling = False
            first = False
            if not _well_formed(item):
                raise TypeError(f"the provider yielded a malformed item ({type(item).__name__})")
            if item.usage is not None:
                self.usage = item.usage
            if item.finish_reason is not None:
                self.finish_reason = item.finish_reason
            if item.content:
                self._received += len(item.content)
                due = batching and loop.time() >= emitter.last_flush + pacer.interval
                emitter.push(item.content, item.metadata, flush_now=due)
            if item.checkpoint is not None and self._resumable:
                self._add_checkpoint(item.checkpoint)

    def _raise_if_timed_out(self, first: bool, timeout: float) -> None:
        """A pull cancelled by the deadline watchdog becomes ``ProviderError("timeout")``."""
        task = asyncio.current_task()
        if not self._timed_out or task is None:
            return
        task.uncancel()
        which = "first token" if first else "next token"
        raise ProviderError("timeout", f"The provider sent no {which} within {timeout:g} seconds") from None

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
        return (
            self.state is SessionState.STREAMING
            and self.emitter.pending_chars < self.limits.max_pending_chars
        )

    async def _drain(self) -> None:
        """Wait until every received token has been emitted (respecting pause)."""
        while self.emitter.has_pending and self.is_live:
            self._pull_gate.clear()
            self.emitter.schedule()
            await self._pull_gate.wait()

    # -- the emitter's callbacks ---------------------------------------------

    def _streaming(self) -> bool:
        return self.state is SessionState.STREAMING

    def wake(self) -> None:
        """Let the pump look again whether it may read the provider."""
        self._pull_gate.set()

    def _log_chunk(self, content: str, metadata: Payload) -> Payload:
        chunk = {
            "content": content,
            "timestamp": int(time.time() * 1000),
            "metadata": metadata,
            "seq": self._made,
            "sessionId": self.id,
        }
        self._received_at.append((self._made, self.emitter.received_at))
        self._made += 1
        self._made_chars += len(content)
        if self._checkpoints:
            self._advance_resume_point()
        self._publish("chunk", chunk)
        return chunk

    # -- resume points (resumable providers) ---------------------------------

    def _add_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The provider's position after the text received so far."""
        self._last_checkpoint = checkpoint
        self._checkpoints.append((self._received, checkpoint))
        if self._received <= self._made_chars:
            # Nothing of it waits to be emitted: it is the resume point right away.
            self._advance_resume_point()
            if self.journal is not None:
                self.journal.checkpoint(self)

    def _advance_resume_point(self) -> None:
        """The latest checkpoint whose text is all in chunks made so far."""
        checkpoints = self._checkpoints
        while checkpoints and checkpoints[0][0] <= self._made_chars:
            self.resume_point = checkpoints.popleft()
            self._resume_dirty = True

    def take_resume(self) -> tuple[int, dict[str, Any]] | None:
        """The resume point, when it changed since the journal last took it."""
        if not self._resume_dirty:
            return None
        self._resume_dirty = False
        return self.resume_point

    # -- endings -------------------------------------------------------------

    def _fail(self, code: str, message: str) -> None:
        self._finish(SessionState.FAILED, None, {"code": code, "error": message})

    def _finish(self, state: SessionState, finish_reason: str | None, error: Payload | None = None) -> None:
        if not self.is_live:
            return
        self.emitter.cancel_flush()
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
            STREAM_ERRORS.labels(provider=self.config.provider, code=error["code"]).inc()
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
                    "totalChunks": self._made,
                    "finishReason": finish_reason,
                    "usage": self.usage.to_wire() if self.usage else None,
                },
            )
        self._publish(*event)
