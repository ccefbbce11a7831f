"""What Redis mode needs on a Redis Cluster (``REDIS_CLUSTER_URL``) beyond one server.

A cluster runs a command that names several keys only when they share one hash slot.
Every key of a session shares ``{<sessionId>}`` (of a document, ``{collab:<documentId>}``),
so the per-session scripts run as they are; what spans sessions is split per slot:

- the journal's append is one script call per slot, sent in one pipeline per node
  (:func:`by_node`), the nodes at once, so that a node that fails holds up only its own
  sessions (``RedisStore.append``);
- ``XREAD`` cannot block on the streams of several slots, so a reader does not block in
  Redis at all (:class:`ClusterReads`): each write announces itself on a sharded pub/sub
  channel named after its stream (``SPUBLISH`` in the write's own script, so the
  announcement leaves with the write), the process listens to the streams it follows
  (:class:`ShardSubscriber`) and reads what was announced, one ``XREAD`` per slot in one
  pipeline per node. What an announcement lost on the way did not say (pub/sub delivers
  at most once) is read by a sweep of every followed stream once a second;
- commands between processes go over sharded pub/sub too (``SPUBLISH`` / ``SSUBSCRIBE``,
  Redis 7): a message goes to the one shard that owns its channel, not to every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

log = logging.getLogger(__name__)

#: How often a reader reads every stream it follows, announced or not (ms).
SWEEP_MS = 1000
#: Longest a failed node's streams wait before they are read again.
MAX_PARK = 1.0

#: A message of a sharded channel, or ``None``: the channel was (re)subscribed just now,
#: and what was published before may have been missed.
Handler = Callable[[str | None], None]
Key = TypeVar("Key", bound=Hashable)
#: Which primary serves which slots: ``(first slot, last slot, "host:port")``, sorted.
Layout = tuple[tuple[int, int, str], ...]


def raise_if_cancelling(exc: BaseException | None = None) -> None:
    """redis-py may turn a cancellation into a timeout or connection error, or return from a
    command with it swallowed: a task being cancelled must stop, not retry or go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it, cancelling again while it runs (redis-py may have
    swallowed a cancellation)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.2)


def slot_of(key: str | bytes) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


def by_node(
    client: RedisCluster, items: Iterable[tuple[int, Key]]
) -> dict[str, tuple[ClusterNode, list[Key]]]:
    """``(slot, item)`` pairs gathered per node that serves the slot (as the client knows
    the topology now; a command that meets a slot moved since is redirected by redis-py)."""
    nodes: dict[str, tuple[ClusterNode, list[Key]]] = {}
    for slot, item in items:
        node = client.nodes_manager.get_node_from_slot(slot)
        nodes.setdefault(node.name, (node, []))[1].append(item)
    return nodes


class _NodeListener:
    """One connection to one node, holding the sharded subscriptions of the channels whose
    slots that node serves, and the task that reads their messages. ``broken``: the
    connection is lost; ``dropped``: the node unsubscribed a channel by itself (its slot
    moved to another node, as in a manual failover, while this node stays up)."""

    def __init__(
        self,
        name: str,
        client: aioredis.Redis,
        deliver: Callable[[str, str], None],
        broken: Callable[[_NodeListener], None],
        dropped: Callable[[_NodeListener, str], None],
    ) -> None:
        self.name = name
        self.client = client
        self.pubsub = client.pubsub()
        self.channels: set[str] = set()
        self._deliver = deliver
        self._broken = broken
        self._dropped = dropped
        self._task: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str) -> None:
        # One channel a command: a node refuses channels of several slots in one SSUBSCRIBE.
        await self.pubsub.ssubscribe(channel)
        self.channels.add(channel)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read())

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        await self.pubsub.sunsubscribe(channel)

    async def _read(self) -> None:
        try:
            while True:
                # A bounded wait, so that the client's health check (a PING) runs between.
                message = await self.pubsub.get_message(timeout=1.0)
                raise_if_cancelling()
                if message is None:
                    continue
                channel = str(message["channel"])
                if message.get("type") == "smessage":
                    self._deliver(channel, str(message["data"]))
                elif message.get("type") == "sunsubscribe" and channel in self.channels:
                    self.channels.discard(channel)
                    self._dropped(self, channel)
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            log.debug("redis cluster: subscriptions at %s lost: %s", self.name, type(exc).__name__)
            self._broken(self)

    async def close(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            await stop(self._task)
        with contextlib.suppress(RedisError, OSError):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


class ShardSubscriber:
    """Sharded pub/sub (``SSUBSCRIBE``) on a Redis Cluster, for every part of one process.

    A sharded channel lives on the node that serves its slot, so each channel is subscribed
    there, one connection per node that holds some; when the topology changes (a failover)
    or a node's connection breaks, the channels are subscribed again where their slots are
    now. A channel's handler is called with ``None`` each time it is (re)subscribed: what
    was published before may not have reached it.

    ``layout()`` says which primary serves which slots now; ``connect(host, port)`` makes a
    client of one node; ``on_lost`` is called when a node's connection broke (its owner
    looks at the topology again).
    """

    def __init__(
        self,
        layout: Callable[[], Awaitable[Layout]],
        connect: Callable[[str, int], aioredis.Redis],
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._layout = layout
        self._connect = connect
        self._on_lost = on_lost
        self._handlers: dict[str, Handler] = {}
        self._listeners: dict[str, _NodeListener] = {}
        #: Where each channel is subscribed now: the node's name.
        self._where: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._moved = asyncio.Event()
        #: Set while every channel is subscribed at the node that serves its slot.
        self.settled = asyncio.Event()
        #: Set while one is not (the contrary of :attr:`settled`, to wait on).
        self.unsettled = asyncio.Event()
        self.unsettled.set()
        self._task: asyncio.Task[None] | None = None

    def add(self, channel: str, handler: Handler) -> None:
        self._handlers[channel] = handler
        if channel not in self._where:
            self._kick()

    def remove(self, channel: str) -> None:
        if self._handlers.pop(channel, None) is not None:
            self._kick()

    def topology_changed(self) -> None:
        """Slots may serve from other nodes now: subscribe each channel where it is (at
        once, even while waiting after a failure)."""
        self._moved.set()
        self._kick()

    def _kick(self) -> None:
        self._changed.set()
        self.settled.clear()
        self.unsettled.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _deliver(self, channel: str, data: str) -> None:
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(data)

    def _dropped(self, listener: _NodeListener, channel: str) -> None:
        """A node no longer serves a channel's slot: subscribe it where the slot is now."""
        if self._where.get(channel) == listener.name:
            del self._where[channel]
        self._on_lost()
        self._kick()

    def _broken(self, listener: _NodeListener) -> None:
        """A node's connection broke: its channels are subscribed again (elsewhere if
        their slots moved), and the topology is looked at now."""
        if self._listeners.get(listener.name) is listener:
            del self._listeners[listener.name]
            for channel in listener.channels:
                if self._where.get(channel) == listener.name:
                    del self._where[channel]
            task = asyncio.get_running_loop().create_task(listener.close())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._on_lost()
        self._kick()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._sync()
            except (RedisError, OSError, RedisClusterException) as exc:
                raise_if_cancelling(exc)
                log.debug("redis cluster: cannot subscribe now: %s", type(exc).__name__)
                self._changed.set()
                self._moved.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._moved.wait()
                delay = 0.05 if self._moved.is_set() else min(MAX_PARK, delay * 2)
                continue
            raise_if_cancelling()
            delay = 0.05
            if not self._changed.is_set():
                self.unsettled.clear()
                self.settled.set()

    async def _sync(self) -> None:
        layout = await self._layout()
        wanted = {channel: serving(layout, slot_of(channel)) for channel in self._handlers}
        for channel, name in tuple(self._where.items()):
            if wanted.get(channel) == name:
                continue
            del self._where[channel]
            listener = self._listeners.get(name)
            if listener is not None:
                try:
                    await listener.unsubscribe(channel)
                except (RedisError, OSError):
                    self._broken(listener)
        for channel, name in wanted.items():
            if channel in self._where:
                continue
            listener = self._listeners.get(name)
            if listener is None:
                host, _, port = name.rpartition(":")
                listener = _NodeListener(
                    name, self._connect(host, int(port)), self._deliver, self._broken, self._dropped
                )
                self._listeners[name] = listener
            try:
                await listener.subscribe(channel)
            except (RedisError, OSError):
                self._broken(listener)
                raise
            self._where[channel] = name
            handler = self._handlers.get(channel)
            if handler is not None:
                handler(None)
        for name, listener in tuple(self._listeners.items()):
            if not listener.channels:
                del self._listeners[name]
                await listener.close()

    async def aclose(self) -> None:
        if self._task is not None:
            await stop(self._task)
            self._task = None
        listeners, self._listeners = tuple(self._listeners.values()), {}
        for listener in listeners:
            await listener.close()
        self._where.clear()


class ClusterReads:
    """What one blocking ``XREAD`` over many streams does on one server, on a cluster.

    :meth:`read` takes the streams to follow and their cursors, like ``XREAD``, and returns
    what it read, like ``XREAD``: new entries of the streams announced since the last call
    (and of those just added, and, every :data:`SWEEP_MS`, of all of them), waiting up to
    ``block_ms`` for an announcement when none is due. The streams of a node that fails are
    read again once it answers (or its slots moved); the others are read meanwhile.
    :meth:`wake` ends the wait (the caller follows other streams now).
    """

    def __init__(self, client: RedisCluster, subscriber: ShardSubscriber) -> None:
        self._client = client
        self._subscriber = subscriber
        #: The streams of the last call, subscribed.
        self._followed: set[Any] = set()
        self._due: set[Any] = set()
        #: Streams of a node that failed, and when they are tried again (loop time).
        self._parked: dict[Any, float] = {}
        #: Streams not read since their node failed.
        self._failing: set[Any] = set()
        self._delay = 0.05
        self._event = asyncio.Event()
        self._swept = 0.0

    @property
    def incomplete(self) -> bool:
        """Some streams were not read since their node failed."""
        return bool(self._failing)

    async def wake(self) -> None:
        self._event.set()

    def _announced(self, key: Any) -> Handler:
        def handle(_: str | None) -> None:
            # Announced, or subscribed again where its slot is now: its node answers.
            self._due.add(key)
            if self._parked.pop(key, None) is not None:
                self._delay = 0.05
            self._event.set()

        return handle

    def _follow(self, keys: set[Any]) -> None:
        for key in keys - self._followed:
            self._subscriber.add(_channel(key), self._announced(key))
            self._due.add(key)
        for key in self._followed - keys:
            self._subscriber.remove(_channel(key))
            self._due.discard(key)
            self._parked.pop(key, None)
            self._failing.discard(key)
        self._followed = keys

    async def read(self, streams: dict[Any, Any], block_ms: int | None, count: int) -> list[tuple[Any, Any]]:
        """``XREAD [BLOCK block_ms] COUNT count STREAMS ...``, as described above (``None``:
        read every stream now)."""
        self._follow(set(streams))
        loop = asyncio.get_running_loop()
        if block_ms is None or loop.time() - self._swept >= SWEEP_MS / 1000:
            self._swept = loop.time()
            self._due.update(streams)
        ready = self._ready(loop.time())
        if not ready and block_ms is not None:
            wait = min(block_ms, SWEEP_MS) / 1000
            if self._parked:
                wait = max(0.0, min(wait, min(self._parked.values()) - loop.time()))
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._event.wait()
            ready = self._ready(loop.time())
        if not ready:
            return []
        self._due.difference_update(ready)
        try:
            return await self._read({key: streams[key] for key in ready}, count)
        except BaseException:
            self._due.update(ready)
            raise

    def _ready(self, now: float) -> list[Any]:
        for key, until in tuple(self._parked.items()):
            if until <= now:
                del self._parked[key]
        return [key for key in self._due if key in self._followed and key not in self._parked]

    async def _read(self, streams: dict[Any, Any], count: int) -> list[tuple[Any, Any]]:
        slots: dict[int, dict[Any, Any]] = {}
        for key, cursor in streams.items():
            slots.setdefault(slot_of(key), {})[key] = cursor
        await self._client.initialize()
        nodes = list(by_node(self._client, ((slot, slot) for slot in slots)).values())
        replies = await asyncio.gather(
            *(
                self._read_node(node, [slots[slot] for slot in node_slots], count)
                for node, node_slots in nodes
            ),
            return_exceptions=True,
        )
        out: list[tuple[Any, Any]] = []
        failed: list[BaseException] = []
        now = asyncio.get_running_loop().time()
        for (_, node_slots), reply in zip(nodes, replies, strict=True):
            keys = [key for slot in node_slots for key in slots[slot]]
            if isinstance(reply, BaseException):
                # redis-py may end a read with a CancelledError of its own: a failure too,
                # unless this task is being cancelled.
                if not isinstance(
                    reply, RedisError | OSError | RedisClusterException | asyncio.CancelledError
                ):
                    raise reply
                raise_if_cancelling(reply)
                failed.append(reply)
                for key in keys:
                    self._due.add(key)
                    self._parked[key] = now + self._delay
                    self._failing.add(key)
                continue
            self._failing.difference_update(keys)
            for result in reply:
                for key, entries in result or ():
                    if len(entries) >= count:
                        self._due.add(key)  # more may wait
                    out.append((key, entries))
        if not failed:
            self._delay = 0.05
            return out
        self._delay = min(MAX_PARK, self._delay * 2)
        if len(failed) == len(nodes):
            raise RedisError("no node of the streams answers") from failed[0]
        return out

    async def _read_node(self, node: ClusterNode, slots: list[dict[Any, Any]], count: int) -> list[Any]:
        """One ``XREAD`` per slot, to the node that serves them. Named, not routed by its keys:
        redis-py finds the keys of ``XREAD`` by asking one fixed node (``COMMAND GETKEYS``),
        and after that node died every ``XREAD`` it routes fails until its topology is read
        again, which that failure never asks for."""
        pipe = self._client.pipeline(transaction=False)
        for streams in slots:
            pipe.execute_command(
                "XREAD", "COUNT", count, "STREAMS", *streams, *streams.values(), target_nodes=node
            )
        return list(await pipe.execute())


def _channel(key: Any) -> str:
    """A stream's announcements go on the sharded channel named as the stream (its slot)."""
    return key.decode() if isinstance(key, bytes) else str(key)


def serving(layout: Layout, slot: int) -> str:
    """The primary that serves ``slot`` (``"host:port"``)."""
    for first, last, primary in layout:
        if first <= slot <= last:
            return primary
    raise RedisError(f"no primary serves slot {slot}")


async def topology(client: RedisCluster, within: float) -> Layout:
    """Which primary serves which slots, as the first node that answers ``CLUSTER SLOTS``
    within ``within`` seconds says (the nodes the client knows, primaries first)."""
    await client.initialize()
    error: BaseException | None = None
    for node in [*client.get_primaries(), *client.get_replicas()]:
        try:
            async with asyncio.timeout(within):
                ranges = await client.execute_command("CLUSTER SLOTS", target_nodes=node)
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            error = exc
            continue
        return tuple(sorted(_ranges(ranges)))
    raise RedisError(f"no node of the cluster answers: {error}")


def _ranges(reply: Any) -> Iterable[tuple[int, int, str]]:
    """``(first slot, last slot, primary)`` from what redis-py makes of ``CLUSTER SLOTS``
    (a dict of ranges to their nodes through a cluster client, the raw list otherwise)."""
    if isinstance(reply, dict):
        for (start, end), nodes in reply.items():
            yield int(start), int(end), f"{nodes['primary'][0]}:{nodes['primary'][1]}"
        return
    for entry in reply:
        yield int(entry[0]), int(entry[1]), f"{_text(entry[2][0])}:{int(entry[2][1])}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
