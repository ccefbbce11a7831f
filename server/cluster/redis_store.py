"""Everything the server keeps in Redis, and every call it makes there (Redis mode).

Imported only in Redis mode. Keys of one session share the hash tag ``{<sessionId>}`` so
a script touching them runs on one Redis Cluster node:

- ``stream:{id}:meta``, a hash: user, config, createdAt, state, epoch, lastSeq, usage,
  finishReason, error, the owner process and its fencing token (``fence``), the id of the
  log's last entry (``head``) and, once a process found the log shorter than what it had
  seen, ``lost``;
- ``stream:{id}:log``, a Redis Stream, the chunk log and the source of truth for replay.
  Chunk ``seq`` N has the id ``N+1-0``; the events that follow chunk N (``stream-state``,
  ``complete``, ``stream-error``) get ``N+1-1``, ``N+1-2``, ..., numbered by the owner, so
  a write sent twice is written once.

Appends run in a script (``_APPEND``) that checks each session's fencing token, so a
process that lost a session can never append to it, and that the entries follow the
log's ``head`` as the writer knew it: a log that a failover rolled back (a replica
promoted before it had the last writes) is refused as :class:`Lost` instead of being
continued with the same ids and other text. One script call per flush carries every
session's entries (on a Redis Cluster, one call per hash slot, one pipeline per node).

Per process: ``proc:{pid}``, its lease (a key with a TTL it renews), ``proc:{pid}:sessions``
(the sessions it owns), ``procs`` (a sorted set of lease deadlines, to find the dead) and
the pub/sub channel ``proc:{pid}:inbox`` for commands (sharded on a Redis Cluster). Per
user: ``user:{id}:live``, the live sessions counted by the quota.

Where Redis is (:class:`RedisTarget`): one server (``REDIS_URL``), the primary that Redis
Sentinels name (``REDIS_SENTINELS``), which :class:`RedisLink` follows through failovers, or
a Redis Cluster (``REDIS_CLUSTER_URL``, :mod:`server.cluster.redis_cluster`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import hiredis
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from server.cluster.redis_cluster import (
    ClusterReads,
    Layout,
    ShardSubscriber,
    by_node,
    raise_if_cancelling,
    slot_of,
    topology,
)
from server.core.errors import StoreUnavailable

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger(__name__)

# Appends the queued entries of several sessions in one call (one call per flush): for each
# session, if the caller holds its fencing token and the log is as the caller left it, its
# entries in order, then its meta hash updated once and (when asked) its keys' TTL renewed.
# KEYS: meta and log of each session, in pairs (on a Redis Cluster, of one hash slot). ARGV:
# ttl ms, '1' to announce each session's new entries on the sharded channel named as its log
# (Redis Cluster: readers do not block there, they wait for this) or '', then the sessions'
# parts as one JSON array (one argument instead of a dozen per entry: redis-py encodes every
# argument in Python, which cost more than the rest of the write), per session: [fence, the
# id of the writer's entry before these ('' = unchecked), [[entry id, field, value, ...] per
# entry (no field: no entry)], [meta field, value, ...], '1' to renew its keys' TTL or ''],
# every value a string.
#
# Returns per session 'FENCED'; 'LOST <head> <epoch> <1 if flagged>' when the log's head is
# behind what the writer had written (a failover lost it) or a reader flagged it lost:
# nothing of it was written; its entry count when every entry was written; '!' and the error
# when its keys could not be used (a wrong type: nothing of it was written); or, when an
# entry was not written, a list with one result per entry: its id, '' (no entry), '!WRITTEN'
# (the log has it already: a write sent again), or '!' and the error of its XADD ('!DUPLICATE'
# and the error when unchecked, as an id at or below the head is). Every call inside is a
# pcall, so one session's failure never stops the others' writes halfway; a write the
# server refuses for every key (a read-only replica, NOREPLICAS, out of memory) fails the
# whole call before anything is written.
_APPEND = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local function refused_by_server(err)
  local word = string.match(err, '^%u+')
  return word == 'READONLY' or word == 'NOREPLICAS' or word == 'OOM' or word == 'MISCONF'
end
local ttl = ARGV[1]
local announce = ARGV[2] == '1'
local parts = cjson.decode(ARGV[3])
local out = {}
for s = 1, #KEYS / 2 do
  local meta, log = KEYS[2 * s - 1], KEYS[2 * s]
  local part = parts[s]
  local fence, prev, entries = part[1], part[2], part[3]
  local count = #entries
  local state = redis.pcall('HMGET', meta, 'fence', 'head', 'lost', 'epoch')
  local failed = state.err
  local fenced = not failed and state[1] ~= fence
  local checked = prev ~= '' and not failed and not fenced
  local head = '0-0'
  if checked then
    if state[2] then
      head = state[2]
    else
      local last = redis.pcall('XREVRANGE', log, '+', '-', 'COUNT', 1)
      if last.err then
        failed = last.err
        checked = false
      elseif last[1] then
        head = last[1][1]
      end
    end
  end
  local lost = checked and state[3] ~= false
  -- The usual case: the log ends where the writer left it, every entry is new.
  local follows = checked and head == prev
  local expected = prev
  local written = nil
  local results = {}
  local partial = false
  for e = 1, count do
    local entry = entries[e]
    local id = entry[1]
    local n = #entry - 1
    if failed or fenced or lost or n == 0 then
      results[e] = ''
    elseif checked and not follows and not before(head, id) then
      results[e] = '!WRITTEN'
      partial = true
      expected = id
    elseif checked and not follows and expected ~= head then
      lost = true
      results[e] = ''
    else
      local reply = redis.pcall('XADD', log, id, unpack(entry, 2))
      if type(reply) == 'table' and reply.err then
        if refused_by_server(reply.err) then
          return redis.error_reply(reply.err)
        end
        results[e] = (checked and '!' or '!DUPLICATE ') .. reply.err
        partial = true
      else
        results[e] = reply
        head, expected, written = reply, reply, reply
      end
    end
  end
  if checked and not follows and not lost and before(head, expected) then
    lost = true
  end
  if failed then
    out[s] = '!' .. failed
  elseif fenced then
    out[s] = 'FENCED'
  elseif lost then
    out[s] = 'LOST ' .. head .. ' ' .. (state[4] or '-') .. ' ' .. (state[3] and '1' or '0')
  else
    local fields = part[4]
    if written then
      fields[#fields + 1] = 'head'
      fields[#fields + 1] = written
    end
    local reply = nil
    if #fields > 0 then
      reply = redis.pcall('HSET', meta, unpack(fields))
      if type(reply) == 'table' and reply.err and refused_by_server(reply.err) then
        return redis.error_reply(reply.err)
      end
    end
    if part[5] ~= '' then
      redis.pcall('PEXPIRE', meta, ttl)
      redis.pcall('PEXPIRE', log, ttl)
    end
    if announce and written then
      redis.pcall('SPUBLISH', log, written)
    end
    if type(reply) == 'table' and reply.err then
      out[s] = '!' .. reply.err
    elseif partial then
      out[s] = results
    else
      out[s] = count
    end
  end
end
return out
"""

# Writes back what a failover lost of one session, from its owner's memory: if the caller
# holds the fence, the log's head is the one it was told and the epoch the one it saw, the
# entries (a ``stream-reset`` first, so that every reader past the head hears of the new
# epoch), the meta fields, the new epoch, and ``lost`` cleared. KEYS: meta, log. ARGV: ttl
# ms, fence, head, epoch seen ('' = none), new epoch, meta count m, m field/values, then per
# entry its id, n and n field/values. Returns 'OK', 'FENCED', 'HEAD <head>' when the head
# moved meanwhile, or 'EPOCH <epoch>' when a reader gave the session a new epoch meanwhile.
_REPAIR = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then
  return 'FENCED'
end
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
if epoch ~= ARGV[4] then
  return 'EPOCH ' .. epoch
end
local head = redis.call('HGET', KEYS[1], 'head')
if not head then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  head = last[1] and last[1][1] or '0-0'
end
if head ~= ARGV[3] then
  return 'HEAD ' .. head
end
local m = tonumber(ARGV[6])
local i = 7 + m
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  head = redis.call('XADD', KEYS[2], ARGV[i], unpack(ARGV, i + 2, i + 1 + n))
  i = i + 2 + n
end
if m > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 7, 6 + m))
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[5], 'head', head)
redis.call('HDEL', KEYS[1], 'lost')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 'OK'
"""

# A reader found the log shorter than what it had delivered: a new epoch, and ``lost`` for
# the owner to see on its next write, unless the epoch changed already (someone else found
# it first). KEYS: meta. ARGV: the epoch the reader knew, a new one. Returns the session's
# epoch now, or nil when the session is gone.
_MARK_LOST = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return false
end
if epoch ~= ARGV[1] then
  return epoch
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'lost', '1')
return ARGV[2]
"""

# Moves a session to a new owner if it still belongs to the one the caller saw (and that
# one's fence): exactly one of several racing processes wins. The new fence is the count
# plus one and a random part, so that a claim a failover rolled back and another one made
# after it never hold the same fence. A claim sent again by its winner answers the same.
# KEYS: meta. ARGV: expected owner, expected fence, new owner, random part. Returns the new
# fence, or nil.
_CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local fence = redis.call('HGET', KEYS[1], 'fence')
if owner == ARGV[3] and fence then
  return fence
end
if owner ~= ARGV[1] or fence ~= ARGV[2] then
  return false
end
local claimed = (tonumber(string.match(fence, '^%d+')) + 1) .. ':' .. ARGV[4]
redis.call('HSET', KEYS[1], 'fence', claimed, 'owner', ARGV[3])
return claimed
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
#: On a Redis Cluster, connections per node and client at most: redis-py refuses a command
#: beyond them (it does not wait for a free one there), so they are many.
CLUSTER_CONNECTIONS = 256
#: The event a repair writes first, so that readers past the old head reload the log.
RESET_EVENT = "stream-reset"

#: What Sentinels announce on their pub/sub: the primary switched, and (by the one running
#: a failover) a replica about to be promoted.
SWITCHED = "+switch-master"
PROMOTING = "+failover-state-send-slaveof-noone"
#: Longest that commands wait for a promotion announced to end (a Sentinel promotes within
#: about a second; an aborted failover never says so).
HOLD_SECONDS = 3.0
#: Redis Cluster: after a node failed, its topology is looked at this often (seconds) for up
#: to HURRY_SECONDS, until a replica took the node's slots over (``cluster-node-timeout``,
#: 15 s by default, then about a second).
HURRY_INTERVAL = 0.2
HURRY_SECONDS = 30.0

#: A stream entry id as numbers, ``(ms, seq)``, compared as Redis compares them.
StreamId = tuple[int, int]
#: A client of one server (or the primary the Sentinels name), or of a Redis Cluster.
Client = aioredis.Redis | RedisCluster


def parse_id(entry_id: str) -> StreamId:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def format_id(position: StreamId) -> str:
    return f"{position[0]}-{position[1]}"


def chunk_id(seq: int) -> str:
    return f"{seq + 1}-0"


def meta_key(session_id: str) -> str:
    return f"stream:{{{session_id}}}:meta"


def log_key(session_id: str) -> str:
    return f"stream:{{{session_id}}}:log"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_epoch() -> str:
    """A log's history identity, made anew when the history changed (PROTOCOL.md "Epoch")."""
    return secrets.token_hex(4)


def _session_part(batch: Sequence[Append], indexes: list[int], fence: str) -> list[Any]:
    """One session's part of ``_APPEND``'s JSON argument: its fence, the entry its first item
    follows, its entries, then its meta fields (merged when several items have some: the last
    value of each field kept)."""
    first = batch[indexes[0]]
    if len(indexes) == 1:  # the usual case under load: one chunk per session and flush
        return [fence, first.after, [[first.entry_id, *first.fields]], first.meta, "1" if first.renew else ""]
    meta: dict[str, str] = {}
    entries = []
    renew = False
    for index in indexes:
        item = batch[index]
        entries.append([item.entry_id, *item.fields])
        if item.meta:
            meta.update(zip(item.meta[::2], item.meta[1::2], strict=True))
        renew = renew or item.renew
    return [
        fence,
        first.after,
        entries,
        [value for field in meta.items() for value in field],
        "1" if renew else "",
    ]


class Fenced(Exception):
    """The session has another owner now: this process may not write to it."""


class Lost(Exception):
    """The session's log is behind what its writer had written (a failover lost its end),
    or a reader flagged it so: nothing of this write went in."""

    def __init__(self, head: str, epoch: str | None, flagged: bool) -> None:
        super().__init__(f"the log ends at {head}")
        #: The id of the log's last entry as the store has it.
        self.head = parse_id(head)
        #: The session's epoch in the store (``None``: it has none).
        self.epoch = epoch
        #: A reader found it shorter and set a new epoch already.
        self.flagged = flagged


class Append(NamedTuple):
    """One log entry (or, with no ``entry_id``, meta fields alone) to write for a session
    this process owns; ``after`` is the id of this writer's entry before it (``''``: not
    checked); ``renew``: renew the session's keys' TTL (a writer that wrote a session lately
    may leave it out). A named tuple: one is made per chunk, and a frozen dataclass costs
    three times as much to make."""

    session_id: str
    fence: str
    entry_id: str
    fields: Sequence[str]
    meta: Sequence[str] = ()
    after: str = ""
    renew: bool = True


@dataclass(frozen=True, slots=True)
class Position:
    """What a reader checks of a log after a failover: its epoch (``None``: the session is
    gone) and the fields of the entry at the reader's cursor (``None``: the log has none)."""

    epoch: str | None
    at_cursor: dict[str, str] | None


@asynccontextmanager
async def _reaching(link: RedisLink) -> AsyncIterator[None]:
    """Redis errors that are about reaching Redis become :class:`StoreUnavailable`; those
    that say the primary may have moved also make ``link`` ask the Sentinels again. While a
    replica is being promoted, the command waits for the new primary."""
    await link.ready()
    try:
        yield
    except ResponseError as exc:
        if _moved(exc):
            link.moved()
            raise StoreUnavailable("The session store is unavailable: try again shortly") from exc
        raise
    except (RedisError, OSError, SlotNotCoveredError, RedisClusterUnreachableError) as exc:
        raise_if_cancelling(exc)
        link.moved()
        raise StoreUnavailable("The session store is unavailable: try again shortly") from exc


def _moved(exc: BaseException) -> bool:
    """A reply that says this server is no longer the one to write to (or, on a Redis
    Cluster, that the slot has no primary that answers now)."""
    if isinstance(exc, ClusterDownError | TryAgainError):
        return True
    return str(exc).startswith(("READONLY", "NOREPLICAS", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"))


# -- where Redis is --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is: one server (``url``), the primary that ``sentinels`` name for
    ``master``, or a Redis Cluster (``cluster``: URLs of some of its nodes, from which the
    others are found). Passwords (a URL may carry one) stay out of ``repr``."""

    url: str | None = field(default=None, repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    cluster: tuple[str, ...] = field(default=(), repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    #: Seconds between two asks of the Sentinels which server is the primary (on a Redis
    #: Cluster: between two looks at which primaries serve which slots).
    check_interval: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisTarget:
        if settings.redis_cluster_url:
            return cls(
                cluster=tuple(url.strip() for url in settings.redis_cluster_url.split(",") if url.strip()),
                password=_secret(settings.redis_password),
                check_interval=settings.redis_primary_check_interval,
            )
        if settings.redis_sentinels:
            return cls(
                sentinels=tuple(_host_port(entry) for entry in settings.redis_sentinels),
                master=settings.redis_sentinel_master or "",
                password=_secret(settings.redis_password),
                sentinel_password=_secret(settings.redis_sentinel_password),
                check_interval=settings.redis_primary_check_interval,
            )
        assert settings.redis_url is not None
        return cls(url=settings.redis_url)


def _host_port(entry: str) -> tuple[str, int]:
    host, _, port = entry.strip().rpartition(":")
    return host.strip("[]"), int(port)


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def _address(address: tuple[str, int] | None) -> str:
    return "?" if address is None else f"{address[0]}:{address[1]}"


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


def _cluster_nodes(target: RedisTarget) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The nodes a Redis Cluster target names, and the first URL's options for every node
    (password, TLS; a cluster has one database)."""
    nodes: list[tuple[str, int]] = []
    first: dict[str, Any] | None = None
    for url in target.cluster:
        options = dict(parse_url(url))
        nodes.append((str(options.pop("host", "localhost")), int(cast(int, options.pop("port", 6379)))))
        if first is None:
            first = options
    options = dict(first or {})
    options.pop("db", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    if options.get("password") is None:
        options["password"] = target.password
    return nodes, options


class _Sentinels(Sentinel):
    """redis-py's Sentinel client, asking every Sentinel at once and believing the newest
    configuration. Right after a failover the Sentinels disagree: the one running it still
    names the old primary (flagged ``failover_in_progress``) until the promoted replica
    reports itself primary, while the others already name the new one under the same
    config epoch; redis-py's own ``discover_master`` believes whichever answers first."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        replies = await asyncio.gather(
            *(sentinel.sentinel_master(service_name) for sentinel in self.sentinels), return_exceptions=True
        )
        votes: dict[tuple[int, bool, str, int], int] = {}
        for reply in replies:
            if isinstance(reply, BaseException):
                if not isinstance(reply, RedisError | OSError):
                    raise reply
                continue
            state = cast(dict[str, Any], reply)
            if self.check_master_state(state, service_name):
                settled = "failover_in_progress" not in str(state["flags"])
                key = (int(state["config-epoch"]), settled, str(state["ip"]), int(state["port"]))
                votes[key] = votes.get(key, 0) + 1
        if not votes:
            raise MasterNotFoundError(f"No Sentinel names a primary for {service_name!r}")
        # The newest epoch; in it, what a Sentinel not failing over says; then the most said.
        *_, host, port = max(votes, key=lambda key: (key[0], key[1], votes[key]))
        return host, port


class _SentinelPool(SentinelConnectionPool):
    """Connections to the primary the Sentinels name. One still open to another server (the
    primary before a failover) is closed before it is handed out: redis-py's asyncio pool
    would hand it out as it is, and a client would go on writing to the old primary."""

    async def ensure_connection(self, connection: Any) -> None:
        address = (connection.host, connection.port)
        if self.master_address is not None and connection.is_connected and address != self.master_address:
            await connection.disconnect()
        await super().ensure_connection(connection)


class _BlockingSentinelPool(_SentinelPool, BlockingConnectionPool):
    """:class:`_SentinelPool`, where a burst of requests waits for a free connection (as
    :class:`BlockingConnectionPool`) instead of failing at once."""


class RedisLink:
    """This process's way to the Redis primary: it makes the clients, and with Sentinels it
    follows the primary through failovers.

    redis-py asks the Sentinels only when a connection (re)connects, so after a manual
    failover a client keeps writing to the old primary until it is demoted, about ten
    seconds later (research/redis.md 3.2): those writes are acknowledged and lost. The link
    asks the Sentinels every ``check_interval`` and as soon as one announces
    ``+switch-master`` (or a reply says the server moved: ``READONLY``, ``NOREPLICAS``, a
    lost connection), and when the primary changed it closes every connection of its
    clients, in use or not, so that each reconnects to the new one.

    On a Redis Cluster (``target.cluster``) its clients are redis-py's cluster clients, which
    follow the slots to their primaries by themselves (a demoted primary answers ``MOVED``);
    the link looks at which primary serves which slots every ``check_interval`` (and at once
    when a node fails), so that a failover inside the cluster is noticed like a Sentinel
    one (:attr:`generation`), and it holds the process's sharded subscriptions
    (:meth:`subscriber`).
    """

    def __init__(self, target: RedisTarget, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        #: How many times the primary moved since this process started (on a Redis Cluster:
        #: the primary of some slots).
        self.generation = 0
        #: Redis Cluster mode.
        self.cluster = bool(target.cluster)
        self._clusters: list[RedisCluster] = []
        self._watch: RedisCluster | None = None
        self._layout: Layout | None = None
        self._subscribers: list[ShardSubscriber] = []
        #: Until when the topology is looked at every HURRY_INTERVAL (a node failed).
        self._hurry_until = 0.0
        #: The primary as last found (Sentinel mode), ``(host, port)``.
        self.primary: tuple[str, int] | None = None
        self._pools: list[ConnectionPool] = []
        self._check: asyncio.Event | None = None
        self._on_switch: list[Callable[[], None]] = []
        self._waiters: set[asyncio.Future[None]] = set()
        self._released = _set_event()
        self._sentinels: _Sentinels | None = None
        if target.sentinels:
            # Sentinels answer at once or are down: never wait the whole store timeout on one.
            quick = min(timeout, 1.0)
            self._sentinels = _Sentinels(
                list(target.sentinels),
                sentinel_kwargs={
                    "decode_responses": True,
                    "password": target.sentinel_password,
                    "socket_timeout": quick,
                    "socket_connect_timeout": quick,
                },
            )

    def client(
        self,
        *,
        max_connections: int | None = None,
        socket_timeout: float | None = None,
        retries: int = 3,
        **options: Any,
    ) -> Client:
        """A client of the primary, followed through failovers. ``max_connections``: at most
        that many at once, a request waiting up to the timeout for a free one; ``None``: as
        many as asked (a client for one blocking reader). With Sentinels, a command that
        meets a moved primary is sent again up to ``retries`` times, to the new one: every
        write here is safe to resend (see the scripts above); a reader that must notice the
        move (it checks what it read) takes none. On a Redis Cluster: a cluster client
        (:meth:`cluster_client`)."""
        if self.cluster:
            return self.cluster_client(
                max_connections=max_connections, socket_timeout=socket_timeout, retries=retries, **options
            )
        timeout = self.timeout
        kwargs: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": timeout if socket_timeout is None else socket_timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": max(1, int(timeout)),
            **options,
        }
        pool: ConnectionPool
        if self._sentinels is None:
            assert self.target.url is not None
            if max_connections is None:
                pool = ConnectionPool.from_url(self.target.url, **kwargs)
            else:
                pool = BlockingConnectionPool.from_url(
                    self.target.url, max_connections=max_connections, timeout=timeout, **kwargs
                )
        else:
            kwargs["retry"] = Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries)
            kwargs["password"] = self.target.password
            if max_connections is None:
                pool = _SentinelPool(self.target.master, self._sentinels, **kwargs)  # type: ignore[no-untyped-call]
            else:
                pool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
                    self.target.master,
                    self._sentinels,
                    max_connections=max_connections,
                    timeout=timeout,
                    **kwargs,
                )
        self._pools.append(pool)
        return aioredis.Redis(connection_pool=pool)

    def cluster_client(
        self,
        *,
        max_connections: int | None = None,
        socket_timeout: float | None = None,
        retries: int = 3,
        **options: Any,
    ) -> RedisCluster:
        """A client of the Redis Cluster, found from the nodes the target names (the first
        URL's password and TLS apply to every node). A command that meets a node that does
        not answer is sent again up to ``retries`` times, after redis-py looked at the
        topology again. redis-py never waits for a free connection on a cluster: it holds
        at most ``max_connections`` per node (at least :data:`CLUSTER_CONNECTIONS`) and
        refuses more."""
        timeout = self.timeout
        client = self._new_cluster_client(
            max(max_connections or 0, CLUSTER_CONNECTIONS),
            timeout if socket_timeout is None else socket_timeout,
            timeout,
            retries,
            **options,
        )
        self._clusters.append(client)
        return client

    def _new_cluster_client(
        self,
        max_connections: int,
        socket_timeout: float,
        connect_timeout: float,
        retries: int,
        **options: Any,
    ) -> RedisCluster:
        nodes, url_options = _cluster_nodes(self.target)
        kwargs: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "health_check_interval": max(1, int(self.timeout)),
            **url_options,
            "decode_responses": True,
            **options,
        }
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            max_connections=max_connections,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries),
            # After an error, the slots are asked again this soon (redis-py's default, 1 s,
            # would hold writes that long after a replica took a dead primary's slots over).
            topology_refresh_min_interval=HURRY_INTERVAL,
            **kwargs,
        )

    def _node_client(self, host: str, port: int) -> aioredis.Redis:
        """A client of one node of the Redis Cluster (a sharded subscription): it fails at
        once when the node does not answer, and the subscriber moves on."""
        kwargs: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "health_check_interval": max(1, int(self.timeout)),
            **_cluster_nodes(self.target)[1],
            "decode_responses": True,
        }
        return aioredis.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **kwargs)

    def subscriber(self) -> ShardSubscriber:
        """The sharded subscriptions of this link's readers (Redis Cluster), shared."""
        if not self._subscribers:
            return self.new_subscriber()
        return self._subscribers[0]

    def new_subscriber(self) -> ShardSubscriber:
        """Sharded subscriptions of their own (Redis Cluster): whether they are all in place
        (:attr:`ShardSubscriber.settled`) is about them alone."""
        subscriber = ShardSubscriber(self.layout, self._node_client, self.moved)
        self._subscribers.append(subscriber)
        return subscriber

    async def layout(self) -> Layout:
        """Which primary serves which slots (Redis Cluster), as last seen; looked at now
        when never seen."""
        if self._layout is None:
            await self._look_cluster()
            if self._layout is None:
                raise RedisError("no node of the Redis Cluster answers")
        return self._layout

    def on_switch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the primary moves."""
        self._on_switch.append(callback)

    async def switched(self, within: float) -> None:
        """Return after ``within`` seconds, or as soon as the primary moves (a writer that
        backs off from a dead primary retries on the new one at once)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await waiter
        finally:
            self._waiters.discard(waiter)

    def _hold(self) -> None:
        """A Sentinel is about to promote a replica while the primary may still be up (a
        manual failover): what is written to the old primary from now on would be lost, so
        commands wait until the new primary is found (or :data:`HOLD_SECONDS` at most)."""
        loop = asyncio.get_running_loop()
        log.info("redis: a replica is being promoted; holding commands until the new primary is found")
        self._released = asyncio.Event()
        loop.call_later(HOLD_SECONDS, self._released.set)

    def is_ready(self) -> bool:
        """No promotion is in progress (:meth:`ready` would return at once)."""
        return self._released.is_set()

    async def ready(self) -> None:
        """Return at once, or when a promotion in progress is over (:meth:`_hold`)."""
        if not self._released.is_set():
            await self._released.wait()

    def moved(self) -> None:
        """A reply or an error says the primary may have moved: ask the Sentinels now (on a
        Redis Cluster: look at the topology now, then often until it changes, so that a
        replica's takeover is seen within :data:`HURRY_INTERVAL`)."""
        if self._check is not None:
            self._check.set()
        if self.cluster:
            self._hurry_until = time.monotonic() + HURRY_SECONDS

    async def follow(self) -> None:
        """Follow the primary for the app's lifetime (Sentinel mode; a Redis Cluster: its
        topology; one server: nothing to follow)."""
        if self._sentinels is None and not self.cluster:
            return
        self._check = asyncio.Event()
        sentinels = self._sentinels.sentinels if self._sentinels is not None else []
        listeners = [asyncio.get_running_loop().create_task(self._listen(sentinel)) for sentinel in sentinels]
        try:
            while True:
                await (self._look_cluster() if self.cluster else self._look())
                interval = self.target.check_interval
                if time.monotonic() < self._hurry_until:
                    interval = min(interval, HURRY_INTERVAL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await self._check.wait()
                self._check.clear()
        finally:
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)

    async def _look(self) -> None:
        """Ask the Sentinels which server is the primary; when it is not the one the clients
        talk to, close their connections so that they reconnect to it."""
        assert self._sentinels is not None
        try:
            primary = await self._sentinels.discover_master(self.target.master)
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            log.debug("redis: no primary named by the Sentinels now: %s", exc)
            return
        moved = self.primary is not None and primary != self.primary
        if moved:
            # Counted before the connections close: a reader that sees them fail sees this too.
            self.generation += 1
            log.warning("redis: the primary moved from %s to %s:%d", _address(self.primary), *primary)
        self.primary = primary
        for pool in self._pools:
            if isinstance(pool, SentinelConnectionPool) and pool.master_address not in (None, primary):
                pool.master_address = primary
                await pool.disconnect(inuse_connections=True)
        if moved:
            self._released.set()
            for callback in self._on_switch:
                callback()
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _look_cluster(self) -> None:
        """Ask the cluster which primary serves which slots; when that changed (a failover,
        slots moved), tell whoever follows the primary, as a Sentinel failover does."""
        if self._watch is None:
            # Its own client, which answers at once or fails: the topology is looked at often.
            quick = min(self.timeout, 1.0)
            self._watch = self._new_cluster_client(4, quick, quick, 0)
        try:
            layout = await topology(self._watch, min(self.timeout, 1.0))
        except (RedisError, OSError, RedisClusterException) as exc:
            raise_if_cancelling(exc)
            log.debug("redis cluster: no node answers now: %s", type(exc).__name__)
            return
        moved = self._layout is not None and layout != self._layout
        self._layout = layout
        if not moved:
            return
        self._hurry_until = 0.0
        self.generation += 1
        log.warning(
            "redis cluster: the primaries moved; now %s",
            ", ".join(f"{first}-{last} at {primary}" for first, last, primary in layout),
        )
        with contextlib.suppress(RedisError, OSError, RedisClusterException):
            # Nodes added since are asked next time too.
            await self._watch.nodes_manager.initialize()
        for subscriber in self._subscribers:
            subscriber.topology_changed()
        for callback in self._on_switch:
            callback()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _listen(self, sentinel: aioredis.Redis) -> None:
        """What one Sentinel announces: a replica about to be promoted (hold the commands),
        the primary switched (look at once)."""
        delay = 0.1
        while True:
            pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(SWITCHED, PROMOTING)
                delay = 0.1
                async for message in pubsub.listen():
                    # "+switch-master <name> <old ip> <old port> <new ip> <new port>";
                    # "+failover-state-send-slaveof-noone slave <ip:port> <ip> <port> @ <name> ...".
                    words = str(message.get("data", "")).split()
                    if message.get("channel") == SWITCHED and words[:1] == [self.target.master]:
                        self.moved()
                    elif message.get("channel") == PROMOTING and words[5:6] == [self.target.master]:
                        self._hold()
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.disconnect()
        for subscriber in self._subscribers:
            await subscriber.aclose()
        for client in [*self._clusters, *([self._watch] if self._watch is not None else [])]:
            await client.aclose()
        if self._sentinels is not None:
            await self._sentinels.aclose()


# -- reading many logs at once -------------------------------------------------------------


class BlockingReads:
    """What the readers of many streams (the relay, the documents' follower) use on one
    Redis server: one ``XREAD BLOCK`` over all of them, which an entry in this reader's
    own wake stream ``wake_key`` ends early (the reader follows other streams now)."""

    #: Never: one server answers for all of the streams or for none.
    incomplete = False

    def __init__(self, client: aioredis.Redis, wake_key: Any, wake_ttl_ms: int | None = None) -> None:
        self._client = client
        self._wake_key = wake_key
        self._wake_cursor: Any = b"0-0" if isinstance(wake_key, bytes) else "0-0"
        self._wake_ttl_ms = wake_ttl_ms

    async def read(self, streams: dict[Any, Any], block_ms: int | None, count: int) -> list[tuple[Any, Any]]:
        """``XREAD [BLOCK block_ms] COUNT count STREAMS ...`` and the wake stream."""
        result: Any = await self._client.xread(
            {self._wake_key: self._wake_cursor, **streams}, count=count, block=block_ms
        )
        out = []
        for key, entries in result or ():
            if key == self._wake_key:
                self._wake_cursor = entries[-1][0]
            else:
                out.append((key, entries))
        return out

    async def wake(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=16, approximate=True)
        if self._wake_ttl_ms is not None:
            pipe.pexpire(self._wake_key, self._wake_ttl_ms)
        await pipe.execute()


#: Many streams read at once: one blocking ``XREAD`` on one server, announced reads on a
#: Redis Cluster.
StreamReads = BlockingReads | ClusterReads


def stream_reads(
    link: RedisLink, client: Client, wake_key: Any, wake_ttl_ms: int | None = None
) -> StreamReads:
    """How a reader of many streams reads them through ``client``: :class:`BlockingReads`
    on one server, :class:`~server.cluster.redis_cluster.ClusterReads` on a Redis Cluster
    (where ``XREAD`` cannot block on the streams of several slots)."""
    if isinstance(client, RedisCluster):
        return ClusterReads(client, link.subscriber())
    return BlockingReads(client, wake_key, wake_ttl_ms)


# -- the append's own connection ---------------------------------------------------------

#: How long after a failure of the append's own connection it is opened again (meanwhile
#: appends take the client's connections).
WIRE_RETRY_SECONDS = 1.0

#: What :meth:`RedisStore.send_append` calls with the replies of its call, or ``None``
#: when there are none to trust (the connection failed or timed out).
Answered = Callable[[list[Any] | None], None]


class _AppendWire(asyncio.Protocol):
    """A connection to the primary for appends only, opened by redis-py (address, TLS,
    password, database) and then read here: each reply is parsed as it arrives and handed
    to its caller in the loop callback that reads it. Through redis-py's connection the
    reply wakes a task, which runs one loop turn later; on a busy loop a turn is tens of
    milliseconds, and every chunk waits for it (issue 20).

    Calls are pipelined and answered in order. Anything unusual (the connection closed or
    reset, no reply within ``timeout``, a reply that cannot be parsed) closes it and
    answers every call still waiting with ``None``: its caller sends them again through
    redis-py, whose errors and retries then apply."""

    def __init__(self, timeout: float, generation: int) -> None:
        self.timeout = timeout
        #: The primary's generation (:attr:`RedisLink.generation`) it was opened under.
        self.generation = generation
        self.transport: asyncio.Transport | None = None
        #: redis-py's connection that opened it: kept, since redis-py closes the transport
        #: of a connection it collects.
        self.connection: object = None
        self._reader = hiredis.Reader(replyError=ResponseError, encoding="utf-8")
        #: Calls sent and not answered: when sent (loop time), how many replies, the callback.
        self._waiting: deque[tuple[float, int, Answered]] = deque()
        self._replies: list[Any] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes, replies: int, answered: Answered) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.transport.write(data)
        self._waiting.append((loop.time(), replies, answered))
        if self._timer is None:
            self._timer = loop.call_later(self.timeout, self._check)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                replies = self._replies
                replies.append(reply)
                if not self._waiting:
                    raise ValueError("a reply that no call waits for")
                if len(replies) == self._waiting[0][1]:
                    answered = self._waiting.popleft()[2]
                    self._replies = []
                    answered(replies)
        except (hiredis.HiredisError, ValueError) as exc:
            log.warning("redis: the append connection read %s; closing it", exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for _, _, answered in waiting:
            answered(None)

    def _check(self) -> None:
        """Close the connection when its oldest call is not answered within the timeout."""
        self._timer = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        due = self._waiting[0][0] + self.timeout
        if loop.time() >= due:
            log.warning("redis: no answer to an append within %.1f s; closing its connection", self.timeout)
            self.close()
        else:
            self._timer = loop.call_at(due, self._check)


# -- the store ---------------------------------------------------------------------------


class RedisStore:
    """The server's Redis calls; every method raises :class:`StoreUnavailable` when Redis
    cannot be reached.

    ``wait_replicas`` > 0: each append is followed by ``WAIT wait_replicas wait_timeout_ms``
    on its connection, so that what the viewers get next is on that many replicas too; when
    fewer answer in time the entries are delivered anyway (the stream goes on, a failover
    may then lose them, and the loss is detected), counted in :attr:`unreplicated` and
    logged once until the replicas catch up."""

    def __init__(
        self,
        target: str | RedisTarget,
        *,
        timeout: float,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self.link = RedisLink(RedisTarget(url=target) if isinstance(target, str) else target, timeout=timeout)
        self.redis: Client = self.link.client(max_connections=MAX_CONNECTIONS)
        if self.link.cluster:
            # Reads do not block on a cluster (ClusterReads). Appends go through this client
            # too: a node that does not answer fails their call at once, and the journal
            # tries that node's sessions again while the others go on.
            self.reader: Client = self.link.client(retries=0)
        else:
            # XREAD BLOCK holds its connection; its own client waits longer than it blocks.
            self.reader = self.link.client(socket_timeout=timeout + 5, retries=0)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        #: Appends that fewer than ``wait_replicas`` replicas had when ``WAIT`` returned.
        self.unreplicated = 0
        self._replicas_behind = False
        self._append_sha = hashlib.sha1(_APPEND.encode()).hexdigest()
        self._claim = self.redis.register_script(_CLAIM)
        self._reserve = self.redis.register_script(_RESERVE)
        self._repair = self.redis.register_script(_REPAIR)
        self._mark_lost = self.redis.register_script(_MARK_LOST)
        #: The append's own connection (:meth:`send_append`), being opened, and not before
        #: when (loop time) after a failure.
        self._wire: _AppendWire | None = None
        self._opening: asyncio.Task[None] | None = None
        self._wire_after = 0.0
        self._closed = False
        self.link.on_switch(self._drop_wire)

    async def close(self) -> None:
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
        self._drop_wire()
        await self.redis.aclose()
        await self.reader.aclose()
        await self.link.aclose()

    def _guard(self) -> contextlib.AbstractAsyncContextManager[None]:
        return _reaching(self.link)

    async def ping(self) -> None:
        async with self._guard():
            if isinstance(self.redis, RedisCluster):
                # One node that answers: a cluster whose other shards fail still serves theirs.
                await self.redis.ping(target_nodes=RedisCluster.DEFAULT_NODE)
            else:
                await self.redis.ping()

    # -- sessions ------------------------------------------------------------

    async def reserve(self, user_id: str, session_id: str, limit: int, ttl_ms: int) -> bool:
        """Count a new live session against its user's quota; ``False`` when it is full."""
        async with self._guard():
            return bool(
                await self._reserve(keys=[f"user:{{{user_id}}}:live"], args=[session_id, limit, ttl_ms])
            )

    async def release(self, user_id: str, session_id: str, owner: str) -> None:
        """A session ended: it no longer counts for its user or its owner."""
        await self.release_all([(user_id, session_id)], owner)

    async def release_all(self, sessions: Sequence[tuple[str, str]], owner: str) -> None:
        """Sessions (``(user id, session id)``) ended: they no longer count for their users
        or their owner; one round trip for all."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for user_id, session_id in sessions:
                pipe.srem(f"user:{{{user_id}}}:live", session_id)
            pipe.srem(f"proc:{{{owner}}}:sessions", *(session_id for _, session_id in sessions))
            await pipe.execute()

    async def put_session(self, session_id: str, meta: dict[str, str], owner: str, ttl_ms: int) -> None:
        """Write a new session's meta hash, owned by ``owner`` with fence 1."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            fields: dict[Any, Any] = {**meta, "owner": owner, "fence": "1"}
            pipe.hset(meta_key(session_id), mapping=fields)
            pipe.pexpire(meta_key(session_id), ttl_ms)
            pipe.sadd(f"proc:{{{owner}}}:sessions", session_id)
            await pipe.execute()

    async def load(self, session_id: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str]]]] | None:
        """A session's meta hash and its whole log, or ``None`` when it does not exist."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(meta_key(session_id))
            pipe.xrange(log_key(session_id))
            meta, entries = await pipe.execute()
        if not meta:
            return None
        return meta, entries

    async def meta(self, session_id: str) -> dict[str, str] | None:
        """A session's meta hash, or ``None`` when it does not exist."""
        async with self._guard():
            meta = cast(dict[str, str], await self.redis.hgetall(meta_key(session_id)))
            return meta or None

    async def entries_after(self, session_id: str, after: str) -> list[tuple[str, dict[str, str]]]:
        """Log entries with an id greater than ``after``."""
        async with self._guard():
            result = await self.redis.xrange(log_key(session_id), f"({after}")
            return cast(list[tuple[str, dict[str, str]]], result)

    async def owner(self, session_id: str) -> str | None:
        """The process that owns a session, or ``None`` when the session does not exist."""
        async with self._guard():
            owner = await self.redis.hget(meta_key(session_id), "owner")
            return None if owner is None else str(owner)

    async def exists(self, session_id: str) -> bool:
        async with self._guard():
            return bool(await self.redis.exists(meta_key(session_id)))

    async def append(self, batch: Sequence[Append], ttl_ms: int) -> list[str | Exception]:
        """Write ``batch`` in one round trip and one script call: each session's entries in
        order, its meta fields once. Each item's result is its entry id, or the
        :class:`Fenced` / :class:`Lost` / ``ResponseError`` that refused it.

        On a Redis Cluster: one script call per hash slot, in one pipeline per node, the nodes
        at once; an item whose node did not answer (or refused the whole call) gets
        :class:`StoreUnavailable`: nothing of its session was written in this call, while the
        other nodes' sessions were."""
        groups: dict[tuple[str, str], list[int]] = {}
        for index, item in enumerate(batch):
            groups.setdefault((item.session_id, item.fence), []).append(index)
        out: list[str | Exception] = [""] * len(batch)
        if not isinstance(self.reader, RedisCluster):
            call = list(groups)
            async with self._guard():
                reply = await self._append_call(self._append_args(batch, groups, call, ttl_ms))
            if isinstance(reply, Exception):
                # The script did not run (out of memory, a read-only replica, ...): nothing was
                # written, so nothing may be delivered; the journal retries the whole batch.
                if _moved(reply):
                    self.link.moved()
                raise StoreUnavailable(f"redis refused the append: {reply}")
            self._appended(out, batch, groups, call, reply)
            return out
        slots: dict[int, list[tuple[str, str]]] = {}
        for group in groups:
            slots.setdefault(slot_of(meta_key(group[0])), []).append(group)
        calls = list(slots.values())
        replies = await self._append_cluster(
            self.reader,
            [(slot, self._append_args(batch, groups, call, ttl_ms)) for slot, call in slots.items()],
        )
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                if not isinstance(reply, StoreUnavailable) and _moved(reply):
                    self.link.moved()
                unavailable = (
                    reply
                    if isinstance(reply, StoreUnavailable)
                    else StoreUnavailable(f"redis refused the append: {reply}")
                )
                for group in call:
                    for index in groups[group]:
                        out[index] = unavailable
                continue
            self._appended(out, batch, groups, call, reply)
        return out

    def send_append(
        self, batch: Sequence[Append], ttl_ms: int, answered: Callable[[list[str | Exception] | None], None]
    ) -> bool:
        """Send ``batch`` as :meth:`append` does, on the append's own connection
        (:class:`_AppendWire`), and call ``answered`` with the items' results in the loop
        callback that reads the reply. ``answered(None)``: no result to trust (the
        connection failed, or the script did not run: ``NOSCRIPT``, a read-only replica,
        ...): the caller sends the batch again with :meth:`append`, which handles those.
        ``False``: not sent (a Redis Cluster, the connection not open yet, a failover under
        way); the connection is opened meanwhile."""
        wire = self._wire
        link = self.link
        if wire is None or not wire.open or wire.generation != link.generation or not link.is_ready():
            self._want_wire()
            return False
        groups: dict[tuple[str, str], list[int]] = {}
        for index, item in enumerate(batch):
            groups.setdefault((item.session_id, item.fence), []).append(index)
        call = list(groups)
        pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)
        data = pack(("EVALSHA", self._append_sha, *self._append_args(batch, groups, call, ttl_ms)))
        count = 1
        if self.wait_replicas:
            data += pack(("WAIT", self.wait_replicas, self.wait_timeout_ms))
            count = 2

        def received(replies: list[Any] | None) -> None:
            if replies is None:
                if not self._closed:  # closed: the journal has stopped, nothing to send again
                    answered(None)
                return
            reply = replies[0]
            if isinstance(reply, Exception):
                if _moved(reply):
                    self._drop_wire()
                answered(None)
                return
            if count == 2:
                self._replicated(replies[1])
            out: list[str | Exception] = [""] * len(batch)
            self._appended(out, batch, groups, call, reply)
            answered(out)

        wire.send(data, count, received)
        return True

    def _want_wire(self) -> None:
        """Open the append's own connection, unless it is being opened or failed lately."""
        if self.link.cluster or self._closed or self._opening is not None:
            return
        loop = asyncio.get_running_loop()
        wire = self._wire
        if wire is not None:
            # Closed (it failed) or opened before the primary moved: a new one, later.
            self._drop_wire()
            self._wire_after = loop.time() + WIRE_RETRY_SECONDS
        if loop.time() < self._wire_after:
            return
        self._opening = loop.create_task(self._open_wire())

    async def _open_wire(self) -> None:
        """redis-py opens the connection (it finds the primary, speaks TLS, authenticates,
        selects the database); then its replies are read by :class:`_AppendWire`."""
        generation = self.link.generation
        try:
            await self.link.ready()
            pool = cast(aioredis.Redis, self.redis).connection_pool
            connection = pool.make_connection()  # type: ignore[no-untyped-call]
            await connection.connect()
            # Its first call finds the script (a new or restarted Redis has none).
            await connection.send_command("SCRIPT", "LOAD", _APPEND)
            await connection.read_response()
            # redis-py has no public way to its transport. A version without this attribute
            # keeps every append on the client's connections.
            writer = getattr(connection, "_writer", None)
            if writer is None or not hasattr(writer, "transport"):
                log.warning("redis: this redis-py gives no transport; appends use the client's connections")
                await connection.disconnect()
                self._wire_after = math.inf
                return
            wire = _AppendWire(self.link.timeout, generation)
            transport = cast(asyncio.Transport, writer.transport)
            wire.transport = transport
            wire.connection = connection
            transport.set_protocol(wire)
            if generation != self.link.generation or self._closed:
                wire.close()
                return
            self._wire = wire
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            log.debug("redis: could not open the append connection: %s", exc)
            self._wire_after = asyncio.get_running_loop().time() + WIRE_RETRY_SECONDS
        finally:
            self._opening = None

    def _drop_wire(self) -> None:
        """Close the append's own connection (the primary moved, or it failed): the calls it
        still waits for are answered ``None`` and sent again."""
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()

    def _append_args(
        self,
        batch: Sequence[Append],
        groups: dict[tuple[str, str], list[int]],
        call: list[tuple[str, str]],
        ttl_ms: int,
    ) -> list[Any]:
        """``_APPEND``'s keys count, keys and arguments for the sessions of ``call``."""
        keys: list[Any] = [2 * len(call)]
        parts = []
        for group in call:
            session_id, fence = group
            keys += (f"stream:{{{session_id}}}:meta", f"stream:{{{session_id}}}:log")
            parts.append(_session_part(batch, groups[group], fence))
        return [*keys, ttl_ms, "1" if self.link.cluster else "", orjson.dumps(parts)]

    @staticmethod
    def _appended(
        out: list[str | Exception],
        batch: Sequence[Append],
        groups: dict[tuple[str, str], list[int]],
        call: list[tuple[str, str]],
        reply: Any,
    ) -> None:
        """What ``_APPEND`` answered for the sessions of ``call``, item by item, in ``out``."""
        for group, result in zip(call, cast(list[Any], reply), strict=True):
            indexes = groups[group]
            if isinstance(result, str) and (result == "FENCED" or result.startswith(("!", "LOST "))):
                refused = _refusal(result)
                for index in indexes:
                    out[index] = refused
                continue
            if isinstance(result, int):  # all written: the ids as asked
                for index in indexes:
                    out[index] = batch[index].entry_id
                continue
            for index, entry in zip(indexes, cast(list[str], result), strict=True):
                if entry == "!WRITTEN":
                    out[index] = batch[index].entry_id
                else:
                    out[index] = ResponseError(entry[1:]) if entry.startswith("!") else entry

    async def _append_call(self, call: list[Any]) -> Any:
        """``EVALSHA`` of the append (then ``WAIT``, when asked) in one pipeline, without
        redis-py's ``SCRIPT EXISTS`` before every pipeline; sent again once the script is
        loaded when Redis answers ``NOSCRIPT`` (a restarted or flushed Redis)."""
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            pipe.evalsha(self._append_sha, *call)
            if self.wait_replicas:
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            results = await pipe.execute(raise_on_error=False)
            reply = results[0]
            if _no_script(reply):
                if attempt == 1:
                    return ResponseError("NOSCRIPT after SCRIPT LOAD")
                await self.redis.script_load(_APPEND)
                continue
            if self.wait_replicas:
                self._replicated(results[1])
            return reply
        raise AssertionError("unreachable")

    async def _append_cluster(self, client: RedisCluster, calls: list[tuple[int, list[Any]]]) -> list[Any]:
        """The calls of :meth:`append` on a Redis Cluster (each with its slot): a pipeline
        per node, the nodes at once. Each call's reply, or the :class:`StoreUnavailable` of
        its node."""
        async with self._guard():
            await client.initialize()
        nodes = list(by_node(client, ((slot, index) for index, (slot, _) in enumerate(calls))).values())
        answers = await asyncio.gather(
            *(
                self._append_node(client, node, [calls[index][1] for index in indexes])
                for node, indexes in nodes
            ),
            return_exceptions=True,
        )
        replies: list[Any] = [None] * len(calls)
        for (_, indexes), answer in zip(nodes, answers, strict=True):
            if isinstance(answer, asyncio.CancelledError):
                # redis-py may end a pipeline with a CancelledError of its own: that node's
                # calls did not answer, unless this task is being cancelled.
                raise_if_cancelling(answer)
                answer = [StoreUnavailable("The session store is unavailable: try again shortly")] * len(
                    indexes
                )
            elif isinstance(answer, BaseException):
                raise answer
            for index, reply in zip(indexes, answer, strict=True):
                replies[index] = reply
        return replies

    async def _append_node(
        self, client: RedisCluster, node: ClusterNode, calls: list[list[Any]]
    ) -> list[Any]:
        """One node's calls in one pipeline (then its ``WAIT``, when asked); the calls Redis
        answers ``NOSCRIPT`` (a node that restarted, a replica promoted: the scripts are not
        replicated) are sent again once the script is loaded there."""
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        try:
            for attempt in range(2):
                async with self._guard():
                    pipe = client.pipeline(transaction=False)
                    for index in pending:
                        pipe.evalsha(self._append_sha, *calls[index])
                    if self.wait_replicas:
                        pipe.execute_command(
                            "WAIT", self.wait_replicas, self.wait_timeout_ms, target_nodes=node
                        )
                    results = await pipe.execute(raise_on_error=False)
                missing = []
                for index, result in zip(pending, results, strict=False):
                    replies[index] = result
                    if _no_script(result):
                        missing.append(index)
                if self.wait_replicas:
                    self._replicated(results[-1])
                if not missing:
                    break
                if attempt == 1:
                    for index in missing:
                        replies[index] = ResponseError("NOSCRIPT after SCRIPT LOAD")
                    break
                async with self._guard():
                    await client.execute_command("SCRIPT LOAD", _APPEND, target_nodes=node)
                pending = missing
        except StoreUnavailable as exc:
            return [exc] * len(calls)
        return replies

    def _replicated(self, acked: Any) -> None:
        """What ``WAIT`` answered for the batch just written."""
        if isinstance(acked, int) and acked >= self.wait_replicas:
            if self._replicas_behind:
                self._replicas_behind = False
                log.info("redis: the replicas have the log writes again")
            return
        self.unreplicated += 1
        if not self._replicas_behind:
            self._replicas_behind = True
            log.warning(
                "redis: %s of %d replicas had a log write within %d ms; delivering anyway",
                acked,
                self.wait_replicas,
                self.wait_timeout_ms,
            )

    async def repair(
        self,
        session_id: str,
        fence: str,
        head: str,
        seen: str | None,
        epoch: str,
        meta: dict[str, str],
        entries: Sequence[tuple[str, Sequence[str]]],
        ttl_ms: int,
    ) -> str:
        """Write back what the store lost of a session after ``head``, where the session had
        the epoch ``seen``, under ``epoch`` (``_REPAIR``): ``'OK'``, ``'FENCED'``,
        ``'HEAD <head>'`` or ``'EPOCH <epoch>'``."""
        args: list[Any] = [ttl_ms, fence, head, seen or "", epoch, 2 * len(meta)]
        for name, value in meta.items():
            args += [name, value]
        for entry_id, fields in entries:
            args += [entry_id, len(fields), *fields]
        async with self._guard():
            answer = str(await self._repair(keys=[meta_key(session_id), log_key(session_id)], args=args))
            if answer == "OK" and isinstance(self.redis, RedisCluster):
                # Readers on a cluster wait for this to read the log (the append's own says so).
                await self.redis.spublish(log_key(session_id), "repaired")
            return answer

    async def positions(self, cursors: Sequence[tuple[str, str]]) -> list[Position]:
        """For each ``(session id, cursor)``: the session's epoch and the log's entry at the
        cursor, in one round trip."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for session_id, cursor in cursors:
                pipe.hget(meta_key(session_id), "epoch")
                pipe.xrange(log_key(session_id), cursor, cursor)
            replies = await pipe.execute()
        out = []
        for index in range(len(cursors)):
            epoch, entries = replies[2 * index], replies[2 * index + 1]
            out.append(Position(epoch, dict(entries[0][1]) if entries else None))
        return out

    async def mark_lost(self, session_id: str, epoch: str) -> str | None:
        """The log is shorter than what this reader had delivered: give the session a new
        epoch unless it has another one already. The session's epoch now (``None``: gone)."""
        async with self._guard():
            now = await self._mark_lost(keys=[meta_key(session_id)], args=[epoch, new_epoch()])
            return None if now is None else str(now)

    async def claim(
        self, session_id: str, expected_owner: str, expected_fence: str, owner: str
    ) -> str | None:
        """Take a session over from ``expected_owner``; the new fence, or ``None`` when
        another process was faster (or the session moved meanwhile)."""
        async with self._guard():
            fence = await self._claim(
                keys=[meta_key(session_id)],
                args=[expected_owner, expected_fence, owner, secrets.token_hex(4)],
            )
            if fence is None:
                return None
            await self.redis.sadd(f"proc:{{{owner}}}:sessions", session_id)
            return str(fence)

    # -- processes -----------------------------------------------------------

    async def heartbeat(self, pid: str, lease_ms: int) -> None:
        """Renew this process's lease."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(f"proc:{{{pid}}}", "1", px=lease_ms)
            pipe.zadd(PROCESSES, {pid: now_ms() + lease_ms})
            await pipe.execute()

    async def leave(self, pid: str) -> None:
        """This process stops. Sessions it still owns (handed over, or not started) are
        left for the others to claim: its lease ends now rather than when it would lapse,
        and the others are told to look at once."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(f"proc:{{{pid}}}")
            pipe.scard(f"proc:{{{pid}}}:sessions")
            _, owned = await pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            if owned:
                pipe.zadd(PROCESSES, {pid: now_ms()})
                if self.link.cluster:
                    pipe.spublish(CLUSTER_CHANNEL, pid)
                else:
                    pipe.publish(CLUSTER_CHANNEL, pid)
            else:
                pipe.zrem(PROCESSES, pid)
            await pipe.execute()

    async def dead_processes(self) -> list[tuple[str, int]]:
        """Processes whose lease has lapsed, with when it lapsed (ms since the epoch)."""
        async with self._guard():
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
        async with self._guard():
            return cast(set[str], await self.redis.smembers(f"proc:{{{pid}}}:sessions"))

    async def forget(self, pid: str, session_id: str) -> None:
        async with self._guard():
            await self.redis.srem(f"proc:{{{pid}}}:sessions", session_id)

    async def bury(self, pid: str) -> None:
        """A dead process's sessions are all dealt with: forget it."""
        async with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(f"proc:{{{pid}}}:sessions")
            pipe.zrem(PROCESSES, pid)
            await pipe.execute()

    # -- commands between processes ------------------------------------------

    async def publish(self, pid: str, message: str) -> int:
        """Send a message to a process's inbox (on a Redis Cluster, sharded pub/sub: to the
        one shard of the channel); how many heard it."""
        async with self._guard():
            if isinstance(self.redis, RedisCluster):
                return int(await self.redis.spublish(self.inbox(pid), message))
            return int(await self.redis.publish(self.inbox(pid), message))

    def inbox(self, pid: str) -> str:
        return f"proc:{{{pid}}}:inbox"

    # -- the relay -----------------------------------------------------------

    def stream_reads(self, wake_key: str) -> StreamReads:
        """How the relay reads many logs at once (:func:`stream_reads`)."""
        return stream_reads(self.link, self.reader, wake_key)

    async def read(
        self, reads: StreamReads, streams: dict[str, str], block_ms: int, count: int
    ) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
        """New entries of many logs at once, waiting up to ``block_ms`` for some."""
        async with self._guard():
            return await reads.read(streams, block_ms, count)

    async def wake(self, reads: StreamReads) -> None:
        """End the wait of a :meth:`read` (the relay reads another set of logs now)."""
        async with self._guard():
            await reads.wake()


def _no_script(reply: Any) -> bool:
    return isinstance(reply, NoScriptError) or (
        isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")
    )


def _refusal(result: str) -> Exception:
    """What ``_APPEND`` answered for a session none of whose entries went in."""
    if result == "FENCED":
        return Fenced(result)
    if result.startswith("LOST "):
        _, head, epoch, flagged = result.split(" ")
        return Lost(head, None if epoch == "-" else epoch, flagged == "1")
    return ResponseError(result[1:])
