"""Viewers of sessions that run in another process (Redis mode).

A :class:`RelayedSession` is this process's view of a session owned elsewhere: built from
the session's Redis log, it replays like the owner's session does and then stays live on
what the :class:`Relay` reads. The relay is one task and one blocking ``XREAD`` for every
log this process's viewers watch, so a thousand remote sessions cost one loop, not a
thousand (on a Redis Cluster, where ``XREAD`` cannot block on logs of several slots: the
logs announced written, one ``XREAD`` per slot, see :mod:`server.cluster.redis_cluster`).
A relayed session whose viewer lags is left out of the read until the viewer catches up
(or is dropped after ``VIEWER_STALL_TIMEOUT``), with the same
:class:`~server.core.emitter.ViewerSet` rules as the owner's; what it has not read waits in
Redis, not in this process.

A failover can leave the store with less than a relay already delivered (a replica
promoted before it had the last writes). After a failover or an outage the relay checks
each log it reads against what it delivered (:meth:`Relay._validate`): a log whose epoch
changed is read again whole, and every viewer gets ``stream-reset`` and the whole log
(PROTOCOL.md "Epoch"); a log that no longer has the entry the relay stood at gets a new
epoch first (:meth:`RedisStore.mark_lost`), so that its owner writes back what it still
has under that epoch. A ``stream-reset`` entry in the log (an owner's repair) does the
same for a relay that had not got that far.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from providers.base import StreamConfig, Usage
from server.cluster.redis_store import RESET_EVENT, RedisStore, log_key, parse_id
from server.core.chunklog import ChunkLog, LogBudget
from server.core.commands import Ack
from server.core.emitter import FlowLimits, ViewerSet
from server.core.errors import StoreUnavailable
from server.core.prompting import Conversation
from server.core.session_view import SessionState, SessionView, short_id
from server.core.sessions import Viewer

log = logging.getLogger(__name__)

#: Entries read per log and per ``XREAD`` (a lagging viewer gets at most this many more).
READ_COUNT = 64
BLOCK_MS = 1000

Entry = tuple[str, dict[str, str]]
Forward = Callable[["RelayedSession", str, dict[str, Any]], Awaitable[Ack]]


def config_from_meta(raw: str) -> StreamConfig:
    """The session's config as registered; what a start asked (system, history, task)
    comes from the ``request`` field instead (:class:`Conversation`)."""
    fields = orjson.loads(raw)
    fields.pop("history", None)
    fields.pop("task", None)
    return StreamConfig(**fields)


def reset_viewers(view: SessionView, epoch: str, viewers: tuple[Viewer, ...] | None = None) -> None:
    """``view``'s log has another history now (``epoch``): each viewer (its own, or the
    ``viewers`` it is given back) gets ``stream-reset`` and then the whole log, as one that
    reconnects with another epoch does."""
    view.epoch = epoch
    for viewer in tuple(view.viewers.values()) if viewers is None else viewers:
        # A lastSeq beyond the log always resets, whatever epoch the viewer knew.
        view.add_viewer(viewer, view.last_seq + 1)


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


class RelayedSession(SessionView):
    """A session owned by another process, as this process's viewers see it."""

    def __init__(
        self,
        meta: dict[str, str],
        session_id: str,
        limits: FlowLimits,
        relay: Relay,
        forward: Forward,
        on_unused: Callable[[RelayedSession], None],
        log_budget: LogBudget | None = None,
    ) -> None:
        super().__init__(
            session_id,
            meta["userId"],
            config_from_meta(meta["config"]),
            # Held weakly: a mirror no one uses any more is freed at once (no cycle).
            ViewerSet(short_id(session_id), limits, _weakly(self._caught_up)),
            epoch=meta["epoch"],
            created_at=float(meta["createdAt"]),
            log_budget=log_budget,
        )
        self._from_meta(meta)
        self.cursor = "0-0"
        #: The fields of the entry at the cursor, to compare with the store's after a failover.
        self.at_cursor: dict[str, str] | None = None
        #: The log has another history than this view (a ``stream-reset`` entry, or its
        #: chunks do not follow): to be read again whole before anything else is applied.
        self.stale = False
        self._relay = relay
        self._forward = forward
        self._on_unused = on_unused
        self._watched = False

    def _from_meta(self, meta: dict[str, str]) -> None:
        self.epoch = meta["epoch"]
        self.state = SessionState(meta.get("state", "created"))
        self.owner = meta.get("owner", "")
        if "request" in meta:
            self.conversation = Conversation.from_json(meta["request"])

    # -- the log -------------------------------------------------------------

    def apply(self, entries: list[Entry], *, live: bool = True) -> None:
        """Entries read from the log, in order; those already applied are skipped. ``live``:
        read as they come (not a whole log being loaded), where a ``stream-reset`` entry or
        a chunk that does not follow makes the view :attr:`stale`."""
        cursor = parse_id(self.cursor)
        for entry_id, fields in entries:
            position = parse_id(entry_id)
            if self.stale:
                return
            if position <= cursor:
                continue
            if position[1] == 0 and position[0] - 1 != len(self.chunks):
                self.stale = True
                return
            if (
                live
                and position[1]
                and fields.get("e") == RESET_EVENT
                and orjson.loads(fields["p"]).get("epoch") != self.epoch
            ):
                self.stale = True
                return
            cursor = position
            self.cursor = entry_id
            self.at_cursor = fields
            if position[1] == 0:
                self._apply_chunk(position[0] - 1, fields)
            elif fields["e"] != RESET_EVENT:
                self._apply_event(fields["e"], orjson.loads(fields["p"]))

    def reload(self, meta: dict[str, str], entries: list[Entry]) -> None:
        """The log has another history now: rebuild this view from it, and every viewer gets
        ``stream-reset`` and the whole log."""
        viewers = tuple(self.viewers.values())
        self.viewers.clear()
        budget = self.chunks.budget
        self.chunks.release()
        self.chunks = ChunkLog(self.id, budget)
        self.usage = None
        self.finish_reason = None
        self.error = None
        self._terminal_event = None
        self.cursor = "0-0"
        self.at_cursor = None
        self.stale = False
        self._from_meta(meta)
        self.apply(entries, live=False)
        reset_viewers(self, self.epoch, viewers)

    def _apply_chunk(self, seq: int, fields: dict[str, str]) -> None:
        chunk = {
            "content": fields["c"],
            "timestamp": int(fields["t"]),
            "metadata": orjson.loads(fields["m"]),
            "seq": seq,
            "sessionId": self.id,
        }
        self.chunks.append(chunk)
        self.viewer_set.broadcast("chunk", chunk)

    def _apply_event(self, event: str, payload: dict[str, Any]) -> None:
        if event == "stream-state":
            self.state = SessionState(payload["state"])
        elif event == "complete":
            self.finish_reason = payload.get("finishReason")
            usage = payload.get("usage")
            self.usage = Usage(usage["promptTokens"], usage["completionTokens"]) if usage else None
            self._terminal_event = (event, payload)
        elif event == "stream-error":
            self.error = {"code": payload["code"], "error": payload["error"]}
            self._terminal_event = (event, payload)
        if self._terminal_event is not None:
            self.chunks.seal()
        self.viewer_set.broadcast(event, payload)

    @property
    def ended(self) -> bool:
        """The log holds its ``complete`` or ``stream-error``: nothing follows."""
        return self._terminal_event is not None

    def fail_locally(self, code: str, message: str) -> None:
        """The log itself is gone (the store lost it): tell the viewers, write nothing."""
        if self._terminal_event is None:
            self.state = SessionState.FAILED
            payload = {"sessionId": self.id, "error": message, "code": code}
            self._terminal_event = ("stream-error", payload)
            self.viewer_set.broadcast("stream-error", payload)

    # -- viewers -------------------------------------------------------------

    def add_viewer(
        self, viewer: Viewer, last_seq: int | None = None, *, epoch: str | None = None, snapshot: bool = False
    ) -> dict[str, Any]:
        position = super().add_viewer(viewer, last_seq, epoch=epoch, snapshot=snapshot)
        if not self._watched and not self.ended:
            self._watched = True
            self._relay.watch(self)
        return position

    def remove_viewer(self, key: str) -> None:
        super().remove_viewer(key)
        if not self.viewers:
            self._relay.unwatch(self)
            self._watched = False
            self._on_unused(self)

    def _caught_up(self) -> None:
        self._relay.resume(self)

    # -- commands ------------------------------------------------------------

    async def forward(self, action: str, **extra: Any) -> Ack:
        """Run a command where the provider runs; the ack comes back from there."""
        return await self._forward(self, action, extra)


class Relay:
    """One ``XREAD`` loop feeding every :class:`RelayedSession` of this process.

    ``on_suspect`` is called when the store may have lost writes (after a failover or an
    outage), for whoever keeps views that the relay does not read."""

    def __init__(
        self, store: RedisStore, wake_key: str, on_suspect: Callable[[], None] = lambda: None
    ) -> None:
        self.store = store
        self._on_suspect = on_suspect
        self._sessions: dict[str, RelayedSession] = {}
        self._held: set[str] = set()
        self._reads = store.stream_reads(wake_key)

    def watch(self, session: RelayedSession) -> None:
        self._sessions[log_key(session.id)] = session
        self._poke()

    def unwatch(self, session: RelayedSession) -> None:
        self._sessions.pop(log_key(session.id), None)
        self._held.discard(log_key(session.id))

    def hold(self, session: RelayedSession) -> None:
        self._held.add(log_key(session.id))

    def resume(self, session: RelayedSession) -> None:
        key = log_key(session.id)
        if key in self._held:
            self._held.discard(key)
            self._poke()

    def _poke(self) -> None:
        """Wake the blocked read so that it reads the new set of logs."""
        task = asyncio.get_running_loop().create_task(self._wake())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _wake(self) -> None:
        # If Redis is down the read loop is failing too, and reads everything once it is back.
        with contextlib.suppress(StoreUnavailable):
            await self.store.wake(self._reads)

    async def run(self) -> None:
        delay = 0.1
        generation = self.store.link.generation
        # Checked before the first read: a failover may have happened before this started.
        suspect = False
        # Some logs wait for a node that does not answer (Redis Cluster) while the others
        # are read: once it answers, the logs are checked as after an outage.
        incomplete = False
        while True:
            try:
                if suspect or generation != self.store.link.generation:
                    generation = self.store.link.generation
                    await self._validate()
                    suspect = False
                streams = {
                    key: session.cursor for key, session in self._sessions.items() if key not in self._held
                }
                result = await self.store.read(self._reads, streams, BLOCK_MS, READ_COUNT)
            except StoreUnavailable:
                suspect = True
                await self.store.link.switched(delay)
                delay = min(2.0, delay * 2)
                continue
            if self._reads.incomplete:
                incomplete = True
            elif incomplete:
                incomplete = False
                suspect = True
            delay = 0.1
            stale = []
            for key, entries in result:
                watched = self._sessions.get(key)
                if watched is None:
                    continue
                watched.apply(entries)
                if watched.stale:
                    self.hold(watched)
                    stale.append(watched)
                else:
                    self._after_read(watched)
            for watched in stale:
                try:
                    await self._reload(watched)
                except StoreUnavailable:
                    suspect = True

    def _after_read(self, session: RelayedSession) -> None:
        if session.ended:
            self.unwatch(session)
        elif session.viewer_set.lagging():
            self.hold(session)
            session.viewer_set.hold()

    async def _reload(self, session: RelayedSession) -> None:
        """Read a log with another history again whole; its viewers start over."""
        loaded = await self.store.load(session.id)
        if loaded is None:
            session.fail_locally("unavailable", "The session store lost this stream")
            self.unwatch(session)
            return
        meta, entries = loaded
        log.warning(
            "session %s: its log has another history (epoch %s -> %s); its viewers here start over",
            short_id(session.id),
            session.epoch,
            meta["epoch"],
            extra={"session": short_id(session.id)},
        )
        session.reload(meta, entries)
        self._held.discard(log_key(session.id))
        self._after_read(session)
        self._poke()

    async def _validate(self) -> None:
        """After a failover or an outage: is each log still what its viewers here were
        given? A log whose epoch changed is read again; one that lost the entry this relay
        stood at (or has other text there) gets a new epoch first, so that its owner writes
        back what it still has; a log that is gone ends for its viewers here."""
        self._on_suspect()
        watched = list(self._sessions.values())
        if not watched:
            return
        positions = await self.store.positions([(session.id, session.cursor) for session in watched])
        for session, position in zip(watched, positions, strict=True):
            if position.epoch is None:
                session.fail_locally("unavailable", "The session store lost this stream")
                self.unwatch(session)
            elif position.epoch != session.epoch:
                await self._reload(session)
            elif session.at_cursor is not None and position.at_cursor != session.at_cursor:
                log.warning(
                    "session %s: the store lost what its viewers here were given (after %s)",
                    short_id(session.id),
                    session.cursor,
                    extra={"session": short_id(session.id)},
                )
                if await self.store.mark_lost(session.id, session.epoch) is None:
                    session.fail_locally("unavailable", "The session store lost this stream")
                    self.unwatch(session)
                else:
                    await self._reload(session)
