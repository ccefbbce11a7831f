"""Everything the server keeps in Redis, and every call it makes there (``REDIS_URL``).

Imported only when ``REDIS_URL`` is set. Keys of one session share the hash tag
``{<sessionId>}`` so a script touching them runs on one Redis Cluster node:

- ``stream:{id}:meta``, a hash: user, config, createdAt, state, epoch, lastSeq, usage,
  finishReason, error, the owner process and its fencing token (``fence``);
- ``stream:{id}:log``, a Redis Stream, the chunk log and the source of truth for replay.
  Chunk ``seq`` N has the explicit id ``N+1-0``, so Redis itself refuses a second append
  of a seq; the events that follow chunk N (``stream-state``, ``complete``,
  ``stream-error``) get ``N+1-1``, ``N+1-2``, ... Appends run in a script that first
  checks each session's fencing token, so a process that lost a session can never append
  to it. One script call per flush carries every session's entries (``append``): on one
  Redis server that is one call however many sessions stream; a Redis Cluster would need
  one call per hash slot (not supported yet).

Per process: ``proc:{pid}``, its lease (a key with a TTL it renews), ``proc:{pid}:sessions``
(the sessions it owns), ``procs`` (a sorted set of lease deadlines, to find the dead) and
the pub/sub channel ``proc:{pid}:inbox`` for commands. Per user: ``user:{id}:live``, the
live sessions counted by the quota.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from server.core.errors import StoreUnavailable

# Appends the queued entries of several sessions in one call (one call per flush): for each
# session, if the caller holds its fencing token, its entries in order, then its meta hash
# updated once and its keys' TTL renewed. KEYS: meta and log of each session, in pairs.
# ARGV: ttl ms, then per session: fence, entry count, per entry its id, n and n
# field/values (n = 0: no entry), then the meta count m and m field/values. Returns per
# session 'FENCED'; its entry count when every entry was written; '!' and the error when
# its keys could not be used (a wrong type: nothing of it was written but what came
# before the error); or, when an XADD was refused, a list with one result per entry: its
# id, '' (no entry), or '!' and the error of its XADD. Every call inside is a pcall, so
# one session's failure never stops the others' writes halfway.
_APPEND = """
local ttl = ARGV[1]
local i = 2
local out = {}
for s = 1, #KEYS / 2 do
  local meta, log = KEYS[2 * s - 1], KEYS[2 * s]
  local fence = ARGV[i]
  local count = tonumber(ARGV[i + 1])
  i = i + 2
  local owner = redis.pcall('HGET', meta, 'fence')
  local failed = type(owner) == 'table' and owner.err
  local fenced = not failed and owner ~= fence
  local results = {}
  local refused = false
  for e = 1, count do
    local n = tonumber(ARGV[i + 1])
    if failed or fenced then
      results[e] = ''
    elseif n > 0 then
      local id = redis.pcall('XADD', log, ARGV[i], unpack(ARGV, i + 2, i + 1 + n))
      if type(id) == 'table' and id.err then
        id = '!DUPLICATE ' .. id.err
        refused = true
      end
      results[e] = id
    else
      results[e] = ''
    end
    i = i + 2 + n
  end
  local m = tonumber(ARGV[i])
  if failed then
    out[s] = '!' .. failed
  elseif fenced then
    out[s] = 'FENCED'
  else
    local reply = nil
    if m > 0 then
      reply = redis.pcall('HSET', meta, unpack(ARGV, i + 1, i + m))
    end
    redis.pcall('PEXPIRE', meta, ttl)
    redis.pcall('PEXPIRE', log, ttl)
    if type(reply) == 'table' and reply.err then
      out[s] = '!' .. reply.err
    elseif refused then
      out[s] = results
    else
      out[s] = count
    end
  end
  i = i + 1 + m
end
return out
"""

# Moves a session to a new owner if it still belongs to the one the caller saw (and that
# one's fence): exactly one of several racing processes wins. KEYS: meta.
# ARGV: expected owner, expected fence, new owner. Returns the new fence, or nil.
_CLAIM = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then
  return false
end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[3])
return fence
"""

# The per-user quota: add the session unless the user has ``limit`` live ones already.
# KEYS: the user's set. ARGV: session id, limit, ttl ms.
_RESERVE = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

PROCESSES = "procs"
#: Pub/sub channel on which a stopping process names itself, so the others claim its
#: sessions at once instead of at their next look.
CLUSTER_CHANNEL = "procs:left"
#: Connections to Redis per process (besides the relay's own).
MAX_CONNECTIONS = 64


def _session_args(batch: Sequence[Append], indexes: list[int], fence: str) -> list[Any]:
    """One session's part of ``_APPEND``'s arguments: its entries, then its meta fields
    merged (the last value of each field kept)."""
    args: list[Any] = [fence, len(indexes)]
    meta: dict[str, str] = {}
    for index in indexes:
        item = batch[index]
        args += [item.entry_id, len(item.fields), *item.fields]
        meta.update(zip(item.meta[::2], item.meta[1::2], strict=True))
    args.append(2 * len(meta))
    for field, value in meta.items():
        args += [field, value]
    return args


class Fenced(Exception):
    """The session has another owner now: this process may not write to it."""


@dataclass(frozen=True, slots=True)
class Append:
    """One log entry to write for a session this process owns."""

    session_id: str
    fence: str
    entry_id: str
    fields: Sequence[str]
    meta: Sequence[str] = ()


def meta_key(session_id: str) -> str:
    return f"stream:{{{session_id}}}:meta"


def log_key(session_id: str) -> str:
    return f"stream:{{{session_id}}}:log"


def chunk_id(seq: int) -> str:
    return f"{seq + 1}-0"


def event_id(last_seq: int) -> str:
    return f"{last_seq + 1}-*"


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def now_ms() -> int:
    return int(time.time() * 1000)


@asynccontextmanager
async def _guard() -> AsyncIterator[None]:
    """Redis errors that are about reaching Redis become :class:`StoreUnavailable`."""
    try:
        yield
    except ResponseError:
        raise
    except (RedisError, OSError) as exc:
        raise_if_cancelling(exc)
        raise StoreUnavailable("The session store is unavailable: try again shortly") from exc


def raise_if_cancelling(exc: BaseException) -> None:
    """redis-py may turn a cancellation into a timeout or connection error: a task being
    cancelled must stop, not retry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


class RedisStore:
    """The server's Redis calls; every method raises :class:`StoreUnavailable` when Redis
    cannot be reached."""

    def __init__(self, url: str, *, timeout: float) -> None:
        # A burst of requests waits for a free connection instead of failing at once.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=max(1, int(timeout)),
        )
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        # XREAD BLOCK holds its connection; its own client waits longer than it blocks.
        self.reader: aioredis.Redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout + 5, socket_connect_timeout=timeout
        )
        self._append_sha = hashlib.sha1(_APPEND.encode()).hexdigest()
        self._claim = self.redis.register_script(_CLAIM)
        self._reserve = self.redis.register_script(_RESERVE)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.reader.aclose()

    async def ping(self) -> None:
        async with _guard():
            await self.redis.ping()

    # -- sessions ------------------------------------------------------------

    async def reserve(self, user_id: str, session_id: str, limit: int, ttl_ms: int) -> bool:
        """Count a new live session against its user's quota; ``False`` when it is full."""
        async with _guard():
            return bool(
                await self._reserve(keys=[f"user:{{{user_id}}}:live"], args=[session_id, limit, ttl_ms])
            )

    async def release(self, user_id: str, session_id: str, owner: str) -> None:
        """A session ended: it no longer counts for its user or its owner."""
        async with _guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.srem(f"user:{{{user_id}}}:live", session_id)
            pipe.srem(f"proc:{{{owner}}}:sessions", session_id)
            await pipe.execute()

    async def put_session(self, session_id: str, meta: dict[str, str], owner: str, ttl_ms: int) -> None:
        """Write a new session's meta hash, owned by ``owner`` with fence 1."""
        async with _guard():
            pipe = self.redis.pipeline(transaction=False)
            fields: dict[Any, Any] = {**meta, "owner": owner, "fence": "1"}
            pipe.hset(meta_key(session_id), mapping=fields)
            pipe.pexpire(meta_key(session_id), ttl_ms)
            pipe.sadd(f"proc:{{{owner}}}:sessions", session_id)
            await pipe.execute()

    async def load(self, session_id: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str]]]] | None:
        """A session's meta hash and its whole log, or ``None`` when it does not exist."""
        async with _guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(meta_key(session_id))
            pipe.xrange(log_key(session_id))
            meta, entries = await pipe.execute()
        if not meta:
            return None
        return meta, entries

    async def meta(self, session_id: str) -> dict[str, str] | None:
        """A session's meta hash, or ``None`` when it does not exist."""
        async with _guard():
            meta = cast(dict[str, str], await self.redis.hgetall(meta_key(session_id)))
            return meta or None

    async def entries_after(self, session_id: str, after: str) -> list[tuple[str, dict[str, str]]]:
        """Log entries with an id greater than ``after``."""
        async with _guard():
            result = await self.redis.xrange(log_key(session_id), f"({after}")
            return cast(list[tuple[str, dict[str, str]]], result)

    async def owner(self, session_id: str) -> str | None:
        """The process that owns a session, or ``None`` when the session does not exist."""
        async with _guard():
            owner = await self.redis.hget(meta_key(session_id), "owner")
            return None if owner is None else str(owner)

    async def exists(self, session_id: str) -> bool:
        async with _guard():
            return bool(await self.redis.exists(meta_key(session_id)))

    async def append(self, batch: Sequence[Append], ttl_ms: int) -> list[str | Exception]:
        """Write ``batch`` in one round trip and one script call: each session's entries in
        order, its meta fields once. Each item's result is its entry id, or the
        :class:`Fenced` / ``ResponseError`` that refused it."""
        groups: dict[tuple[str, str], list[int]] = {}
        for index, item in enumerate(batch):
            groups.setdefault((item.session_id, item.fence), []).append(index)
        keys: list[str] = []
        args: list[Any] = [ttl_ms]
        for (session_id, fence), indexes in groups.items():
            keys += [meta_key(session_id), log_key(session_id)]
            args += _session_args(batch, indexes, fence)
        async with _guard():
            (reply,) = await self._evalsha_all(self._append_sha, _APPEND, [[len(keys), *keys, *args]])
        out: list[str | Exception] = [""] * len(batch)
        if isinstance(reply, Exception):
            # The script did not run (out of memory, a read-only replica, ...): nothing was
            # written, so nothing may be delivered; the journal retries the whole batch.
            raise StoreUnavailable(f"redis refused the append: {reply}")
        for indexes, result in zip(groups.values(), cast(list[Any], reply), strict=True):
            if result == "FENCED" or (isinstance(result, str) and result.startswith("!")):
                refused: Exception = Fenced(result) if result == "FENCED" else ResponseError(result[1:])
                for index in indexes:
                    out[index] = refused
                continue
            if isinstance(result, int):  # all written: the ids as asked (``N-*`` for events)
                for index in indexes:
                    out[index] = batch[index].entry_id
                continue
            for index, entry in zip(indexes, cast(list[str], result), strict=True):
                out[index] = ResponseError(entry[1:]) if entry.startswith("!") else entry
        return out

    async def _evalsha_all(self, sha: str, script: str, calls: list[list[Any]]) -> list[Any]:
        """``EVALSHA`` of each call (keys count first) in one pipeline, without redis-py's
        ``SCRIPT EXISTS`` before every pipeline; the calls Redis answers ``NOSCRIPT`` (a
        restarted or flushed Redis) are sent again once the script is loaded."""
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for index in pending:
                pipe.evalsha(sha, *calls[index])
            results = await pipe.execute(raise_on_error=False)
            missing = []
            for index, result in zip(pending, results, strict=True):
                if isinstance(result, NoScriptError) or (
                    isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT")
                ):
                    missing.append(index)
                else:
                    replies[index] = result
            if not missing:
                break
            await self.redis.script_load(script)
            pending = missing
            if attempt == 1:
                for index in missing:
                    replies[index] = ResponseError("NOSCRIPT after SCRIPT LOAD")
        return replies

    async def claim(
        self, session_id: str, expected_owner: str, expected_fence: str, owner: str
    ) -> str | None:
        """Take a session over from ``expected_owner``; the new fence, or ``None`` when
        another process was faster (or the session moved meanwhile)."""
        async with _guard():
            fence = await self._claim(
                keys=[meta_key(session_id)], args=[expected_owner, expected_fence, owner]
            )
            if fence is None:
                return None
            await self.redis.sadd(f"proc:{{{owner}}}:sessions", session_id)
            return str(fence)

    # -- processes -----------------------------------------------------------

    async def heartbeat(self, pid: str, lease_ms: int) -> None:
        """Renew this process's lease."""
        async with _guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(f"proc:{{{pid}}}", "1", px=lease_ms)
            pipe.zadd(PROCESSES, {pid: now_ms() + lease_ms})
            await pipe.execute()

    async def leave(self, pid: str) -> None:
        """This process stops. Sessions it still owns (handed over, or not started) are
        left for the others to claim: its lease ends now rather than when it would lapse,
        and the others are told to look at once."""
        async with _guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(f"proc:{{{pid}}}")
            pipe.scard(f"proc:{{{pid}}}:sessions")
            _, owned = await pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            if owned:
                pipe.zadd(PROCESSES, {pid: now_ms()})
                pipe.publish(CLUSTER_CHANNEL, pid)
            else:
                pipe.zrem(PROCESSES, pid)
            await pipe.execute()

    async def dead_processes(self) -> list[tuple[str, int]]:
        """Processes whose lease has lapsed, with when it lapsed (ms since the epoch)."""
        async with _guard():
            found = cast(
                list[tuple[str, float]],
                await self.redis.zrangebyscore(PROCESSES, "-inf", now_ms(), withscores=True),
            )
            if not found:
                return []
            pipe = self.redis.pipeline(transaction=False)
            for pid, _ in found:
                pipe.exists(f"proc:{{{pid}}}")
            alive = await pipe.execute()
        return [(pid, int(lapsed)) for (pid, lapsed), up in zip(found, alive, strict=True) if not up]

    async def sessions_of(self, pid: str) -> set[str]:
        async with _guard():
            return cast(set[str], await self.redis.smembers(f"proc:{{{pid}}}:sessions"))

    async def forget(self, pid: str, session_id: str) -> None:
        async with _guard():
            await self.redis.srem(f"proc:{{{pid}}}:sessions", session_id)

    async def bury(self, pid: str) -> None:
        """A dead process's sessions are all dealt with: forget it."""
        async with _guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(f"proc:{{{pid}}}:sessions")
            pipe.zrem(PROCESSES, pid)
            await pipe.execute()

    # -- commands between processes ------------------------------------------

    async def publish(self, pid: str, message: str) -> int:
        async with _guard():
            return int(await self.redis.publish(f"proc:{{{pid}}}:inbox", message))

    def inbox(self, pid: str) -> str:
        return f"proc:{{{pid}}}:inbox"

    # -- the relay -----------------------------------------------------------

    async def read(
        self, streams: dict[str, str], block_ms: int, count: int
    ) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
        """``XREAD BLOCK`` over many logs at once (keys: log keys or the wake key)."""
        async with _guard():
            result: Any = await self.reader.xread(cast(Any, streams), count=count, block=block_ms)
            return list(result or [])

    async def wake(self, key: str) -> None:
        async with _guard():
            await self.redis.xadd(key, {"w": "1"}, maxlen=16, approximate=True)
