"""Collaborative documents in Redis (Redis mode): any process serves any document.

Each document is a handful of keys under the hash tag ``{collab:<documentId>}`` (one
Redis Cluster slot per document), behind an optional key prefix:

- ``…:log``, a Redis Stream of the document's Yjs updates, one entry per update with the
  writing process (``p``) and the update (``u``). ``write`` returns once Redis has it;
- ``…:meta``, a hash: the snapshot (``snap``, one merged update) and the last stream id it
  covers (``cursor``); the bytes and entries written after it (``pendingBytes``,
  ``pending``); the lowest id the stream kept at its last trim (``trimmed``);
- ``…:lock``, held by the one process compacting the document.

``read`` is one script: the snapshot and the entries after its cursor, merged with pycrdt,
and that cursor moved to the last entry, from which ``follow`` continues. Every process
that has a document open follows its stream (replicated rooms, as y-redis does): one
reader task per process and one blocking ``XREAD`` for all the documents it follows (on a
Redis Cluster: the streams announced written, one ``XREAD`` per slot, see
:mod:`server.cluster.redis_cluster`); entries the process wrote itself are skipped.

Past ``compact_entries`` entries or ``compact_bytes`` bytes after the snapshot, the process
whose write crossed the line writes a new snapshot (the merged state, garbage collected by a
pycrdt ``Doc``) and trims the stream, both in one script, so a concurrent ``read`` sees the
old snapshot and its entries or the new one and the rest, never neither. Entries younger
than ``retain_ms`` stay in the stream past the snapshot: a follower that reads at least that
often never misses one; one that could have (newly following, held back, or after an
outage) compares its cursor with ``trimmed`` after its read and, if entries it had not read
were trimmed, reads the whole document again. Yjs applies an update twice as once, so
replays and overlaps cost bytes, never content.

Awareness (who is in a document, their carets, the AI's state) is not part of the document
and is not stored with it: each document has a second stream, ``…:awareness``, of the
awareness updates of its clients on every process (``p``, ``a``), which the same reader
task reads with the updates (the same ``XREAD``; on a Redis Cluster the same slot, announced
the same way) and hands to a callback, skipping the process's own. Each write of it trims
what is older than :data:`AWARENESS_WINDOW_MS` and sets the key to expire after as long,
so the stream holds what came in the 30 s before its last write, and nothing once the
document's clients are gone; a process that starts following a document reads it first,
which gives it every state alive (y-protocols clients renew theirs every 15 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import redis.asyncio as aioredis
from pycrdt import Doc, get_update, merge_updates
from redis.exceptions import NoScriptError, RedisError, ResponseError

from server.cluster.redis_cluster import raise_if_cancelling
from server.cluster.redis_store import BlockingReads, Client, RedisLink, stream_reads
from server.collab.stores import ReplicatedStore
from server.core.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: Connections to Redis per process for document writes and reads (the follower has its own).
MAX_CONNECTIONS = 32
#: Most updates one write script carries (the rest of a burst goes in the next call).
WRITE_BATCH = 256
#: Entries read per document and per ``XREAD``.
READ_COUNT = 256
#: How long one ``XREAD`` blocks before it is sent again.
BLOCK_MS = 1000
#: Most updates merged on the event loop; more are merged in a worker thread.
INLINE_MERGE = 64
#: Read positions remembered for a ``follow`` to come (one follows from the start without).
READ_CURSORS = 4096
#: How long the per-process wake stream outlives its last poke.
WAKE_TTL_MS = 600_000
#: Awareness updates a document's stream keeps (and how long it outlives the last one): a
#: y-protocols client drops a state not renewed for this long (its ``outdatedTimeout``).
AWARENESS_WINDOW_MS = 30_000
#: Awareness updates of one document waiting for the round trip in flight; past it the
#: oldest go (a state not sent is sent again when it is renewed).
AWARENESS_QUEUE = 64

#: A stream id as numbers, ``(ms, seq)``: compared as Redis compares them.
StreamId = tuple[int, int]
ORIGIN: StreamId = (0, 0)
#: A stream entry as ``XREAD`` returns it: its id and its fields.
Entry = tuple[bytes, dict[bytes, bytes]]

# Appends updates to one document's stream. KEYS: meta, log. ARGV: process id, '1' to
# announce the write on the sharded channel named as the stream (Redis Cluster: followers do
# not block there, they wait for this) or '', then the updates. Returns the last id, the
# entries and the bytes written since the snapshot.
_WRITE = """
local total = 0
local id
for i = 3, #ARGV do
  id = redis.call('XADD', KEYS[2], '*', 'p', ARGV[1], 'u', ARGV[i])
  total = total + #ARGV[i]
end
local bytes = redis.call('HINCRBY', KEYS[1], 'pendingBytes', total)
local pending = redis.call('HINCRBY', KEYS[1], 'pending', #ARGV - 2)
if ARGV[2] == '1' then
  redis.call('SPUBLISH', KEYS[2], id)
end
return {id, pending, bytes}
"""

# Appends awareness updates to one document's awareness stream, drops what is older than
# the window, and lets the stream expire a window after its last update. KEYS: the
# awareness stream. ARGV: process id, '1' to announce the write on the sharded channel
# named as the stream (Redis Cluster) or '', the window in ms, then the updates.
_PUBLISH_AWARENESS = """
local now = redis.call('TIME')
local horizon = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  - tonumber(ARGV[3]))
local id
for i = 4, #ARGV do
  id = redis.call('XADD', KEYS[1], 'MINID', horizon, '*', 'p', ARGV[1], 'a', ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[2] == '1' then
  redis.call('SPUBLISH', KEYS[1], id)
end
return id
"""

# The document as stored: the snapshot, its cursor and the entries after it, read at one
# instant. KEYS: meta, log. Returns {snapshot or false, cursor or false, entries}.
_READ = """
local meta = redis.call('HMGET', KEYS[1], 'snap', 'cursor')
local start = '-'
if meta[2] then start = '(' .. meta[2] end
return {meta[1], meta[2], redis.call('XRANGE', KEYS[2], start, '+')}
"""

# Replaces the snapshot and trims what it covers, if the caller holds the lock and the
# snapshot is still the one it merged from; releases the lock. KEYS: meta, log, lock.
# ARGV: lock token, cursor merged from ('' for none), new snapshot, its cursor, entries
# and bytes it covers past the old one, retain ms. Entries younger than retain ms stay.
# Returns 1, or 0 when refused.
_COMPACT = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[3])
if (redis.call('HGET', KEYS[1], 'cursor') or '') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'snap', ARGV[3], 'cursor', ARGV[4], 'snapBytes', #ARGV[3])
redis.call('HINCRBY', KEYS[1], 'pending', -tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[1], 'pendingBytes', -tonumber(ARGV[6]))
local now = redis.call('TIME')
local horizon = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[7])
local dash = string.find(ARGV[4], '-', 1, true)
local ms = tonumber(string.sub(ARGV[4], 1, dash - 1))
local minid
if ms < horizon then
  minid = string.format('%d-%d', ms, tonumber(string.sub(ARGV[4], dash + 1)) + 1)
else
  minid = string.format('%d-0', horizon)
end
if redis.call('XTRIM', KEYS[2], 'MINID', minid) > 0 then
  redis.call('HSET', KEYS[1], 'trimmed', minid)
end
return 1
"""

# Releases the compaction lock if the caller still holds it. KEYS: lock. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def document_keys(prefix: str, document_id: str) -> tuple[str, str, str]:
    """The meta hash, the update stream and the compaction lock of one document."""
    base = f"{prefix}{{collab:{document_id}}}"
    return f"{base}:meta", f"{base}:log", f"{base}:lock"


def awareness_key(prefix: str, document_id: str) -> str:
    """The stream of one document's awareness updates (in the document's slot)."""
    return f"{prefix}{{collab:{document_id}}}:awareness"


def parse_stream_id(raw: str | bytes) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_stream_id(position: StreamId) -> str:
    return f"{position[0]}-{position[1]}"


def compacted(parts: Iterable[bytes]) -> bytes:
    """Updates as one garbage-collected update: the state a ``Doc`` holds after applying
    them (deleted text kept as lengths only, runs of one client's typing joined), which is
    also the fastest for the reader to apply.

    They are applied one by one (pycrdt 0.14 integrates 500 small updates in 11 ms that
    way, and their ``merge_updates`` in 54 ms). A ``Doc`` leaves out of ``get_update`` any
    struct it holds back for a missing dependency; those are added back, so the result
    never drops an update that came before the one it depends on.
    """
    updates = list(parts)
    if len(updates) == 1:
        return updates[0]
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    state = doc.get_state()
    # What an update holds that the doc does not: a v1 update starts with its number of
    # clients with structs, 0 when it has none.
    held_back = [rest for update in updates if (rest := get_update(update, state))[0] != 0]
    if held_back:
        return merge_updates(doc.get_update(), *held_back)
    return doc.get_update()


async def _compacted(parts: list[bytes]) -> bytes:
    """:func:`compacted`, in a worker thread when there are many: pycrdt holds the GIL for
    one update at a time, so the event loop keeps turning (a 2,000-update document: 7 ms
    of loop stall instead of 70)."""
    if len(parts) <= INLINE_MERGE:
        return compacted(parts)
    return await asyncio.to_thread(compacted, parts)


@contextlib.asynccontextmanager
async def _unavailable() -> AsyncIterator[None]:
    """Errors reaching Redis become :class:`StoreUnavailable`; a refused command stays a
    ``ResponseError`` (a bug or a wrong key type, not an outage)."""
    try:
        yield
    except ResponseError:
        raise
    except (RedisError, OSError) as exc:
        raise_if_cancelling(exc)
        raise StoreUnavailable("The document store is unavailable: try again shortly") from exc


@dataclass(eq=False, slots=True)
class _Subscription:
    """One ``follow`` of a document: its position and the updates it has not taken yet."""

    document_id: str
    cursor: StreamId
    queue: deque[bytes] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: BaseException | None = None
    #: Called with each awareness update another process sends (``None``: not followed).
    awareness: Callable[[bytes], None] | None = None


@dataclass(eq=False, slots=True)
class _Followed:
    """A document this process follows, with every subscription to it."""

    document_id: str
    #: Its stream's key, encoded once (it goes into every ``XREAD``).
    key: bytes
    subscriptions: list[_Subscription] = field(default_factory=list)
    #: Left out of the reads until its followers take what they were given.
    held: bool = False
    #: Its awareness stream's key and how far it was read (from the start: the window).
    awareness_key: bytes = b""
    awareness_cursor: StreamId = ORIGIN

    def cursor(self) -> StreamId:
        return min(sub.cursor for sub in self.subscriptions)


class DocumentFollower:
    """Updates other processes write to one document, as an async iterator; ``aclose`` (or
    leaving ``async with``) stops following."""

    def __init__(self, store: RedisDocumentStore, subscription: _Subscription) -> None:
        self._store = store
        self._subscription = subscription

    def __aiter__(self) -> DocumentFollower:
        return self

    async def __anext__(self) -> bytes:
        sub = self._subscription
        while not sub.queue:
            if sub.ended is not None:
                if isinstance(sub.ended, StopAsyncIteration):
                    raise StopAsyncIteration
                raise sub.ended
            sub.ready.clear()
            await sub.ready.wait()
        update = sub.queue.popleft()
        self._store._taken(sub)
        return update

    async def aclose(self) -> None:
        self._store._unsubscribe(self._subscription)

    async def __aenter__(self) -> DocumentFollower:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class RedisDocumentStore(ReplicatedStore):
    """Yjs documents in Redis, shared by every process (Redis mode). Every method raises
    :class:`StoreUnavailable` when Redis cannot be reached within ``timeout``; a follower
    rides out an outage and continues where it stood."""

    def __init__(
        self,
        url: str | None,
        *,
        process_id: str,
        link: RedisLink | None = None,
        timeout: float = 5.0,
        prefix: str = "",
        compact_entries: int = 500,
        compact_bytes: int = 1 << 20,
        retain_ms: int = 60_000,
        lock_ms: int = 30_000,
        follow_max_pending: int = 1024,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix may not hold a hash tag: each document has its own")
        self.process_id = process_id
        self.prefix = prefix
        self.compact_entries = compact_entries
        self.compact_bytes = compact_bytes
        self.retain_ms = retain_ms
        self.lock_ms = lock_ms
        self.follow_max_pending = follow_max_pending
        #: With Sentinels: the clients follow the primary through failovers (this store
        #: follows it too, in ``_link_task``, while it is open).
        self.link = link
        self._link_task: asyncio.Task[None] | None = None
        if link is not None:
            self.redis: Client = link.client(max_connections=MAX_CONNECTIONS, decode_responses=False)
            self.reader: Client = link.client(
                socket_timeout=timeout + BLOCK_MS / 1000, retries=0, decode_responses=False
            )
        else:
            assert url is not None, "a URL or a link"
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=max(1, int(timeout)),
            )
            self.redis = aioredis.Redis(connection_pool=pool)
            # XREAD BLOCK holds its connection; its own client waits longer than it blocks.
            self.reader = aioredis.Redis.from_url(
                url, socket_timeout=timeout + BLOCK_MS / 1000, socket_connect_timeout=timeout
            )
        self._write_sha = hashlib.sha1(_WRITE.encode()).hexdigest()
        self._awareness_sha = hashlib.sha1(_PUBLISH_AWARENESS.encode()).hexdigest()
        self._read_script = self.redis.register_script(_READ)
        self._compact_script = self.redis.register_script(_COMPACT)
        self._release_script = self.redis.register_script(_RELEASE)
        #: Updates waiting for the write in flight, per document in call order.
        self._queued: dict[str, deque[tuple[bytes, asyncio.Future[None]]]] = {}
        self._writer_task: asyncio.Task[None] | None = None
        self._compacting: dict[str, asyncio.Task[bool]] = {}
        #: Where the last ``read`` of each document stopped, for the ``follow`` that comes
        #: next (documents read and never followed, e.g. exported, fall out past the bound).
        self._read_cursors: OrderedDict[str, StreamId] = OrderedDict()
        self._followed: dict[str, _Followed] = {}
        self._by_key: dict[bytes, _Followed] = {}
        self._by_awareness_key: dict[bytes, _Followed] = {}
        #: Awareness updates waiting for the round trip in flight, per document.
        self._awareness_queued: dict[str, deque[bytes]] = {}
        self._awareness_task: asyncio.Task[None] | None = None
        self._awareness_failing = False
        #: What the next ``XREAD`` asks, kept up to date rather than built per read (its
        #: cost grows with the documents followed): stream key -> cursor, both encoded.
        self._streams: dict[bytes, bytes] = {}
        #: Followed documents whose stream may have been trimmed past their cursor.
        self._suspects: set[_Followed] = set()
        self._wake_key = f"{prefix}collab:wake:{process_id}".encode()
        self._reads = (
            stream_reads(link, self.reader, self._wake_key, WAKE_TTL_MS)
            if link is not None
            else BlockingReads(cast(aioredis.Redis, self.reader), self._wake_key, WAKE_TTL_MS)
        )
        #: Writes announce themselves (Redis Cluster).
        self._announce = b"1" if link is not None and link.cluster else b""
        self._reader_task: asyncio.Task[None] | None = None
        self._pokes: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- DocumentStore -------------------------------------------------------

    async def read(self, document_id: str) -> bytes | None:
        """The whole document as one update, or ``None`` for a document never written; a
        later ``follow(document_id)`` continues right after what this returned."""
        update, cursor = await self.read_with_cursor(document_id)
        self._read_cursors[document_id] = parse_stream_id(cursor)
        self._read_cursors.move_to_end(document_id)
        if len(self._read_cursors) > READ_CURSORS:
            self._read_cursors.popitem(last=False)
        return update

    async def read_with_cursor(self, document_id: str) -> tuple[bytes | None, str]:
        """The whole document and the position ``follow`` continues from (the last stream
        id it includes)."""
        self._follow_primary()
        meta, stream, _ = document_keys(self.prefix, document_id)
        async with _unavailable():
            snapshot, cursor, entries = cast(list[Any], await self._read_script(keys=[meta, stream], args=[]))
        parts = [] if snapshot is None else [cast(bytes, snapshot)]
        position = ORIGIN if cursor is None else parse_stream_id(cursor)
        for entry_id, fields in cast(list[tuple[bytes, list[bytes]]], entries):
            parts.append(_entry_update(fields))
            position = parse_stream_id(entry_id)
        return (await _compacted(parts) if parts else None), format_stream_id(position)

    async def write(self, document_id: str, update: bytes) -> None:
        """Keep one update: returns once Redis has it. Updates written to one document by
        this process reach its stream in the order of the calls; under load, what waits
        goes in one round trip (one script call per document)."""
        if self._closed:
            raise StoreUnavailable("The document store is closed")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(document_id, deque()).append((update, done))
        if self._writer_task is None:
            self._writer_task = asyncio.create_task(self._send_writes())
        await done

    async def size(self, document_id: str) -> int:
        """Bytes of the document as ``read`` fetches it: the snapshot and the updates
        written after it (kept in counters, not measured)."""
        meta, _, _ = document_keys(self.prefix, document_id)
        async with _unavailable():
            snap, pending = await self.redis.hmget(meta, ["snapBytes", "pendingBytes"])
        return int(snap or 0) + int(pending or 0)

    def _follow_primary(self) -> None:
        """With Sentinels: follow the primary from the first use on (every document is
        read before it is written or followed)."""
        if self.link is not None and self._link_task is None and not self._closed:
            self._link_task = asyncio.get_running_loop().create_task(self.link.follow())

    async def close(self) -> None:
        """Finish the writes under way, stop following, close the connections."""
        self._closed = True
        for sender in (self._writer_task, self._awareness_task):
            if sender is not None:
                await asyncio.wait([sender])
        tasks = [*self._compacting.values(), *self._pokes]
        if self._reader_task is not None:
            tasks.append(self._reader_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for followed in list(self._followed.values()):
            for sub in followed.subscriptions:
                _end(sub, StopAsyncIteration())
        self._followed.clear()
        self._by_key.clear()
        self._by_awareness_key.clear()
        self._streams.clear()
        self._suspects.clear()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self._wake_key)
        await self.redis.aclose()
        await self.reader.aclose()
        if self._link_task is not None:
            self._link_task.cancel()
            await asyncio.gather(self._link_task, return_exceptions=True)
        if self.link is not None:
            await self.link.aclose()

    # -- ReplicatedStore -----------------------------------------------------

    def follow(
        self,
        document_id: str,
        after: str | bytes | None = None,
        awareness: Callable[[bytes], None] | None = None,
    ) -> DocumentFollower:
        """Updates other processes write to the document, from the position ``after`` (a
        cursor of :meth:`read_with_cursor`) or, without one, right after this process's
        last ``read`` of it (from the start when there was none since the last ``follow``:
        updates handed over twice change nothing). ``awareness`` is called with each
        awareness update the other processes send, from the reader task, starting with
        those of the last :data:`AWARENESS_WINDOW_MS` when the process did not follow the
        document yet."""
        if self._closed:
            raise StoreUnavailable("The document store is closed")
        remembered = self._read_cursors.pop(document_id, ORIGIN)
        cursor = remembered if after is None else parse_stream_id(after)
        sub = _Subscription(document_id, cursor, awareness=awareness)
        followed = self._followed.get(document_id)
        if followed is None:
            _, stream, _ = document_keys(self.prefix, document_id)
            followed = _Followed(
                document_id, stream.encode(), awareness_key=awareness_key(self.prefix, document_id).encode()
            )
            self._followed[document_id] = followed
            self._by_key[followed.key] = followed
            self._by_awareness_key[followed.awareness_key] = followed
        followed.subscriptions.append(sub)
        self._suspects.add(followed)
        self._refresh(followed)
        if self._reader_task is None:
            self._reader_task = asyncio.create_task(self._read_updates())
        else:
            self._poke()
        return DocumentFollower(self, sub)

    def publish_awareness(self, document_id: str, update: bytes) -> None:
        """Send an awareness update (y-protocols' encoding) to the other processes that
        follow the document; not stored with it. Returns at once: what waits for the round
        trip in flight goes in the next one, and what Redis refuses or does not get is
        dropped (states are renewed)."""
        if self._closed:
            return
        queue = self._awareness_queued.get(document_id)
        if queue is None:
            queue = self._awareness_queued[document_id] = deque(maxlen=AWARENESS_QUEUE)
        queue.append(update)
        if self._awareness_task is None:
            self._awareness_task = asyncio.create_task(self._send_awareness())

    # -- compaction ----------------------------------------------------------

    async def compact(self, document_id: str) -> bool:
        """Write a new snapshot of the document and trim its stream, unless another process
        is doing it; ``True`` when this call did."""
        meta, stream, lock = document_keys(self.prefix, document_id)
        token = uuid.uuid4().hex
        async with _unavailable():
            if not await self.redis.set(lock, token, nx=True, px=self.lock_ms):
                return False
        try:
            async with _unavailable():
                snapshot, cursor, entries = cast(
                    list[Any], await self._read_script(keys=[meta, stream], args=[])
                )
            rows = cast(list[tuple[bytes, list[bytes]]], entries)
            if not rows:
                await self._release(lock, token)
                return False
            updates = [_entry_update(fields) for _, fields in rows]
            parts = updates if snapshot is None else [cast(bytes, snapshot), *updates]
            args = [
                token,
                b"" if cursor is None else cursor,
                await _compacted(parts),
                rows[-1][0],
                len(rows),
                sum(len(update) for update in updates),
                self.retain_ms,
            ]
            async with _unavailable():
                return bool(await self._compact_script(keys=[meta, stream, lock], args=args))
        except BaseException:
            with contextlib.suppress(StoreUnavailable, RedisError):
                await self._release(lock, token)
            raise

    async def _release(self, lock: str, token: str) -> None:
        async with _unavailable():
            await self._release_script(keys=[lock], args=[token])

    def _maybe_compact(self, document_id: str, pending: int, pending_bytes: int) -> None:
        if pending < self.compact_entries and pending_bytes < self.compact_bytes:
            return
        if document_id in self._compacting or self._closed:
            return
        task = asyncio.create_task(self.compact(document_id))
        self._compacting[document_id] = task
        task.add_done_callback(lambda done: self._compacted(document_id, done))

    def _compacted(self, document_id: str, task: asyncio.Task[bool]) -> None:
        self._compacting.pop(document_id, None)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, StoreUnavailable):
            log.warning("collab: could not compact a document: %s", exc)
        elif exc is not None:
            log.error("collab: compacting a document failed", exc_info=exc)

    # -- the write path ------------------------------------------------------

    async def _send_writes(self) -> None:
        """Send what waits, a pipeline per round trip with a script call per document
        (each in its own slot), until nothing waits."""
        try:
            while self._queued:
                batch = []
                for document_id, queue in list(self._queued.items()):
                    batch.append(
                        (document_id, [queue.popleft() for _ in range(min(WRITE_BATCH, len(queue)))])
                    )
                    if not queue:
                        del self._queued[document_id]
                calls = [
                    [
                        2,
                        *document_keys(self.prefix, document_id)[:2],
                        self.process_id,
                        self._announce,
                        *(u for u, _ in items),
                    ]
                    for document_id, items in batch
                ]
                try:
                    async with _unavailable():
                        replies = await self._evalsha_all(_WRITE, self._write_sha, calls)
                except StoreUnavailable as exc:
                    replies = [exc] * len(batch)
                for (document_id, items), reply in zip(batch, replies, strict=True):
                    for _, done in items:
                        if done.done():
                            continue
                        if isinstance(reply, Exception):
                            done.set_exception(reply)
                        else:
                            done.set_result(None)
                    if not isinstance(reply, Exception):
                        _, pending, pending_bytes = reply
                        self._maybe_compact(document_id, int(pending), int(pending_bytes))
        finally:
            self._writer_task = None

    async def _evalsha_all(self, script: str, sha: str, calls: list[list[Any]]) -> list[Any]:
        """``EVALSHA`` of ``script`` for each call (keys count first) in one pipeline; the
        calls Redis answers ``NOSCRIPT`` (a restarted or flushed Redis) are sent again once
        the script is loaded. Each reply is the script's, or the error of its call."""
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

    async def _send_awareness(self) -> None:
        """Send the awareness updates that wait, one pipeline per round trip with a script
        call per document, until none waits."""
        try:
            while self._awareness_queued:
                batch, self._awareness_queued = self._awareness_queued, {}
                calls = [
                    [
                        1,
                        awareness_key(self.prefix, document_id),
                        self.process_id,
                        self._announce,
                        AWARENESS_WINDOW_MS,
                        *updates,
                    ]
                    for document_id, updates in batch.items()
                ]
                try:
                    async with _unavailable():
                        replies = await self._evalsha_all(_PUBLISH_AWARENESS, self._awareness_sha, calls)
                except StoreUnavailable as exc:
                    replies = [exc] * len(calls)
                failed = [reply for reply in replies if isinstance(reply, Exception)]
                if failed and not self._awareness_failing:
                    log.warning("collab: awareness of %d documents not sent: %s", len(failed), failed[0])
                elif not failed and self._awareness_failing:
                    log.info("collab: awareness updates sent again")
                self._awareness_failing = bool(failed)
        finally:
            self._awareness_task = None

    # -- the follow path -----------------------------------------------------

    def _poke(self) -> None:
        """Wake the blocked ``XREAD`` so that it reads the new set of documents."""
        if self._closed:
            return
        task = asyncio.create_task(self._wake())
        self._pokes.add(task)
        task.add_done_callback(self._pokes.discard)

    async def _wake(self) -> None:
        # If Redis is down the read loop is failing too, and reads everything once it is back.
        with contextlib.suppress(StoreUnavailable):
            async with _unavailable():
                await self._reads.wake()

    async def _read_updates(self) -> None:
        """The reader task: one ``XREAD`` for every followed document, then the checks of
        the suspect ones, forever."""
        loop = asyncio.get_running_loop()
        delay = 0.05
        last_read = loop.time()
        failing_since: float | None = None
        task = asyncio.current_task()
        while True:
            # redis-py may swallow a cancellation into a retried command: look for it here.
            if self._closed or (task is not None and task.cancelling()):
                return
            if loop.time() - last_read > self.retain_ms / 2000:
                self._suspects.update(self._followed.values())
            streams: dict[Any, Any] = dict(self._streams)
            suspects = [(f, parse_stream_id(streams[f.key])) for f in self._suspects if f.key in streams]
            started = loop.time()
            try:
                async with _unavailable():
                    # Suspects are checked after the read: it must not wait for new entries.
                    block = None if suspects else BLOCK_MS
                    result = await self._reads.read(streams, block, READ_COUNT)
                gaps = await self._gaps(suspects)
            except (StoreUnavailable, ResponseError) as exc:
                if failing_since is None:
                    failing_since = loop.time()
                    log.warning("collab: cannot follow %d documents (%s); retrying", len(self._followed), exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            if failing_since is not None:
                log.info("collab: following documents again after %.1f s", loop.time() - failing_since)
                failing_since = None
            delay = 0.05
            last_read = started
            for key, entries in cast(list[tuple[bytes, list[Entry]]], result):
                listened = self._by_awareness_key.get(key)
                if listened is not None:
                    self._deliver_awareness(listened, entries)
                    self._refresh(listened)
                    continue
                followed = self._by_key.get(key)
                if followed is None or followed in gaps:
                    continue
                self._deliver(followed, parse_stream_id(streams[key]), entries)
                if len(entries) >= READ_COUNT:
                    self._suspects.add(followed)
                self._refresh(followed)
            for followed in gaps:
                await self._resync(followed)

    async def _gaps(self, suspects: list[tuple[_Followed, StreamId]]) -> set[_Followed]:
        """Those of ``suspects`` whose stream was trimmed past where they read from (checked
        after the read: a trim it missed is older than it, so it shows)."""
        if not suspects:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for followed, _ in suspects:
            meta, _, _ = document_keys(self.prefix, followed.document_id)
            pipe.hget(meta, "trimmed")
        async with _unavailable():
            trims = await pipe.execute()
        gaps = set()
        for (followed, position), trimmed in zip(suspects, trims, strict=True):
            self._suspects.discard(followed)
            if trimmed is not None and parse_stream_id(trimmed) > (position[0], position[1] + 1):
                gaps.add(followed)
        return gaps

    async def _resync(self, followed: _Followed) -> None:
        """Entries this process had not read were trimmed: hand over the whole document."""
        try:
            update, cursor = await self.read_with_cursor(followed.document_id)
        except (StoreUnavailable, ResponseError):
            self._suspects.add(followed)
            return
        position = parse_stream_id(cursor)
        for sub in followed.subscriptions:
            if update is not None:
                self._put(followed, sub, update)
            sub.cursor = max(sub.cursor, position)
        self._refresh(followed)

    def _deliver(self, followed: _Followed, start: StreamId, entries: list[Entry]) -> None:
        """Entries read after ``start`` to the subscriptions that stood there or further (one
        added during the read stood before it: the next read starts from it)."""
        own = self.process_id.encode()
        subscriptions = [sub for sub in followed.subscriptions if sub.cursor >= start]
        for raw_id, fields in entries:
            position = parse_stream_id(raw_id)
            for sub in subscriptions:
                if position <= sub.cursor:
                    continue
                sub.cursor = position
                if fields.get(b"p") != own:
                    self._put(followed, sub, fields[b"u"])

    def _deliver_awareness(self, followed: _Followed, entries: list[Entry]) -> None:
        """Awareness updates of other processes to the subscriptions that listen."""
        own = self.process_id.encode()
        for raw_id, fields in entries:
            followed.awareness_cursor = max(followed.awareness_cursor, parse_stream_id(raw_id))
            if fields.get(b"p") == own:
                continue
            for sub in followed.subscriptions:
                if sub.awareness is None:
                    continue
                try:
                    sub.awareness(fields[b"a"])
                except Exception:
                    log.exception("collab: an awareness update of %s was not taken", followed.document_id)

    def _refresh(self, followed: _Followed) -> None:
        """Put the document's current positions in the next read, or leave them out (held,
        no longer followed, or no listener of its awareness)."""
        following = bool(followed.subscriptions) and self._followed.get(followed.document_id) is followed
        if not following or followed.held:
            self._streams.pop(followed.key, None)
        else:
            cursor = min(sub.cursor for sub in followed.subscriptions)
            self._streams[followed.key] = format_stream_id(cursor).encode()
        if following and any(sub.awareness is not None for sub in followed.subscriptions):
            self._streams[followed.awareness_key] = format_stream_id(followed.awareness_cursor).encode()
        else:
            self._streams.pop(followed.awareness_key, None)

    def _put(self, followed: _Followed, sub: _Subscription, update: bytes) -> None:
        sub.queue.append(update)
        sub.ready.set()
        if len(sub.queue) >= self.follow_max_pending and not followed.held:
            followed.held = True
            self._refresh(followed)

    def _taken(self, sub: _Subscription) -> None:
        """A follower took an update: a held document is read again once its followers
        caught up halfway."""
        followed = self._followed.get(sub.document_id)
        if followed is None or not followed.held:
            return
        if all(len(s.queue) <= self.follow_max_pending // 2 for s in followed.subscriptions):
            followed.held = False
            self._suspects.add(followed)
            self._refresh(followed)
            self._poke()

    def _unsubscribe(self, sub: _Subscription) -> None:
        _end(sub, StopAsyncIteration())
        followed = self._followed.get(sub.document_id)
        if followed is None or sub not in followed.subscriptions:
            return
        followed.subscriptions.remove(sub)
        if not followed.subscriptions:
            del self._followed[sub.document_id]
            del self._by_key[followed.key]
            del self._by_awareness_key[followed.awareness_key]
            self._suspects.discard(followed)
        elif followed.held:
            self._taken(followed.subscriptions[0])
        self._refresh(followed)


def _entry_update(fields: list[bytes] | dict[bytes, bytes]) -> bytes:
    """The update of a stream entry, as ``XRANGE`` in a script (a flat list) or redis-py
    (a dict) returns it."""
    if isinstance(fields, dict):
        return fields[b"u"]
    for index in range(0, len(fields), 2):
        if fields[index] == b"u":
            return fields[index + 1]
    raise ValueError("a stream entry without an update")


def _end(sub: _Subscription, reason: BaseException) -> None:
    if sub.ended is None:
        sub.ended = reason
    sub.ready.set()
