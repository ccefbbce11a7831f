"""The per-user and per-address limits of every process, held in Redis (Redis mode).

:class:`RedisLimits` is the :class:`~server.guards.ratelimit.Share` of one process. A check
never waits for Redis: it answers from this process's copy (``server.guards.ratelimit``),
and what the process spent or holds is sent at the end of the loop turn, one pipeline for
everything that changed meanwhile, one script call per bucket or address. Each reply is
what the whole cluster has, and becomes the local copy:

- a token bucket (``limit:<scope>:<key>``, a hash of ``tokens`` and ``stamp``) refills
  on Redis's clock; the script spends what this process reports, below zero if the
  processes together spent more than it held (a debt the next refills pay back, so the
  rate holds exactly over time), and returns what is left. It expires once it would be
  full again;
- an address's connections (``limit:{conns}:<address>``, a hash of process id → count)
  take this process's count as it is now (absolute, so a retry or a resend is harmless)
  and return the sum over live processes. A process is live while its deadline in
  ``limit:{conns}:procs`` is ahead, renewed every third of ``OWNER_LEASE_SECONDS``; a dead
  process's counts stop counting when its lease would have lapsed, and are deleted by
  the next script that sees them. Those keys share a hash tag, so the script runs on one
  Redis Cluster node (all connection counts live on that node: a few small calls per
  connection, never per chunk).

A copy is late by what the other processes did since this one last heard. When a spend
empties a bucket, or a connection reaches an address's limit (or closes at it), the
script announces it on ``REACHED`` and every other process asks Redis at once, so a
client that goes on at another process finds the limit there too: across processes it
gets at most one token or connection more per other process (more only for requests
within one Redis round trip of each other).

Redis unreachable: every limit falls back to this process's copy, as in memory mode
(fail open to per-process limits, never a hang): spends made meanwhile are dropped, and
counts are sent again once Redis answers. They are sent again as well when the primary
moves (Sentinel: a write in flight may have gone with the old one) and when this process
finds itself missing from the live set (Redis lost it, or its deadline lapsed meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from server.cluster.redis_cluster import raise_if_cancelling, stop

if TYPE_CHECKING:
    from server.cluster.redis_store import RedisStore
    from server.guards.ratelimit import AddressCounter, Buckets, Limits

log = logging.getLogger(__name__)

# Spends ARGV[3] tokens of a bucket of ARGV[1] tokens a second up to ARGV[2], refilled on
# Redis's clock; returns the tokens left (a string: Lua numbers lose their fraction). KEYS: the
# bucket's hash. The key expires once the bucket would be full again (rate 0: after a day).
# When a spend empties it, ARGV[4] is published on ``REACHED`` for the other processes.
_SPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, spent = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
if tokens == nil then
  tokens = burst
else
  local elapsed = now - tonumber(state[2])
  if elapsed > 0 then
    tokens = math.min(burst, tokens + elapsed * rate / 1000)
  else
    now = tonumber(state[2])
  end
end
tokens = tokens - spent
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'stamp', now)
local ttl = 86400000
if rate > 0 then
  ttl = math.ceil((burst - tokens) * 1000 / rate) + 1000
end
redis.call('PEXPIRE', KEYS[1], ttl)
if spent > 0 and tokens < 1 then
  redis.call('PUBLISH', 'limit:reached', ARGV[4])
end
return string.format('%.6f', tokens)
"""

# Sets this process's count of an address and returns {the live processes' total, whether
# this process was missing from the live set}. KEYS: the address's hash, the live set.
# ARGV: process id, count, lease ms, the hash's ttl ms, the limit, a message. Counts of
# processes whose deadline passed are deleted on the way. When this count grew to the
# limit, or fell from it, the message is published on ``REACHED``.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local deadline = tonumber(redis.call('ZSCORE', KEYS[2], fields[i]))
  if deadline ~= nil and deadline >= now then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if total > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local count, limit = tonumber(ARGV[2]), tonumber(ARGV[5])
if (count > before and total >= limit) or (count < before and total - count + before >= limit) then
  redis.call('PUBLISH', 'limit:reached', ARGV[6])
end
return {total, added}
"""

# Renews this process's deadline and forgets the lapsed ones; returns 1 when this process
# was missing (first beat, or taken for dead meanwhile). KEYS: the live set. ARGV: process
# id, lease ms.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""

SCRIPTS = {hashlib.sha1(s.encode()).hexdigest(): s for s in (_SPEND, _HOLD, _BEAT)}
SPEND_SHA, HOLD_SHA, BEAT_SHA = SCRIPTS

#: Replies of a server that is no longer the one to write to (Sentinel mode).
MOVED = ("READONLY", "NOREPLICAS", "MASTERDOWN")
#: The live processes of the connection counts (under the counts' hash tag).
LIVE = "limit:{conns}:procs"
#: Pub/sub channel (named in the scripts too): ``<pid> TAB <scope> TAB <key>`` when a
#: spend or a connection of that process used up what the cluster allows, or a connection
#: closed at the limit; the others ask Redis again at once, so that a client that goes on
#: at another process finds the limit there too (or room again).
REACHED = "limit:reached"
#: An address's counts expire this long after their last write; each process writes its
#: own again every third of it, so only a count nobody holds any more goes.
ADDRESS_TTL = 3600.0


def bucket_key(scope: str, key: str) -> str:
    return f"limit:{scope}:{key}"


def address_key(address: str) -> str:
    return f"limit:{{conns}}:{address}"


class RedisLimits:
    """One process's share of the cluster's limits (``server.guards.ratelimit.Share``):
    made for an app's :class:`~server.guards.ratelimit.Limits`, it makes them shared."""

    def __init__(self, store: RedisStore, pid: str, limits: Limits, *, lease: float, timeout: float) -> None:
        self.store = store
        self.pid = pid
        self.lease_ms = int(lease * 1000)
        self.beat_interval = lease / 3
        self.timeout = timeout
        self._buckets: dict[str, Buckets] = {
            b.scope: b
            for b in (limits.sessions_per_user, limits.sessions_per_address, limits.handshakes_per_address)
        }
        self._counters: dict[str, AddressCounter] = {limits.connections.scope: limits.connections}
        #: Tokens spent here and not sent yet, per bucket and key (0: only ask what is left).
        self._spends: dict[tuple[str, str], int] = {}
        #: Addresses whose count here changed (or whose total is wanted), not sent yet.
        self._held: dict[tuple[str, str], None] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: Set while this process hears the others' ``REACHED`` messages.
        self.listening = asyncio.Event()
        self._down = False
        self._last_resend = time.monotonic()
        limits.share(self)
        # Writes in flight when the primary moved may be lost with the old one.
        store.link.on_switch(self._send_all)

    # -- Share: called by the checks, never waits ------------------------------

    def spent(self, buckets: Buckets, key: str) -> None:
        slot = (buckets.scope, key)
        self._spends[slot] = self._spends.get(slot, 0) + 1
        self._poke()

    def held(self, counter: AddressCounter, address: str) -> None:
        self._held[(counter.scope, address)] = None
        self._poke()

    def _send_all(self) -> None:
        """Send every count of this process again (and ask every total it keeps)."""
        self._last_resend = time.monotonic()
        for counter in self._counters.values():
            for address in counter.addresses(mine=True):
                self._held[(counter.scope, address)] = None
        if self._held:
            self._poke()

    def _poke(self) -> None:
        self._idle.clear()
        self._wake.set()

    # -- lifetime --------------------------------------------------------------

    async def run(self) -> AsyncIterator[None]:
        """The sender, the heartbeat and the listener for the app's lifetime (an
        ``app.cleanup_ctx`` body); on the way out this process's counts stop counting."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._send_loop()),
            loop.create_task(self._beat_loop()),
            loop.create_task(self._listen()),
        ]
        yield
        for task in tasks:
            await stop(task)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self.store.redis.zrem(LIVE, self.pid)

    async def sent(self) -> None:
        """Wait until everything spent or held so far has been answered (tests, bench)."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._send()
            if not self._wake.is_set():
                self._idle.set()

    async def _beat_loop(self) -> None:
        while True:
            await self._beat()
            await asyncio.sleep(self.beat_interval)

    async def _beat(self) -> None:
        """Renew this process's deadline; ask again for the totals it keeps a copy of (the
        others may have closed connections since), and send its own counts again when it
        was taken for dead or when they are due to be refreshed."""
        try:
            async with asyncio.timeout(self.timeout):
                (missing,) = await self._evalsha([(BEAT_SHA, [1, LIVE, self.pid, self.lease_ms])])
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            self._unreachable(exc)
            self.store.link.moved()
            missing = None
        if missing == 1 or time.monotonic() - self._last_resend >= ADDRESS_TTL / 3:
            self._send_all()
            return
        for counter in self._counters.values():
            for address in counter.addresses(mine=False):
                self._held[(counter.scope, address)] = None
        if self._held:
            self._poke()

    async def _listen(self) -> None:
        """Hear the other processes' ``REACHED``, and ask Redis what is left of that limit."""
        delay = 0.1
        while True:
            pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(REACHED)
                self.listening.set()
                delay = 0.1
                async for message in pubsub.listen():
                    self._on_reached(message.get("data"))
            except Exception as exc:  # redis-py's connection errors, and OSError
                raise_if_cancelling(exc)
                log.debug("limits: listening on %s: %s", REACHED, type(exc).__name__)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    def _on_reached(self, data: object) -> None:
        if not isinstance(data, str):
            return
        pid, _, rest = data.partition("\t")
        scope, _, key = rest.partition("\t")
        if pid == self.pid:
            return
        if scope in self._buckets:
            self._spends.setdefault((scope, key), 0)
            self._poke()
        elif scope in self._counters:
            self.held(self._counters[scope], key)

    # -- sending ---------------------------------------------------------------

    async def _send(self) -> None:
        spends, self._spends = self._spends, {}
        held, self._held = list(self._held), {}
        calls: list[tuple[str, list[Any]]] = []
        for (scope, key), count in spends.items():
            buckets = self._buckets[scope]
            reached = f"{self.pid}\t{scope}\t{key}"
            calls.append(
                (SPEND_SHA, [1, bucket_key(scope, key), buckets.rate, buckets.burst, count, reached])
            )
        counts: list[int] = []
        for scope, address in held:
            counter = self._counters[scope]
            count = counter.count(address)
            counts.append(count)
            reached = f"{self.pid}\t{scope}\t{address}"
            ttl_ms = int(ADDRESS_TTL * 1000)
            args = [
                2,
                address_key(address),
                LIVE,
                self.pid,
                count,
                self.lease_ms,
                ttl_ms,
                counter.limit,
                reached,
            ]
            calls.append((HOLD_SHA, args))
        if not calls:
            return
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._evalsha(calls)
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            self._unreachable(exc)
            self.store.link.moved()
            # Spends are forgotten (this process limited them on its own); counts are
            # absolute: the heartbeat sends them again.
            for slot in held:
                self._held[slot] = None
            return
        self._reachable()
        for (scope, key), reply in zip(spends, replies, strict=False):
            if isinstance(reply, Exception):
                continue
            # What this process spent while the call was out is not in the reply yet.
            self._buckets[scope].adopt(key, float(reply) - self._spends.get((scope, key), 0))
        missing = False
        for (scope, address), count, reply in zip(held, counts, replies[len(spends) :], strict=True):
            if isinstance(reply, Exception):
                self._held[(scope, address)] = None
                continue
            total, added = int(reply[0]), int(reply[1])
            missing = missing or added == 1
            self._counters[scope].adopt(address, total - count)
        if missing:
            # Taken for dead meanwhile: the others may have deleted this process's counts.
            self._send_all()

    async def _evalsha(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """``EVALSHA`` of each call in one pipeline, without redis-py's ``SCRIPT EXISTS``
        before it; calls answered ``NOSCRIPT`` (a restarted or flushed Redis) are sent
        again once their script is loaded. A reply is the script's result or its error."""
        redis = self.store.redis
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _ in range(2):
            pipe = redis.pipeline(transaction=False)
            for index in pending:
                sha, args = calls[index]
                pipe.evalsha(sha, *args)
            results = await pipe.execute(raise_on_error=False)
            _raise_if_cancelled()
            if any(isinstance(r, ResponseError) and str(r).startswith(MOVED) for r in results):
                # Written to a server that is no longer the primary: ask the Sentinels again.
                self.store.link.moved()
            missing: list[int] = []
            for index, result in zip(pending, results, strict=True):
                if isinstance(result, NoScriptError) or (
                    isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT")
                ):
                    missing.append(index)
                # Anything else, NOREPLICAS and READONLY included, is that call's reply.
                replies[index] = result
            if not missing:
                break
            for sha in {calls[index][0] for index in missing}:
                await redis.script_load(SCRIPTS[sha])
            _raise_if_cancelled()
            pending = missing
        return replies

    def _unreachable(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning(
                "limits: Redis does not answer (%s); each process limits on its own until it does",
                type(exc).__name__,
            )

    def _reachable(self) -> None:
        if self._down:
            self._down = False
            log.info("limits: Redis answers again; the limits hold for the whole cluster")


def _raise_if_cancelled() -> None:
    """redis-py 8.2 can return from a pipeline with the task's cancellation swallowed
    (seen here: a stopped app's sender kept waiting for work); a loop that was asked to
    stop must stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
