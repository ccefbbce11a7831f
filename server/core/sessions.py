"""The streaming session where its provider runs: its state machine (the seed's
``StreamingSession``) and the :class:`Journal` it writes through in Redis mode.

A session builds on the read side (:class:`~server.core.session_view.SessionView`: state,
chunk log, viewers). Its :class:`~server.core.pump.ProviderPump` pulls the provider's
async iterator in one task, and the session hands the text to its
:class:`~server.core.emitter.ChunkEmitter`, which makes every chunk (logged here with a
contiguous ``seq``) and sends it to the viewers. It knows nothing of aiohttp or
Socket.IO: a viewer is anything with ``send``/``backlog``/``close``.

Flow control, in one place each:
- paused: the provider is not pulled and no chunk is emitted (here, and the pump);
- the provider is not pulled while more than ``max_pending_chars`` wait to be emitted
  (the pump);
- a lagging viewer holds emission back, and one that stays behind is dropped (the
  emitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, cast

from prometheus_client import Histogram

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
from server.core.emitter import ChunkEmitter, FlowLimits, Pacer, Payload, SessionFull, Viewer
from server.core.prompting import Conversation
from server.core.pump import ProviderPump, batches
from server.core.resume_points import ResumePoints
from server.core.session_view import SessionConflict, SessionState, SessionView, short_id
from server.guards.logs import SESSION
from server.guards.metrics import STREAM_ERRORS, TALLY, TIME_TO_FIRST_TOKEN

__all__ = [
    "MAX_JOURNAL_BACKLOG",
    "FlowLimits",
    "Journal",
    "Pacer",
    "Payload",
    "SessionFull",
    "StreamingSession",
    "Viewer",
]

log = logging.getLogger(__name__)

_monotonic = time.monotonic
_time = time.time
#: ``TIME_TO_FIRST_TOKEN``'s child of each provider (``labels()`` costs twice the
#: observation).
_FIRST_TOKEN_BY_PROVIDER: dict[str, Histogram] = {}


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


class StreamingSession(SessionView):
    """One prompt's stream where its provider runs: the state machine, the chunks it makes
    and its ending. The task that pulls the provider is the pump's; the viewers and the
    flush schedule are the emitter's.
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
        on_target: Callable[[StreamingSession], None] | None = None,
    ) -> None:
        self.emitter = ChunkEmitter(
            short_id(session_id),
            limits,
            pacer or Pacer(),
            make_chunk=self._log_chunk,
            may_emit=self._may_emit,
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
        #: Chunks made so far (delivered or waiting for the journal), and those delivered.
        self._made = 0
        self._delivered = 0
        # Characters made into chunks, and (resumable providers) checkpoints.
        self._resumable = is_resumable(provider, config)
        self._resume = ResumePoints()
        #: Stopped here without an end, to be continued by another process.
        self.handed_over = False
        #: Called when this process starts (or takes over) a stream whose answer goes into a
        #: collaborative document (``server.collab.peer``: the AI peer that writes it).
        self._on_target = on_target
        self.pump = ProviderPump(
            self.emitter, limits, streaming=self._streaming, alive=lambda: self.is_live, take=self._take
        )
        self._wake_pump = self.pump.wake
        #: Called once when the session reaches a terminal state (the registry's quota count).
        self.on_finish: Callable[[StreamingSession], None] | None = None
        # Metrics: when it started (until its first chunk is delivered), and when the text
        # of each chunk made and not yet delivered was received (``(seq, monotonic)``).
        self._started_at: float | None = None
        self._received_at: deque[tuple[int, float]] = deque()

    @property
    def head_seq(self) -> int:
        return self._made - 1

    @property
    def resume_point(self) -> tuple[int, dict[str, Any]] | None:
        """The latest checkpoint whose text is all in chunks made (``(chars, checkpoint)``)."""
        return self._resume.point

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
            marks = self._received_at
            seq = payload["seq"]
            while marks and marks[0][0] < seq:
                marks.popleft()
            received = marks.popleft()[1] if marks and marks[0][0] == seq else None
            self._deliver_chunk(payload, received)
            if self.emitter.has_pending:
                self.emitter.schedule()  # it may have waited for this chunk to be delivered
            return
        if event in ("complete", "stream-error"):
            self._terminal_event = (event, payload)
            self.chunks.seal()
        self.emitter.broadcast(event, payload)

    def _deliver_chunk(self, chunk: Payload, received: float | None) -> None:
        """A chunk is logged: count it (``received``: when its text was first received,
        for the latency metric), log it here and send it to the viewers."""
        size = self.chunks.append(chunk)
        self._delivered += 1
        now = _monotonic()
        tally = TALLY
        tally.chunks += 1
        tally.chunk_bytes += size
        if received is not None:
            tally.chunk_latency.observe(now - received)
        if self._started_at is not None:
            provider = self.config.provider
            first_token = _FIRST_TOKEN_BY_PROVIDER.get(provider)
            if first_token is None:
                first_token = TIME_TO_FIRST_TOKEN.labels(provider=provider)
                _FIRST_TOKEN_BY_PROVIDER[provider] = first_token
            first_token.observe(now - self._started_at)
            self._started_at = None
        self.emitter.broadcast_chunk(chunk)

    def restore(self, chunks: ChunkLog, state: SessionState, usage: Usage | None) -> None:
        """The log of a session taken over from another process (counted from now on
        against this session's budget)."""
        chunks.adopt(self.chunks.budget)
        self.chunks = chunks
        self._made = self._delivered = len(chunks)
        self._resume.restore(chunks.chars)
        self.state = state
        self.usage = usage

    # -- commands ------------------------------------------------------------

    def start(self, prompt: str, conversation: Conversation | None = None) -> None:
        """Ask the provider: ``prompt`` alone (the seed's start), or ``conversation``, what
        :func:`server.core.prompting.build_conversation` made of a start request."""
        if self.handed_over:
            raise SessionConflict("The session is moving to another process; try again")
        if self.state is not SessionState.CREATED:
            raise SessionConflict(f"Session already started (state: {self.state.value})")
        self.adopt(conversation or Conversation.bare(prompt, self.config.system_prompt))
        prompt = conversation.prompt if conversation else prompt
        self._started_at = time.monotonic()
        self._set_state(SessionState.STREAMING)
        provider = self.provider
        if self._resumable:
            checkpoint = cast(ResumableProvider, provider).start_checkpoint(prompt, self.config)
            if checkpoint is not None:
                self._add_checkpoint(checkpoint)
        self._launch(lambda: provider.create_stream(prompt, self.config))

    def adopt(self, conversation: Conversation) -> None:
        """Ask the provider what ``conversation`` says (a start, or a takeover of a stream
        whose conversation the log kept)."""
        self.conversation = conversation
        self.config = conversation.configure(self.config)
        if conversation.target is not None and self._on_target is not None:
            self._on_target(self)

    def continue_stream(self, chars: int, checkpoint: dict[str, Any]) -> None:
        """Go on with a stream another process started, from its logged resume point
        (``chars`` characters of content at ``checkpoint``): the provider yields the text
        after what the log holds, and the chunks follow with the next ``seq``. A paused
        stream stays paused."""
        provider = cast(ResumableProvider, self.provider)
        skip = self._resume.restart(chars, checkpoint)
        self._launch(lambda: provider.resume_stream(self.config, checkpoint, skip))

    def _launch(self, open_stream: Callable[[], AsyncIterator[AIChunk]]) -> None:
        if self.state is SessionState.STREAMING:
            self.pump.wake()
        self.pump.launch(lambda: self._run(open_stream))

    def pause(self) -> int:
        """Stop emitting and pulling; returns the last ``seq`` emitted."""
        self._require_started()
        if self.state is SessionState.STREAMING:
            self._set_state(SessionState.PAUSED)
            self.pump.hold()
        return self.head_seq

    def resume(self) -> None:
        self._require_started()
        if self.handed_over:
            raise SessionConflict("The session is moving to another process; try again")
        if self.state is SessionState.PAUSED:
            self._set_state(SessionState.STREAMING)
            self.pump.wake()
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
        self.pump.stop_watchdog()
        for viewer in tuple(self.viewers.values()):
            viewer.close("moved")
        self.viewers.clear()
        await self._stop_task()

    def dispose(self) -> None:
        """The session has expired: drop the references that tie it to itself (its
        emitter's callbacks, its finished task's coroutine), so that reference counting
        frees it at once. Left to the cyclic collector, it would wait for a full
        collection, which this process's GC thresholds (``server.runner``) make rare."""
        if self.pump.running:
            return
        self.pump.dispose()
        self.on_finish = None
        self.emitter.dispose()

    def _require_started(self) -> None:
        if self.state is SessionState.CREATED:
            raise SessionConflict("Session has not started")
        if not self.is_live:
            raise SessionConflict(f"Session already {self.state.value}")

    async def _stop_task(self) -> None:
        await self.pump.stop()
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
            await self.pump.run(stream, batching=batches(self.provider, self.config))
            await self.pump.drain()
            self._finish(SessionState.COMPLETED, self.finish_reason or "stop")
        except ProviderError as exc:
            await self.pump.drain()
            self._fail(exc.code, exc.message)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling() > 0 or self.handed_over:
                if self.is_live and not self.handed_over:
                    self._fail("shutdown", "The stream was stopped")
                raise
            # Nobody cancelled this task: the provider raised CancelledError itself (its bug).
            log.error("session %s: the provider raised CancelledError", short_id(self.id))
            await self.pump.drain()
            self._fail("internal", "Internal error while streaming")
        except Exception:
            log.exception("session %s: internal error while streaming", short_id(self.id))
            await self.pump.drain()
            self._fail("internal", "Internal error while streaming")
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            checkpoint = self._resume.last
            if checkpoint is not None and not self.handed_over and self.state is not SessionState.COMPLETED:
                # Ended early and nobody will resume it: stop the work upstream too.
                await cast(ResumableProvider, self.provider).cancel(checkpoint)

    def _take(self, item: AIChunk, due: bool) -> None:
        """An item the pump pulled that carries more than text (the pump hands a plain
        piece of text to the emitter itself): its text goes to the emitter (at once when
        ``due``)."""
        if item.usage is not None:
            self.usage = item.usage
        if item.finish_reason is not None:
            self.finish_reason = item.finish_reason
        if item.content:
            self.emitter.push(item.content, item.metadata, due)
        if item.checkpoint is not None and self._resumable:
            self._add_checkpoint(item.checkpoint)

    # -- the emitter's callbacks ---------------------------------------------

    def _streaming(self) -> bool:
        return self.state is SessionState.STREAMING

    def _may_emit(self) -> bool:
        """Streaming, and no chunk made is still waiting for the journal."""
        return self.state is SessionState.STREAMING and self._made == self._delivered

    def wake(self) -> None:
        """Let the pump look again whether it may read the provider."""
        self.pump.wake()

    def _log_chunk(self, content: str, metadata: Payload) -> None:
        """Make the next chunk of the text the emitter flushed: through the journal, which
        delivers it once written, or (one process) delivered at once; then let the pump
        read more."""
        seq = self._made
        chunk = {
            "content": content,
            "timestamp": int(_time() * 1000),
            "metadata": metadata,
            "seq": seq,
            "sessionId": self.id,
        }
        self._made = seq + 1
        self._resume.made_chunk(len(content))
        journal = self.journal
        if journal is None:
            self._deliver_chunk(chunk, self.emitter.received_at)
        else:
            self._received_at.append((seq, self.emitter.received_at))
            if not journal.chunk(self, chunk):
                self.deliver("chunk", chunk)
        self._wake_pump()

    # -- resume points (resumable providers) ---------------------------------

    def _add_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The provider's position after the text received so far (what is in chunks made
        and what waits in the emitter)."""
        received = self._resume.made + self.emitter.pending_chars
        if self._resume.add(checkpoint, received) and self.journal is not None:
            self.journal.checkpoint(self)

    def take_resume(self) -> tuple[int, dict[str, Any]] | None:
        """The resume point, when it changed since the journal last took it."""
        return self._resume.take()

    # -- endings -------------------------------------------------------------

    def _fail(self, code: str, message: str) -> None:
        self._finish(SessionState.FAILED, None, {"code": code, "error": message})

    def _finish(self, state: SessionState, finish_reason: str | None, error: Payload | None = None) -> None:
        if not self.is_live:
            return
        self.emitter.cancel_flush()
        self.pump.stop_watchdog()
        self.finished_at = time.monotonic()
        self._set_state(state)
        if self.on_finish is not None:
            self.on_finish(self)
        self.pump.wake()
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
