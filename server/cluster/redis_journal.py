"""The owner's write path in Redis mode: every chunk and event of the sessions this
process runs goes to their Redis logs, in order, one script call per flush for all of
them (``RedisStore.append``).

A session is never held up by Redis for the chunk at hand: its write leaves within the
same loop turn or the next, and its viewers get it once written (below). While
writes wait (Redis slow or unreachable) the provider is not read past
``MAX_JOURNAL_BACKLOG`` entries, so memory stays bounded, and nothing is dropped: the
writer retries the same entries, in order, until Redis answers; an entry sent twice is
written once (each names the entry it follows). A write refused by the fencing token
means another process owns the session now: this one stops it.

Viewers get an entry only once it is written (:meth:`StreamingSession.deliver`): what a
viewer has seen is always in the log, so a process that takes a session over after its
owner died continues exactly where every viewer stands.

Except when Redis itself loses acknowledged writes: a failover that promotes a replica
which had not received them yet (replication is asynchronous), or a restart that lost
the last second of its append-only file. The store then refuses the next write of the
session as :class:`~server.cluster.redis_store.Lost`, and this process, which still
holds every chunk and event it wrote, writes back what is missing under a new epoch,
after a ``stream-reset`` entry that tells every reader past the old end to reload the
log: every viewer gets ``stream-reset`` and the whole log again (PROTOCOL.md "Epoch"),
never two histories spliced. After a failover or an outage the writer also checks the
sessions that had nothing more to write (paused, or ended within
:data:`RECENT_SECONDS`), so that a loss at the end of a log is found too.

On a Redis Cluster a node that does not answer refuses only its own sessions' entries:
those sessions wait (:data:`MAX_PARK` at most between two tries, at once when the topology
changes) while the others' entries go on being written and delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from redis.exceptions import ResponseError

from server.cluster.redis_store import (
    RESET_EVENT,
    Append,
    Fenced,
    Lost,
    RedisStore,
    StreamId,
    format_id,
    new_epoch,
    parse_id,
)
from server.cluster.relay import reset_viewers
from server.core.errors import StoreUnavailable
from server.core.models import encode_json
from server.core.session_view import short_id
from server.core.sessions import MAX_JOURNAL_BACKLOG, Payload, StreamingSession

log = logging.getLogger(__name__)

#: Most entries written in one round trip (one script call: ``RedisStore.append``), and
#: batches in flight at once, each on a connection of its own: while one is written (Redis
#: at work, or the network), the entries of the sessions not in it go out in the next, and
#: the sessions fall into that many groups that take turns (a session's entries are never
#: in two batches at once, so they stay in order). One at a time while Redis fails.
#: bench/redis_cost.py, 1,500 sessions: chunk latency p99 134-150 ms at 2 x 1,024 against
#: 152-162 ms at 1 x 4,096 and 3 x 512 (RESULTS.md, stop 25).
#:
#: A batch goes on the append's own connection (``RedisStore.send_append``) and is
#: delivered in the callback that reads its answer; through the client (a task, which runs
#: a loop turn after the answer is read) only while that connection is not open, on a
#: Redis Cluster, and to send again what it could not answer. bench/redis_cost.py, both
#: ways in one run (half a second each): chunk made -> written p50 66 / p99 133 ms against
#: 89 / 195 ms through the client (issue 20).
BATCH = 1024
IN_FLIGHT = 2
TERMINAL_EVENTS = frozenset({"complete", "stream-error"})
#: How long an ended session's log is checked after a failover or an outage: what a
#: failover loses was written within the replicas' lag of it (seconds, with
#: ``min-replicas-max-lag``), so a minute covers it with room to spare.
RECENT_SECONDS = 60.0
#: Longest a session whose Redis Cluster node did not answer waits before its entries are
#: sent again (the delay doubles from 50 ms while the node fails).
MAX_PARK = 1.0
#: Most time between two renewals of a streaming session's keys' TTL: its keys always have
#: the TTL less this left (at most a tenth of the TTL when that is shorter).
RENEW_SECONDS = 10.0
#: Meta fields the journal writes and a repair writes back. ``request`` is not kept (it
#: can be large): a repair takes it from the session again.
_KEPT_META = frozenset({"state", "lastSeq", "resume", "finishReason", "usage", "error"})

#: An event to hand to the session's viewers once its entry is written.
Delivery = tuple[str, Payload]
_Item = tuple[StreamingSession, Append, Delivery | None]


def _resume_meta(session: StreamingSession) -> tuple[str, ...]:
    """The session's new resume point as meta fields, or none when it did not change."""
    point = session.take_resume()
    if point is None:
        return ()
    chars, checkpoint = point
    return ("resume", encode_json({"chars": chars, "checkpoint": checkpoint}))


def _chunk_fields(chunk: Payload) -> tuple[str, ...]:
    return ("c", chunk["content"], "t", str(chunk["timestamp"]), "m", encode_json(chunk["metadata"]))


@dataclass(eq=False, slots=True)
class _Track:
    """What this process wrote of one session's log: enough to find a loss after a failover
    and to write back what the store lost."""

    session: StreamingSession
    fence: str
    #: The last entry the store acknowledged.
    written: StreamId = (0, 0)
    #: The last entry id given out (queued, maybe not written yet).
    queued: StreamId = (0, 0)
    #: The events acknowledged, with their ids (chunks are in the session's chunk log).
    events: list[tuple[StreamId, tuple[str, ...]]] = field(default_factory=list)
    #: The meta fields acknowledged (:data:`_KEPT_META`).
    meta: dict[str, str] = field(default_factory=dict)
    finished_at: float | None = None
    #: When a chunk last asked for the TTL of the session's keys to be renewed (monotonic).
    renewed: float = -math.inf
    #: Set while the store has lost part of the log: the loss, and the session's entries
    #: held back until what was lost is written again.
    lost: Lost | None = None
    held: list[_Item] = field(default_factory=list)


class RedisJournal:
    """:class:`server.core.sessions.Journal` on Redis, with one writer task per process."""

    def __init__(
        self,
        store: RedisStore,
        ttl_ms: int,
        on_lost: Callable[[StreamingSession], None],
        on_finished: Callable[[Sequence[StreamingSession]], Awaitable[None]],
    ) -> None:
        self.store = store
        self.ttl_ms = ttl_ms
        #: A chunk renews its session's keys' TTL at most this often (every other entry does).
        self._renew_every = min(RENEW_SECONDS, ttl_ms / 10_000)
        self._tracks: dict[str, _Track] = {}
        self._ended: deque[tuple[float, str]] = deque()
        self._on_lost = on_lost
        self._on_finished = on_finished
        self._queue: deque[_Item] = deque()
        #: Sessions whose node did not answer (Redis Cluster), and until when they wait.
        self._parked: dict[str, float] = {}
        #: How long the next failed write waits (doubling while writes fail).
        self._delay = 0.05
        self._backlog: dict[str, int] = {}
        self._settled: dict[str, asyncio.Event] = {}
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: Releases of ended sessions under way (one per batch that ended some).
        self._releasing: set[asyncio.Task[None]] = set()
        #: Batches sent and not answered yet (:data:`IN_FLIGHT` at most), and their sessions.
        self._flying: set[asyncio.Task[None]] = set()
        #: Of those, the batches sent on the append's own connection (no task: answered in
        #: the loop callback that reads the reply, :meth:`_answered`).
        self._wired = 0
        self._sending: set[str] = set()
        #: Some session's log lost entries (:meth:`_losses`): the writer repairs it first.
        self._repairs = False
        #: A batch found Redis out of reach: the writer backs off before the next.
        self._unavailable = False
        #: What a batch's task raised that it should not have (a bug): the writer raises it.
        self._crashed: BaseException | None = None
        #: Since when writes have been failing (loop time), or ``None``.
        self.failing_since: float | None = None
        #: Losses found (the store had less than this process wrote), chunks written back
        #: from memory, and epochs changed by those repairs.
        self.losses = 0
        self.rewritten = 0
        self.epochs_changed = 0

    def own(
        self,
        session: StreamingSession,
        fence: str,
        entries: Sequence[tuple[str, dict[str, str]]] = (),
        meta: dict[str, str] | None = None,
    ) -> None:
        """This process writes ``session``'s log with ``fence`` from now on; ``entries`` and
        ``meta``: the log as this process found it (a takeover)."""
        track = _Track(session, fence)
        for entry_id, fields in entries:
            position = parse_id(entry_id)
            track.written = position
            if position[1]:
                track.events.append((position, ("e", fields["e"], "p", fields["p"])))
        if meta:
            if meta.get("head"):
                track.written = max(track.written, parse_id(meta["head"]))
            track.meta = {name: value for name, value in meta.items() if name in _KEPT_META}
        track.queued = track.written
        self._tracks[session.id] = track
        session.journal = self

    def disown(self, session_id: str) -> None:
        """This process no longer writes that session's log."""
        self._tracks.pop(session_id, None)

    def owns(self, session_id: str) -> bool:
        return session_id in self._tracks

    # -- sessions.Journal ----------------------------------------------------

    def chunk(self, session: StreamingSession, chunk: Payload) -> bool:
        seq = chunk["seq"]
        point = session.take_resume()
        if point is None:
            meta: tuple[str, ...] = ("lastSeq", str(seq))
        else:
            chars, checkpoint = point
            meta = ("lastSeq", str(seq), "resume", encode_json({"chars": chars, "checkpoint": checkpoint}))
        return self._put(session, (seq + 1, 0), _chunk_fields(chunk), meta, ("chunk", chunk), renew=False)

    def event(self, session: StreamingSession, event: str, payload: Payload) -> bool:
        track = self._tracks.get(session.id)
        if track is None:
            return False
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
        # The events after chunk N are N+1-1, N+1-2, ...: numbered here, so a retry is harmless.
        ms = session.head_seq + 1
        position = (ms, track.queued[1] + 1 if track.queued[0] == ms else 1)
        return self._put(session, position, fields, meta, (event, payload))

    def checkpoint(self, session: StreamingSession) -> None:
        meta = _resume_meta(session)
        if meta:
            self._put(session, None, (), meta, None)

    def backlog(self, session: StreamingSession) -> int:
        return self._backlog.get(session.id, 0)

    async def settled(self, session: StreamingSession) -> None:
        if session.id not in self._backlog:
            return
        await self._settled.setdefault(session.id, asyncio.Event()).wait()

    def _put(
        self,
        session: StreamingSession,
        position: StreamId | None,
        fields: tuple[str, ...],
        meta: tuple[str, ...],
        delivery: Delivery | None,
        *,
        renew: bool = True,
    ) -> bool:
        """Queue an entry (or meta fields alone); ``renew=False``: renew the session's keys'
        TTL only if the last renewal is :attr:`_renew_every` old (a chunk: the TTL is an hour
        or more, renewing it with every chunk cost Redis two commands per session and write)."""
        session_id = session.id
        track = self._tracks.get(session_id)
        if track is None:
            return False
        queued = track.queued
        after = f"{queued[0]}-{queued[1]}"
        entry_id = ""
        if position is not None:
            entry_id = f"{position[0]}-{position[1]}"
            track.queued = position
        if not renew:
            now = time.monotonic()
            renew = now - track.renewed >= self._renew_every
            if renew:
                track.renewed = now
        append = Append(session_id, track.fence, entry_id, fields, meta, after, renew)
        item = (session, append, delivery)
        if track.lost is not None:
            track.held.append(item)
        else:
            self._queue.append(item)
        backlog = self._backlog
        backlog[session_id] = backlog.get(session_id, 0) + 1
        if not self._work.is_set():
            self._idle.clear()
            self._work.set()
        return True

    # -- the writer ----------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        generation = self.store.link.generation
        self.store.link.on_switch(self._moved)
        try:
            while True:
                if self._crashed is not None:
                    raise self._crashed
                if generation != self.store.link.generation:
                    generation = self.store.link.generation
                    self._check_all()
                room = 1 if self.failing_since is not None else IN_FLIGHT
                flying = len(self._flying) + self._wired
                if flying and (self._unavailable or flying >= room):
                    # Each batch answered sets it (:meth:`_landed`, :meth:`_answered`).
                    self._work.clear()
                    await self._work.wait()
                    continue
                if self._unavailable:
                    await self._back_off(loop.time())
                    continue
                lost = (
                    [track for track in self._tracks.values() if track.lost is not None]
                    if self._repairs
                    else []
                )
                self._repairs = bool(lost)
                if lost:
                    try:
                        for track in lost:
                            await self._repair(track)
                    except StoreUnavailable:
                        await self._back_off(loop.time())
                        continue
                    self._wrote(False, loop.time())
                batch = self._next_batch(loop.time())
                if batch:
                    self._launch(batch)
                elif not lost:
                    await self._wait_for_work(loop.time())
        finally:
            for task in self._flying:
                task.cancel()

    def _launch(self, batch: list[_Item]) -> None:
        """Send a batch; its sessions' next entries wait until it is answered. On the
        append's own connection while writes go well (answered in :meth:`_answered`), else
        (or while it is not open) in a task, through the client."""
        sending = self._sending
        for item in batch:
            sending.add(item[0].id)
        if self.failing_since is None and self.store.send_append(
            [item[1] for item in batch], self.ttl_ms, lambda results: self._answered(batch, results)
        ):
            self._wired += 1
            return
        self._spawn(batch)

    def _answered(self, batch: list[_Item], results: list[str | Exception] | None) -> None:
        """A batch sent on the append's own connection is answered: deliver it here, in the
        callback that read the answer (a task would run a loop turn later). ``None``: no
        answer to trust: the batch goes again through the client, in a task."""
        self._wired -= 1
        try:
            if results is None:
                self._spawn(batch)
                return
            sending = self._sending
            for item in batch:
                sending.discard(item[0].id)
            self._unqueue(batch)
            self._wrote(False, asyncio.get_running_loop().time())
            self._deliver(batch, results)
        except Exception as exc:  # a bug: the writer raises it
            self._crashed = exc
        finally:
            self._work.set()

    def _spawn(self, batch: list[_Item]) -> None:
        """Write a batch in a task, through the client (:meth:`_write`)."""
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._flying.add(task)
        task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._flying.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._crashed = task.exception()
        self._work.set()

    async def _write(self, batch: list[_Item]) -> None:
        """Write a batch through the client, then deliver it (or, Redis out of reach, leave
        it queued for the writer to send again); then, while all goes well, send the next.

        After delivering, the task lets the loop run once before it looks at the queue: the
        flushes that the deliveries scheduled run first, so the chunks they make leave in
        this loop turn instead of the next (a turn of a busy loop is tens of milliseconds).
        """
        loop = asyncio.get_running_loop()
        generation = self.store.link.generation
        try:
            results = await self.store.append([item[1] for item in batch], self.ttl_ms)
        except StoreUnavailable:
            self._unavailable = True
            return
        finally:
            sending = self._sending
            for item in batch:
                sending.discard(item[0].id)
        self._unqueue(batch)
        batch, results, refused = self._park_unwritten(batch, results, loop.time() + self._delay)
        self._wrote(refused, loop.time())
        self._deliver(batch, results)
        await asyncio.sleep(0)
        if (
            self.failing_since is not None
            or self._repairs
            or self._unavailable
            or generation != self.store.link.generation
        ):
            return
        batch = self._next_batch(loop.time())
        if batch:
            self._launch(batch)

    async def _back_off(self, now: float) -> None:
        """Redis did not answer: wait before the next try (less when the primary moves)."""
        self._unavailable = False
        self._failing(now)
        await self.store.link.switched(self._delay)
        self._delay = min(1.0, self._delay * 2)

    def _wrote(self, refused: bool, now: float) -> None:
        """A write was answered; ``refused``: some of its sessions' nodes did not take it."""
        if refused:
            self._failing(now)
            self._delay = min(MAX_PARK, self._delay * 2)
            return
        self._delay = 0.05
        if self.failing_since is not None and not self._parked:
            log.info("redis: writing again after %.1f s", now - self.failing_since)
            self.failing_since = None
            # Redis was out of reach: it may have come back with less than it had.
            self._check_all()

    def _failing(self, now: float) -> None:
        if self.failing_since is None:
            self.failing_since = now
            log.warning("redis: cannot write the logs of %d sessions; retrying", len(self._backlog))

    def _moved(self) -> None:
        """The primary moved (a Sentinel or Redis Cluster failover): try every session now,
        and soon again if the client has not seen the move yet."""
        self._parked.clear()
        self._delay = 0.05
        self._work.set()

    def _next_batch(self, now: float) -> list[_Item]:
        """The entries to send next, in order: the first :data:`BATCH`, but none of a
        session that has a batch in flight (its entries stay in order) or that waits for
        its node (:meth:`_park_unwritten`)."""
        for session_id, until in tuple(self._parked.items()):
            if until <= now:
                del self._parked[session_id]
        queue = self._queue
        if not self._parked and not self._sending:
            return [queue[i] for i in range(min(BATCH, len(queue)))]
        batch = []
        parked, sending = self._parked, self._sending
        for item in queue:
            session_id = item[0].id
            if session_id not in sending and session_id not in parked:
                batch.append(item)
                if len(batch) == BATCH:
                    break
        return batch

    async def _wait_for_work(self, now: float) -> None:
        """Nothing to send: wait for entries, for a batch in flight to be answered (its
        sessions' next entries may go then), or until a parked session may be tried again."""
        self._work.clear()
        if not self._queue and not self._flying and not self._wired:
            self._idle.set()
        if not self._queue or not self._parked:
            await self._work.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(self._parked.values()) - now)):
                await self._work.wait()

    def _unqueue(self, batch: list[_Item]) -> None:
        """Take the entries just sent out of the queue (what a repair put in front of them,
        and what came in meanwhile, stays)."""
        taken = 0
        while taken < len(batch) and self._queue and self._queue[0] is batch[taken]:
            self._queue.popleft()
            taken += 1
        if taken < len(batch):
            sent = {id(item) for item in batch[taken:]}
            self._queue = deque(item for item in self._queue if id(item) not in sent)

    def _park_unwritten(
        self, batch: list[_Item], results: list[str | Exception], until: float
    ) -> tuple[list[_Item], list[str | Exception], bool]:
        """Entries whose node did not answer (Redis Cluster: the others went in) go back to
        the front of the queue, in order, and their sessions wait until ``until``; the rest
        of the batch and its results, and whether some did not go in."""
        if not any(isinstance(result, StoreUnavailable) for result in results):
            return batch, results, False
        kept: list[_Item] = []
        answers: list[str | Exception] = []
        unwritten: list[_Item] = []
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, StoreUnavailable):
                unwritten.append(item)
                self._parked[item[0].id] = until
            else:
                kept.append(item)
                answers.append(result)
        self._queue.extendleft(reversed(unwritten))
        return kept, answers, True

    def _deliver(self, batch: list[_Item], results: list[str | Exception]) -> None:
        """A batch is written (or refused): its entries go to their viewers, except those of
        the sessions whose log the store lost part of (:meth:`_losses`); the sessions it
        ended are released (:meth:`_release`)."""
        found: set[str] = set()
        for result in results:
            if type(result) is not str:
                found = self._losses(batch, results)
                break
        ended = [
            item[0]
            for item, result in zip(batch, results, strict=True)
            if item[0].id not in found and self._written(item, result)
        ]
        if ended:
            self._release(ended)

    def _release(self, sessions: list[StreamingSession]) -> None:
        """Release ended sessions (their users' quota) in one round trip, beside the writer:
        the writer goes on while it is under way, and they settle once it is done."""
        task = asyncio.get_running_loop().create_task(self._released(sessions))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _released(self, sessions: list[StreamingSession]) -> None:
        try:
            await self._on_finished(sessions)
        except StoreUnavailable:
            log.warning(
                "could not release the quota of %d sessions (session %s, ...)",
                len(sessions),
                short_id(sessions[0].id),
            )
        for session in sessions:
            self._settle(session)

    def _losses(self, batch: list[_Item], results: list[str | Exception]) -> set[str]:
        """The sessions whose log the store lost part of: their entries are held back (the
        ones of this batch first) until :meth:`_repair` has written the lost part again."""
        found: dict[str, Lost] = {}
        for (session, _, _), result in zip(batch, results, strict=True):
            if isinstance(result, Lost) and session.id not in found:
                found[session.id] = result
        for session_id, lost in found.items():
            track = self._tracks.get(session_id)
            if track is None:
                continue
            track.lost = lost
            track.held = [item for item in batch if item[0].id == session_id] + [
                item for item in self._queue if item[0].id == session_id
            ]
            self._repairs = True
            self._queue = deque(item for item in self._queue if item[0].id != session_id)
        return set(found)

    def _written(self, item: _Item, result: str | Exception) -> bool:
        """One entry is in the store (or was refused): its viewers get it. ``True`` when it
        ended the session, and the caller releases the session, then :meth:`_settle`."""
        session, append, delivery = item
        track = self._tracks.get(session.id)
        if isinstance(result, Fenced):
            if track is not None:
                self._fenced(track)
            return False
        if isinstance(result, Exception):
            log.error("session %s: log write refused: %s", short_id(session.id), result)
        elif track is not None:
            self._acknowledged(track, append)
        terminal = delivery is not None and delivery[0] in TERMINAL_EVENTS
        if delivery is not None and session.journal is self:
            session.deliver(*delivery)
        if terminal and track is not None and track.finished_at is None:
            now = asyncio.get_running_loop().time()
            track.finished_at = now
            self._ended.append((now, session.id))
            self._forget_ended(now)
            return True
        self._settle(session)
        return False

    def _fenced(self, track: _Track) -> None:
        """Another process owns the session now: stop writing it (and, live, running it)."""
        session = track.session
        self._tracks.pop(session.id, None)
        self._drop(session)
        if track.finished_at is None:
            log.warning("session %s: another process owns it now; stopping here", short_id(session.id))
            self._on_lost(session)

    @staticmethod
    def _acknowledged(track: _Track, append: Append) -> None:
        if append.entry_id:
            position = parse_id(append.entry_id)
            track.written = max(track.written, position)
            if position[1]:
                track.events.append((position, tuple(append.fields)))
        meta = append.meta
        for index in range(0, len(meta), 2):
            if meta[index] in _KEPT_META:
                track.meta[meta[index]] = meta[index + 1]

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

    def _forget_ended(self, now: float) -> None:
        """Stop checking the sessions that ended more than :data:`RECENT_SECONDS` ago."""
        while self._ended and now - self._ended[0][0] > RECENT_SECONDS:
            _, session_id = self._ended.popleft()
            track = self._tracks.get(session_id)
            if track is not None and track.finished_at is not None:
                del self._tracks[session_id]

    async def flushed(self) -> None:
        """Wait until every queued entry is written and every ended session released
        (shutdown)."""
        while True:
            await self._idle.wait()
            if not self._releasing:
                return
            await asyncio.wait(tuple(self._releasing))

    # -- losses --------------------------------------------------------------

    def _check_all(self) -> None:
        """After a failover or an outage: check every log this process writes (and those
        that ended lately), so that a loss is found even where nothing more is written."""
        self._forget_ended(asyncio.get_running_loop().time())
        for track in tuple(self._tracks.values()):
            if track.lost is None:
                self._put(track.session, None, (), (), None)

    async def _repair(self, track: _Track) -> None:
        """Write back what the store lost of a session, from this process's memory, under
        a new epoch; then tell this process's viewers and release the held entries."""
        lost = track.lost
        session = track.session
        assert lost is not None
        head = lost.head
        # A reader that found the loss first gave the session its new epoch: keep that one.
        epoch = lost.epoch if lost.flagged and lost.epoch else new_epoch()
        reset = (
            "e",
            RESET_EVENT,
            "p",
            encode_json({"sessionId": session.id, "epoch": epoch, "lastSeq": session.last_seq}),
        )
        missing = [
            *(
                ((seq + 1, 0), _chunk_fields(chunk))
                for seq, chunk in enumerate(session.chunks.iter_from(head[0]), head[0])
            ),
            *(
                (position, fields)
                for position, fields in track.events
                if position > head and fields[1] != RESET_EVENT
            ),
        ]
        missing.sort(key=lambda entry: entry[0])
        entries = _renumbered(head, [(None, reset), *((position, fields) for position, fields in missing)])
        meta = dict(track.meta)
        if session.conversation is not None and "state" in meta and meta["state"] != "created":
            meta["request"] = session.conversation.to_json()
        try:
            answer = await self.store.repair(
                session.id,
                track.fence,
                format_id(head),
                lost.epoch,
                epoch,
                meta,
                [(format_id(position), fields) for position, fields in entries],
                self.ttl_ms,
            )
        except ResponseError as exc:
            # The session's keys are not ours to repair (a wrong type): stop logging it.
            log.error("session %s: cannot write its lost log back: %s", short_id(session.id), exc)
            answer = "FENCED"
        if answer == "FENCED":
            self._fenced(track)
            return
        if answer.startswith("HEAD "):
            # The log moved meanwhile (another failover): start again from where it ends now.
            track.lost = Lost(answer[5:], lost.epoch, lost.flagged)
            return
        if answer.startswith("EPOCH "):
            # A reader found the loss too and gave the session its new epoch: take that one.
            track.lost = Lost(format_id(head), answer[6:] or None, True)
            return
        chunks = sum(1 for position, _ in entries if position[1] == 0)
        log.warning(
            "session %s: the store lost its log after %s; wrote %d chunks back from memory, epoch %s -> %s",
            short_id(session.id),
            format_id(head),
            chunks,
            session.epoch,
            epoch,
            extra={"session": short_id(session.id)},
        )
        self.losses += 1
        self.rewritten += chunks
        if epoch != session.epoch:
            self.epochs_changed += 1
        track.written = entries[-1][0]
        track.events = [
            *((position, fields) for position, fields in track.events if position <= head),
            *((position, fields) for position, fields in entries[1:] if position[1]),
        ]
        reset_viewers(session, epoch)
        held, track.held, track.lost = track.held, [], None
        rest: list[_Item] = []
        for item in held:
            if item[1].entry_id and parse_id(item[1].entry_id) <= head:
                # Written by an attempt whose answer never came back, and kept by the store.
                if self._written(item, item[1].entry_id):
                    self._release([item[0]])
            else:
                rest.append(item)
        self._queue = deque([*self._renumbered_items(track, rest, epoch), *self._queue])

    def _renumbered_items(self, track: _Track, held: list[_Item], epoch: str) -> list[_Item]:
        """Held entries numbered on from the repaired log's end (the ``stream-reset`` took an
        event id), their ``stream-state`` payloads with the new epoch."""
        items: list[_Item] = []
        position = track.written
        for session, append, delivery in held:
            after = format_id(position)
            if not append.entry_id:
                items.append((session, append._replace(after=after), delivery))
                continue
            original = parse_id(append.entry_id)
            position = original if original[1] == 0 else (position[0], position[1] + 1)
            fields = append.fields
            if delivery is not None and delivery[0] == "stream-state":
                delivery = (delivery[0], {**delivery[1], "epoch": epoch})
                fields = ("e", delivery[0], "p", encode_json(delivery[1]))
            renumbered = append._replace(entry_id=format_id(position), after=after, fields=fields)
            items.append((session, renumbered, delivery))
        track.queued = position
        return items


def _renumbered(
    head: StreamId, entries: list[tuple[StreamId | None, tuple[str, ...]]]
) -> list[tuple[StreamId, tuple[str, ...]]]:
    """Ids for ``entries`` after ``head``: a chunk keeps its own (``seq+1``-0), an event
    takes the next one after what precedes it."""
    out = []
    position = head
    for original, fields in entries:
        position = original if original is not None and original[1] == 0 else (position[0], position[1] + 1)
        out.append((position, fields))
    return out
