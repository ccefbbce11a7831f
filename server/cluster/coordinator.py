"""Several processes as one server, through Redis (``REDIS_URL``, ``REDIS_SENTINELS`` or
``REDIS_CLUSTER_URL``).

Each process owns the sessions it creates: it runs their providers, keeps them in memory
like a single process does, and writes their logs to Redis (:mod:`server.cluster.redis_journal`).
Any other process can serve any request for them:

- viewers anywhere read the log through this process's relay (:mod:`server.cluster.relay`);
- ``start``, ``pause``, ``resume`` and ``cancel`` are sent to the owner over its pub/sub
  inbox, and the ack comes back only once the owner has acted;
- ``GET`` and chunk pages read the session from Redis.

A process holds a lease (``proc:{pid}``, ``OWNER_LEASE_SECONDS``) that it renews. When a
lease lapses, the other processes' watchdogs claim the dead process's sessions, one
process per session (the claim is a script on the fencing token, so the old owner, if it
was only frozen, can no longer append): a session not started yet is adopted and stays
usable; a live one whose provider can resume (:class:`providers.base.ResumableProvider`)
continues here from the log's end with the next ``seq``, paused if it was; any other live
one ends with ``stream-error`` ``owner_lost``, its logged chunks intact. On SIGTERM a
process hands its resumable streams over this way at once (:meth:`Cluster.hand_over`).
With no process alive the sessions wait in Redis for the first one that starts, for at
most ``OWNER_LOST_AFTER``.

When Redis itself was out of reach or moved (an outage, a Sentinel failover), every
process's lease may have lapsed meanwhile, or been renewed on a primary that is gone: a
process claims nothing until a lease after it reaches Redis again or sees the new primary,
so that the others, alive, renew theirs first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from server.cluster.redis_cluster import raise_if_cancelling
from server.cluster.redis_journal import RedisJournal
from server.cluster.redis_store import CLUSTER_CHANNEL, RedisStore, RedisTarget, now_ms
from server.cluster.relay import Entry, Relay, RelayedSession, config_from_meta
from server.core.commands import Ack, Action, error_ack, session_command, start_command
from server.core.errors import StoreUnavailable
from server.core.models import encode_json
from server.core.prompting import Conversation
from server.core.session_view import SessionState, short_id
from server.core.sessions import StreamingSession
from server.guards.logs import REQUEST_ID, well_formed_request_id
from server.guards.metrics import TAKEOVERS
from server.settings import Settings

if TYPE_CHECKING:
    from server.core.manager import StreamingSessionManager

log = logging.getLogger(__name__)

OWNER_LOST = "The process running this stream stopped"


class Cluster:
    """This process's part in a Redis-backed group of server processes."""

    def __init__(self, settings: Settings, manager: StreamingSessionManager) -> None:
        self.settings = settings
        self.manager = manager
        self.pid = secrets.token_hex(6)
        self.store = RedisStore(
            RedisTarget.from_settings(settings),
            timeout=settings.redis_timeout,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )
        self.lease_ms = int(settings.owner_lease_seconds * 1000)
        self.ttl_ms = int((settings.session_ttl + settings.session_idle_timeout) * 1000)
        self.journal = RedisJournal(self.store, self.ttl_ms, self._lost, self._finished)
        self.relay = Relay(self.store, f"proc:{{{self.pid}}}:wake", self._forget_idle)
        self._mirrors: dict[str, RelayedSession] = {}
        self._loading: dict[str, asyncio.Future[RelayedSession | None]] = {}
        self._replies: dict[str, asyncio.Future[Ack]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set once the inbox is subscribed (commands sent to this process arrive).
        self.listening = asyncio.Event()
        #: Set when a process announces it stopped: the watchdog looks at once.
        self._look = asyncio.Event()
        self._lease_tasks: list[asyncio.Task[None]] = []
        #: When this process last reached Redis again after failing to (loop time), and
        #: whether it fails now: the watchdog waits a lease after that.
        self._reached_again = -float("inf")
        self._unreachable = False

    # -- lifetime ------------------------------------------------------------

    async def run(self) -> AsyncIterator[None]:
        """The background loops for the app's lifetime (an ``app.cleanup_ctx`` body)."""
        loop = asyncio.get_running_loop()
        self.store.link.on_switch(self._primary_moved)
        self._lease_tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._watchdog())]
        background = [
            loop.create_task(self.store.link.follow()),
            loop.create_task(self.journal.run()),
            loop.create_task(self.relay.run()),
            loop.create_task(self._inbox()),
        ]
        log.info("redis mode: process %s, lease %.1f s", self.pid, self.settings.owner_lease_seconds)
        yield
        await self.leave()
        await _stop(background)
        await self.store.close()

    async def leave(self) -> None:
        """Stop renewing the lease and taking sessions over, and let the others claim what
        this process still owns, now."""
        await _stop(self._lease_tasks)
        with contextlib.suppress(StoreUnavailable):
            await self.store.leave(self.pid)

    async def hand_over(self) -> None:
        """Shutdown: stop every live stream that another process can resume without
        ending it (the rest end with ``shutdown``), and write their logs to the end; the
        others claim them, and the sessions not started yet, as soon as this process
        leaves (:meth:`leave`)."""
        handed = [
            session
            for session in tuple(self.manager.registry)
            if session.is_live and (session.state is SessionState.CREATED or session.resume_point is not None)
        ]
        await asyncio.gather(*(session.hand_over() for session in handed))
        if handed:
            log.info("handing %d live streams over to the other processes", len(handed))

    async def flushed(self, within: float) -> None:
        """Wait (at most ``within`` seconds) until every log entry of this process is written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.journal.flushed()

    async def written(self) -> None:
        """Wait until every log entry of this process is written."""
        await self.journal.flushed()

    async def not_ready(self, ping_within: float) -> str | None:
        """Why this process cannot take sessions now (``/readyz``), or ``None`` when it can."""
        if not self.listening.is_set():
            return "Not subscribed to the cluster's command channel (Redis)"
        try:
            async with asyncio.timeout(ping_within):
                await self.store.ping()
        except (StoreUnavailable, TimeoutError):
            return "The session store (Redis) does not answer"
        return None

    # -- sessions ------------------------------------------------------------

    async def register(self, session: StreamingSession) -> bool:
        """Store a new session owned by this process; ``False`` when its user's quota is full."""
        settings = self.settings
        if not await self.store.reserve(
            session.user_id, session.id, settings.max_sessions_per_user, self.ttl_ms
        ):
            return False
        meta = {
            "userId": session.user_id,
            "config": encode_json(dataclasses.asdict(session.config)),
            "createdAt": repr(session.created_at),
            "state": session.state.value,
            "epoch": session.epoch,
            "lastSeq": "-1",
        }
        await self.store.put_session(session.id, meta, self.pid, self.ttl_ms)
        self.journal.own(session, "1")
        return True

    async def find(self, session_id: str) -> RelayedSession | None:
        """This process's view of a session owned elsewhere, up to date with its log."""
        mirror = self._mirrors.get(session_id)
        if mirror is not None:
            if not mirror.ended:
                mirror.apply(await self.store.entries_after(session_id, mirror.cursor))
            if mirror.stale:
                loaded = await self.store.load(session_id)
                if loaded is None:
                    return None
                mirror.reload(*loaded)
            return mirror
        pending = self._loading.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[RelayedSession | None] = asyncio.get_running_loop().create_future()
        self._loading[session_id] = future
        try:
            mirror = await self._load(session_id)
            future.set_result(mirror)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters re-raise it
            raise
        finally:
            del self._loading[session_id]
        return mirror

    async def _load(self, session_id: str) -> RelayedSession | None:
        loaded = await self.store.load(session_id)
        if loaded is None:
            return None
        mirror = self._mirror(session_id, *loaded)
        self._mirrors[session_id] = mirror
        return mirror

    async def conversation(self, session_id: str) -> Conversation | None:
        meta = await self.store.meta(session_id)
        raw = meta.get("request") if meta else None
        return Conversation.from_json(raw) if raw else None

    def mirrors(self) -> Iterable[RelayedSession]:
        """This process's views of sessions owned elsewhere (their viewers are here)."""
        return tuple(self._mirrors.values())

    def _mirror(self, session_id: str, meta: dict[str, str], entries: list[Entry]) -> RelayedSession:
        mirror = RelayedSession(
            meta,
            session_id,
            self.manager.limits,
            self.relay,
            self._forward,
            self._unused,
            self.manager.log_budget,
        )
        mirror.apply(entries, live=False)
        return mirror

    def _forget_idle(self) -> None:
        """The store may have lost writes: views that no viewer holds are read again when
        next asked for, not trusted."""
        for mirror in tuple(self._mirrors.values()):
            if not mirror.viewers:
                self._unused(mirror)

    def _unused(self, mirror: RelayedSession) -> None:
        if self._mirrors.get(mirror.id) is mirror:
            del self._mirrors[mirror.id]
            mirror.chunks.release()

    def _restore(self, session_id: str, meta: dict[str, str], entries: list[Entry]) -> StreamingSession:
        """A session of a dead process, rebuilt here from its Redis log."""
        config = config_from_meta(meta["config"])
        session = self.manager.new_session(
            session_id, meta["userId"], config, epoch=meta["epoch"], created_at=float(meta["createdAt"])
        )
        mirror = self._mirror(session_id, meta, entries)
        session.restore(mirror.chunks, mirror.state, mirror.usage)
        if mirror.conversation is not None:
            session.adopt(mirror.conversation)
        return session

    # -- commands between processes ------------------------------------------

    async def _forward(self, mirror: RelayedSession, action: str, extra: dict[str, Any]) -> Ack:
        """Send a command to the session's owner and wait for its ack."""
        owner = await self.store.owner(mirror.id)
        if owner is None:
            return error_ack("Session not found")
        if owner == self.pid:
            local = self.manager.registry.get(mirror.id)
            if local is not None:
                return await self._apply(local, action, extra)
        request = secrets.token_hex(8)
        reply: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._replies[request] = reply
        message = {"op": "command", "id": request, "from": self.pid, "session": mirror.id, "action": action}
        request_id = REQUEST_ID.get()
        if request_id is not None:
            # The owner's log lines about this command (and the stream it starts) carry it.
            message["requestId"] = request_id
        try:
            if not await self.store.publish(owner, encode_json({**message, **extra})):
                return error_ack("The process running this stream is unreachable")
            async with asyncio.timeout(self.settings.redis_timeout + 10):
                return await reply
        except TimeoutError:
            return error_ack("The process running this stream did not answer")
        finally:
            self._replies.pop(request, None)

    async def _apply(self, session: StreamingSession, action: str, extra: dict[str, Any]) -> Ack:
        if action == "start":
            raw = extra.get("conversation")
            conversation = Conversation.from_json(raw) if isinstance(raw, str) else None
            return await start_command(session, str(extra.get("prompt", "")), conversation)
        return await session_command(session, Action(action))

    async def _inbox(self) -> None:
        """Commands for the sessions this process owns, replies to the ones it sent, and
        the processes that stop."""
        if self.store.link.cluster:
            await self._sharded_inbox()
            return
        delay = 0.1
        while True:
            pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.store.inbox(self.pid), CLUSTER_CHANNEL)
                self.listening.set()
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("channel") == CLUSTER_CHANNEL:
                        self._look.set()
                    else:
                        self._on_message(message.get("data"))
            except Exception as exc:  # redis-py's connection errors, and OSError
                raise_if_cancelling(exc)
                log.debug("redis inbox: %s", exc)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _sharded_inbox(self) -> None:
        """The inbox on a Redis Cluster: sharded pub/sub (the messages go to the shard of
        the channel alone), subscribed again wherever the channel's slot moves."""
        subscriber = self.store.link.new_subscriber()
        inbox = self.store.inbox(self.pid)
        subscriber.add(inbox, self._on_message)
        # Subscribed again (None): a process may have left meanwhile, unheard.
        subscriber.add(CLUSTER_CHANNEL, lambda _: self._look.set())
        try:
            while True:
                await subscriber.settled.wait()
                self.listening.set()
                await subscriber.unsettled.wait()
                self.listening.clear()
        finally:
            self.listening.clear()
            subscriber.remove(inbox)
            subscriber.remove(CLUSTER_CHANNEL)

    def _on_message(self, data: object) -> None:
        if not isinstance(data, str):
            return
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if message.get("op") == "reply":
            reply = self._replies.get(message.get("id", ""))
            if reply is not None and not reply.done():
                reply.set_result(message.get("ack") or error_ack("Empty reply"))
        elif message.get("op") == "command":
            task = asyncio.get_running_loop().create_task(self._serve(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, message: dict[str, Any]) -> None:
        # A task of its own: what it sets here stays with it (and the stream it may start).
        request_id = message.get("requestId")
        if well_formed_request_id(request_id):
            REQUEST_ID.set(request_id)
        session = self.manager.registry.get(str(message.get("session", "")))
        action = str(message.get("action", ""))
        if session is None:
            ack = error_ack("Session not found on the process that owns it")
        elif action not in ("start", *Action):
            ack = error_ack(f"Unknown command {action[:32]!r}")
        else:
            ack = await self._apply(session, action, message)
        with contextlib.suppress(StoreUnavailable):
            await self.store.publish(
                str(message.get("from", "")),
                encode_json({"op": "reply", "id": message.get("id"), "ack": ack}),
            )

    # -- liveness ------------------------------------------------------------

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.owner_lease_seconds / 3
        while True:
            try:
                await self.store.heartbeat(self.pid, self.lease_ms)
            except StoreUnavailable:
                self._unreachable = True
                await self.store.link.switched(min(0.25, interval))
                continue
            if self._unreachable:
                self._unreachable = False
                self._reached_again = loop.time()
            await asyncio.sleep(interval)

    def _may_claim(self) -> bool:
        """Whether a lapsed lease means a dead process: not while Redis is out of reach, nor
        within a lease after it answers again or moves, when the others, alive, may not have
        renewed theirs yet."""
        if self._unreachable:
            return False
        return asyncio.get_running_loop().time() - self._reached_again >= self.settings.owner_lease_seconds

    def _primary_moved(self) -> None:
        """Leases renewed on the old primary may be missing on the new one: wait a lease."""
        self._reached_again = asyncio.get_running_loop().time()

    async def _watchdog(self) -> None:
        """Find processes whose lease lapsed and take their sessions over; drop idle mirrors.

        It looks a few times per lease (and at once when a process says it stopped), so a
        stream waits for its successor a little more than the lease."""
        interval = self.settings.owner_lease_seconds / 4
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._look.wait()
            self._look.clear()
            for session_id, mirror in tuple(self._mirrors.items()):
                if not mirror.viewers and time.monotonic() - mirror.touched > 2 * interval:
                    self._mirrors.pop(session_id, None)
                    mirror.chunks.release()
            if not self._may_claim():
                continue
            try:
                for pid, lapsed_at in await self.store.dead_processes():
                    if pid != self.pid:
                        await self._orphans_of(pid, lapsed_at)
            except StoreUnavailable:
                continue

    async def _orphans_of(self, pid: str, lapsed_at: int) -> None:
        gone_for = (now_ms() - lapsed_at) / 1000
        for session_id in await self.store.sessions_of(pid):
            meta = await self.store.meta(session_id)
            if meta is None or meta.get("owner") != pid:
                await self.store.forget(pid, session_id)
                continue
            if not self._may_claim():
                return  # Redis moved while this looked: the leases it saw may be stale
            fence = await self.store.claim(session_id, pid, meta.get("fence", ""), self.pid)
            if fence is None:
                continue  # another process claimed it first
            await self.store.forget(pid, session_id)
            # Read after the claim: the old owner can no longer append, so this is the end.
            loaded = await self.store.load(session_id)
            if loaded is None:
                continue
            await self._take_over(pid, session_id, *loaded, fence, gone_for)
        await self.store.bury(pid)

    async def _take_over(
        self,
        pid: str,
        session_id: str,
        meta: dict[str, str],
        entries: list[Entry],
        fence: str,
        gone_for: float,
    ) -> None:
        session = self._restore(session_id, meta, entries)
        self.journal.own(session, fence, entries, meta)
        self.manager.registry.add(session)
        label = short_id(session_id)
        about = {"session": label}
        if session.state is SessionState.CREATED:
            log.info("session %s: adopted from stopped process %s", label, pid, extra=about)
            TAKEOVERS.labels(outcome="adopted").inc()
            return
        if not session.is_live:
            self.journal.disown(session_id)
            return
        resume = orjson.loads(meta["resume"]) if "resume" in meta else None
        if resume is None or gone_for > self.settings.owner_lost_after:
            log.warning("session %s: its process %s stopped; ending it", label, pid, extra=about)
            TAKEOVERS.labels(outcome="owner_lost").inc()
            await session.abort("owner_lost", OWNER_LOST)
            return
        try:
            session.continue_stream(int(resume["chars"]), resume["checkpoint"])
        except Exception:
            log.exception("session %s: could not resume it", label, extra=about)
            TAKEOVERS.labels(outcome="owner_lost").inc()
            await session.abort("owner_lost", OWNER_LOST)
            return
        TAKEOVERS.labels(outcome="resumed").inc()
        log.warning("session %s: took it over from stopped process %s", label, pid, extra=about)

    # -- the journal's callbacks ---------------------------------------------

    def _lost(self, session: StreamingSession) -> None:
        """Another process owns ``session`` now: stop it here; its viewers reconnect."""
        session.journal = None
        self.manager.registry.remove(session.id)
        task = asyncio.get_running_loop().create_task(session.abandon())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finished(self, sessions: Sequence[StreamingSession]) -> None:
        await self.store.release_all([(session.user_id, session.id) for session in sessions], self.pid)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them. redis-py sometimes completes a command that was
    cancelled instead of raising (the cancellation is then lost), so cancel again until
    every task has ended."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
