"""The owner's write path in Redis mode: every chunk and event of the sessions this
process runs goes to their Redis logs, in order, one script call per flush for all of
them (``RedisStore.append``).

A session is never held up by Redis for the chunk at hand: the chunk goes to local
viewers at once and its write follows within the same loop turn or the next. While
writes wait (Redis slow or unreachable) the provider is not read past
``MAX_JOURNAL_BACKLOG`` entries, so memory stays bounded, and nothing is dropped: the
writer retries the same entries, in order, until Redis answers. A write refused by the
fencing token means another process owns the session now: this one stops it.

Viewers get an entry only once it is written (:meth:`StreamingSession.deliver`): what a
viewer has seen is always in the log, so a process that takes a session over after its
owner died continues exactly where every viewer stands.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from server.cluster.redis_store import Append, Fenced, RedisStore, chunk_id, event_id
from server.core.errors import StoreUnavailable
from server.core.models import encode_json
from server.core.session_view import short_id
from server.core.sessions import MAX_JOURNAL_BACKLOG, Payload, StreamingSession

log = logging.getLogger(__name__)

#: Most entries written in one round trip (one script call: ``RedisStore.append``). Under
#: load a bigger batch means fewer round trips for the same chunks, and so less waiting
#: before delivery (bench/redis_cost.py: p99 about 450 -> 300 ms at 512 -> 4096).
BATCH = 4096
TERMINAL_EVENTS = frozenset({"complete", "stream-error"})

#: An event to hand to the session's viewers once its entry is written.
Delivery = tuple[str, Payload]


def _resume_meta(session: StreamingSession) -> tuple[str, ...]:
    """The session's new resume point as meta fields, or none when it did not change."""
    point = session.take_resume()
    if point is None:
        return ()
    chars, checkpoint = point
    return ("resume", encode_json({"chars": chars, "checkpoint": checkpoint}))


class RedisJournal:
    """:class:`server.core.sessions.Journal` on Redis, with one writer task per process."""

    def __init__(
        self,
        store: RedisStore,
        ttl_ms: int,
        on_lost: Callable[[StreamingSession], None],
        on_finished: Callable[[StreamingSession], Awaitable[None]],
    ) -> None:
        self.store = store
        self.ttl_ms = ttl_ms
        self.fences: dict[str, str] = {}
        self._on_lost = on_lost
        self._on_finished = on_finished
        self._queue: deque[tuple[StreamingSession, Append, Delivery | None]] = deque()
        self._backlog: dict[str, int] = {}
        self._settled: dict[str, asyncio.Event] = {}
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: Since when writes have been failing (loop time), or ``None``.
        self.failing_since: float | None = None

    def own(self, session: StreamingSession, fence: str) -> None:
        """This process writes ``session``'s log with ``fence`` from now on."""
        self.fences[session.id] = fence
        session.journal = self

    # -- sessions.Journal ----------------------------------------------------

    def chunk(self, session: StreamingSession, chunk: Payload) -> bool:
        seq = chunk["seq"]
        fields = ("c", chunk["content"], "t", str(chunk["timestamp"]), "m", encode_json(chunk["metadata"]))
        meta = ("lastSeq", str(seq), *_resume_meta(session))
        return self._put(session, chunk_id(seq), fields, meta, ("chunk", chunk))

    def event(self, session: StreamingSession, event: str, payload: Payload) -> bool:
        meta: tuple[str, ...] = ()
        if event == "stream-state":
            meta = ("state", payload["state"])
            if payload["state"] == "streaming" and session.conversation is not None:
                # What the provider was asked: for follow-ups and takeovers on any process.
                meta = (*meta, "request", session.conversation.to_json())
        elif event == "complete":
            meta = ("finishReason", payload["finishReason"] or "", "usage", encode_json(payload["usage"]))
        elif event == "stream-error":
            meta = ("error", encode_json(session.error))
        fields = ("e", event, "p", encode_json(payload))
        return self._put(session, event_id(session.head_seq), fields, meta, (event, payload))

    def checkpoint(self, session: StreamingSession) -> None:
        meta = _resume_meta(session)
        if meta:
            self._put(session, "", (), meta, None)

    def backlog(self, session: StreamingSession) -> int:
        return self._backlog.get(session.id, 0)

    async def settled(self, session: StreamingSession) -> None:
        if session.id not in self._backlog:
            return
        await self._settled.setdefault(session.id, asyncio.Event()).wait()

    def _put(
        self,
        session: StreamingSession,
        entry_id: str,
        fields: tuple[str, ...],
        meta: tuple[str, ...],
        delivery: Delivery | None,
    ) -> bool:
        fence = self.fences.get(session.id)
        if fence is None:
            return False
        self._queue.append((session, Append(session.id, fence, entry_id, fields, meta), delivery))
        self._backlog[session.id] = self._backlog.get(session.id, 0) + 1
        self._idle.clear()
        self._work.set()
        return True

    # -- the writer ----------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.05
        while True:
            if not self._queue:
                self._idle.set()
                self._work.clear()
                await self._work.wait()
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            try:
                results = await self.store.append([item for _, item, _ in batch], self.ttl_ms)
            except StoreUnavailable:
                if self.failing_since is None:
                    self.failing_since = loop.time()
                    log.warning("redis: cannot write the logs of %d sessions; retrying", len(self._backlog))
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            if self.failing_since is not None:
                log.info("redis: writing again after %.1f s", loop.time() - self.failing_since)
                self.failing_since = None
            delay = 0.05
            for _ in batch:
                self._queue.popleft()
            for (session, _, delivery), result in zip(batch, results, strict=True):
                # Synchronous per entry; only a session's last entry awaits (its quota).
                if self._written(session, result, delivery):
                    try:
                        await self._on_finished(session)
                    except StoreUnavailable:
                        log.warning("session %s: could not release its quota", short_id(session.id))
                    self._settle(session)

    def _written(self, session: StreamingSession, result: str | Exception, delivery: Delivery | None) -> bool:
        """One entry is in the store (or was refused): its viewers get it. ``True`` when it
        ended the session, and the caller releases the session, then :meth:`_settle`."""
        if isinstance(result, Fenced):
            if self.fences.pop(session.id, None) is not None:
                log.warning("session %s: another process owns it now; stopping here", short_id(session.id))
                self._drop(session)
                self._on_lost(session)
            return False
        if isinstance(result, Exception):
            log.error("session %s: log write refused: %s", short_id(session.id), result)
        terminal = delivery is not None and delivery[0] in TERMINAL_EVENTS
        if delivery is not None and session.journal is self:
            session.deliver(*delivery)
        if terminal:
            self.fences.pop(session.id, None)
            return True
        self._settle(session)
        return False

    def _settle(self, session: StreamingSession) -> None:
        """One entry of ``session`` less waits: wake its pump when that frees room."""
        left = self._backlog.get(session.id, 1) - 1
        if left > 0:
            self._backlog[session.id] = left
        else:
            self._forget(session)
        if left == MAX_JOURNAL_BACKLOG - 1 or left == 0:
            session.wake()

    def _forget(self, session: StreamingSession) -> None:
        """Nothing of ``session`` waits any more: wake who waits for that."""
        self._backlog.pop(session.id, None)
        settled = self._settled.pop(session.id, None)
        if settled is not None:
            settled.set()

    def _drop(self, session: StreamingSession) -> None:
        """Forget what is still queued for a session this process lost."""
        self._queue = deque(item for item in self._queue if item[0] is not session)
        self._forget(session)

    async def flushed(self) -> None:
        """Wait until every queued entry is written (shutdown)."""
        await self._idle.wait()
