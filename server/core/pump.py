"""The provider pump: the task that reads one session's provider, and when it may.

A :class:`ProviderPump` pulls the provider's async iterator while its session streams and
fewer than ``max_pending_chars`` wait to be emitted, and hands every item to the session
(a malformed item, a provider's bug, raises ``TypeError`` instead). It paces a provider
that hands over all that is due at once (the demo), and it bounds each pull: the first
by ``first_token_timeout``, every other by ``token_idle_timeout``, with one timer per
session rather than one per token. What an item means (its text, usage, finish reason,
checkpoint) and how the session ends are the session's
(:class:`~server.core.sessions.StreamingSession`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from providers.base import AIChunk, AIProvider, ProviderError, StreamConfig, Usage, sleep_until
from server.core.emitter import ChunkEmitter, FlowLimits

__all__ = ["ProviderPump"]


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


def _never() -> bool:
    return False


def _drop(item: AIChunk, due: bool) -> None:
    return None


class ProviderPump:
    """One session's provider task, its pull gate and its pull deadlines.

    ``streaming()`` says whether the session streams (not paused, not ended), ``alive()``
    whether it is live at all; ``take(item, due)`` hands the session a well-formed item that
    carries more than text (usage, a finish reason, a checkpoint), with ``due`` true when a
    batching provider's text is to be flushed at once. A plain piece of text, the item of
    nearly every token, goes straight to the emitter.
    """

    def __init__(
        self,
        emitter: ChunkEmitter,
        limits: FlowLimits,
        *,
        streaming: Callable[[], bool],
        alive: Callable[[], bool],
        take: Callable[[AIChunk, bool], None],
    ) -> None:
        self.emitter = emitter
        self.limits = limits
        self._streaming = streaming
        self._alive = alive
        self._take = take
        self._gate = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._pulling = False
        self._timed_out = False

    @property
    def running(self) -> bool:
        """The task was started and has not ended yet."""
        return self._task is not None and not self._task.done()

    def launch(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start the task (``run()``) and the deadline of its first pull."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(run())
        self._deadline = loop.time() + self.limits.first_token_timeout
        self._watchdog = loop.call_at(self._deadline, self._check_deadline)

    def wake(self) -> None:
        """Let the pump look again whether it may read the provider."""
        self._gate.set()

    def hold(self) -> None:
        """Read no more until :meth:`wake` (the session is paused)."""
        self._gate.clear()

    # -- the pull loop -------------------------------------------------------

    async def run(self, stream: AsyncIterator[AIChunk], *, batching: bool) -> None:
        """Pull the provider while the session may, and hand each item to the session."""
        loop = asyncio.get_running_loop()
        emitter = self.emitter
        push = emitter.push
        pacer = emitter.pacer
        limits = self.limits
        max_pending = limits.max_pending_chars
        # Per token, so each step is written out here rather than called: the pull gate,
        # the item's check and the hand-over of a plain piece of text.
        # A provider whose pull hands over everything that is due (the demo, ``batching``)
        # is pulled once per chunk while the pacer is stretched: the tokens still leave at
        # the same flush, and the server wakes once per chunk instead of once per token.
        timeout = limits.first_token_timeout
        first = True
        while True:
            if batching and pacer.interval > pacer.base:
                due = emitter.last_flush + pacer.interval
                if due > loop.time():
                    await sleep_until(loop, due)
            while not (self._streaming() and emitter.pending_chars < max_pending):
                self._gate.clear()
                await self._gate.wait()
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
            if first:
                first = False
                timeout = limits.token_idle_timeout
            due = batching and loop.time() >= emitter.last_flush + pacer.interval
            if (
                type(item) is AIChunk
                and item.usage is None
                and item.finish_reason is None
                and item.checkpoint is None
                and type(item.content) is str
                and type(item.metadata) is dict
            ):
                # The common case, per token: a piece of text and nothing else.
                if item.content:
                    push(item.content, item.metadata, due)
            elif _well_formed(item):
                self._take(item, due)
            else:
                raise TypeError(f"the provider yielded a malformed item ({type(item).__name__})")

    async def drain(self) -> None:
        """Wait until every received token has been emitted (respecting pause)."""
        while self.emitter.has_pending and self._alive():
            self._gate.clear()
            self.emitter.schedule()
            await self._gate.wait()

    # -- deadlines -----------------------------------------------------------

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
        if not self._alive() or self._task is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._pulling and now >= self._deadline:
            self._timed_out = True
            self._task.cancel()
            return
        when = self._deadline if self._pulling else now + self.limits.token_idle_timeout
        self._watchdog = loop.call_at(when, self._check_deadline)

    def stop_watchdog(self) -> None:
        """No more deadlines (the session has ended or stopped here)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # -- stopping ------------------------------------------------------------

    async def stop(self) -> None:
        """Cancel the task and wait (at most 5 seconds) until it has ended."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5)

    def dispose(self) -> None:
        """The session has expired: let go of its finished task and of its callbacks
        (they refer back to it), so that reference counting frees it at once."""
        self._task = None
        self.stop_watchdog()
        self._streaming = _never
        self._alive = _never
        self._take = _drop


def batches(provider: AIProvider, config: StreamConfig) -> bool:
    """Whether one pull of ``provider`` hands over every token already due for this stream
    (``batches_for(config)``, or the ``batches_backlog`` flag of a provider without it)."""
    check = getattr(provider, "batches_for", None)
    if callable(check):
        return bool(check(config))
    return bool(getattr(provider, "batches_backlog", False))
