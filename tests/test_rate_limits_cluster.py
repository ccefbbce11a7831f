"""The per-user and per-address limits of several processes in Redis mode (issue 22): they
hold for the cluster as a whole, not once per process.

Two parts, both on a real ``redis-server``: the mechanics of
:class:`server.cluster.redis_limits.RedisLimits` with two :class:`Limits` in this test
process (each with its own process id, as two processes would have), where the test can
wait for each exchange with Redis; then two real server processes, a client going from
one to the other. Memory mode keeps its per-process limits (``tests/test_rate_limits.py``).

A check never waits for Redis, so a process may be one step late on what the others did:
across two processes a client gets at most one token or connection more than the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio

from deploy.cluster import MASTER, start_sentinel_group
from server.cluster.redis_limits import LIVE, RedisLimits, address_key, bucket_key
from server.cluster.redis_store import RedisStore, RedisTarget
from server.guards.ratelimit import Limits
from server.settings import Settings
from tests.cluster_nodes import Node, StartNodes, create
from tests.helpers import WAIT, make_settings, wait_until
from tests.redis_server import RedisServer
from tests.server_process import free_port

ADDRESS = "203.0.113.7"
#: A manual failover is announced within a few seconds.
PROMOTION = 30.0


# -- two Limits in this process, on one Redis --------------------------------------


@dataclass
class Process:
    """What one server process holds of the limits: its ``Limits`` and their share."""

    limits: Limits
    shared: RedisLimits
    store: RedisStore
    running: AsyncIterator[None]
    following: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        with contextlib.suppress(StopAsyncIteration):
            await anext(self.running)
        if self.following is not None:
            self.following.cancel()
            await asyncio.gather(self.following, return_exceptions=True)
        await self.store.close()


Start = Callable[..., Awaitable[Process]]


@pytest.fixture
async def processes(redis_server: RedisServer) -> AsyncIterator[Start]:
    redis_server.flush()
    started: list[Process] = []

    async def start(
        pid: str, settings: Settings, url: str | None = None, lease: float = 5.0, listen: bool = True
    ) -> Process:
        store = RedisStore(url or redis_server.url, timeout=1.0)
        limits = Limits.from_settings(settings)
        shared = RedisLimits(store, pid, limits, lease=lease, timeout=1.0)
        running = shared.run()
        await anext(running)
        process = Process(limits, shared, store, running)
        started.append(process)
        if listen:
            await asyncio.wait_for(shared.listening.wait(), WAIT)
        return process

    yield start
    for process in started:
        await process.stop()


def small(**limits: Any) -> Settings:
    return make_settings(**limits)


async def test_a_bucket_spent_at_one_process_is_spent_at_the_other(processes: Start) -> None:
    settings = small(session_rate_per_address=0.0, session_burst_per_address=4.0)
    a, b = await processes("a", settings), await processes("b", settings)
    assert all(a.limits.sessions_per_address.take(ADDRESS) == 0 for _ in range(4))
    await a.shared.sent()
    # The spend that emptied the bucket is announced: b asks Redis what is left, at once.
    await wait_until(lambda: b.limits.sessions_per_address.tokens(ADDRESS) < 1)
    assert b.limits.sessions_per_address.take(ADDRESS) > 0
    assert a.limits.sessions_per_address.take(ADDRESS) > 0
    assert b.limits.sessions_per_address.take("198.51.100.1") == 0, "other addresses keep theirs"


async def test_alternating_processes_get_one_budget(processes: Start) -> None:
    settings = small(session_rate_per_user=0.0, session_burst_per_user=5.0)
    a, b = await processes("a", settings), await processes("b", settings)
    allowed = 0
    for turn in range(12):
        process = (a, b)[turn % 2]
        allowed += process.limits.sessions_per_user.take("alice") == 0
        await process.shared.sent()
    assert 5 <= allowed <= 6, allowed  # 10 with a budget per process


async def test_a_race_is_a_debt_the_cluster_pays_back(processes: Start, redis_server: RedisServer) -> None:
    """Both processes spend on what they last heard: the cluster's bucket goes below zero
    and both copies with it, so nothing more passes until the refills have paid it back."""
    settings = small(session_rate_per_address=0.0, session_burst_per_address=4.0)
    a, b = await processes("a", settings), await processes("b", settings)
    assert [a.limits.sessions_per_address.take(ADDRESS) for _ in range(3)] == [0, 0, 0]
    assert [b.limits.sessions_per_address.take(ADDRESS) for _ in range(3)] == [0, 0, 0]
    await asyncio.gather(a.shared.sent(), b.shared.sent())
    buckets = (a.limits.sessions_per_address, b.limits.sessions_per_address)
    # Each copy is what the cluster has left: -2 (b's last word is announced to a).
    await wait_until(lambda: [bucket.tokens(ADDRESS) for bucket in buckets] == [-2.0, -2.0])
    tokens = await a.store.redis.hget(bucket_key("session_creation_per_address", ADDRESS), "tokens")
    assert float(tokens) == -2.0
    assert all(bucket.take(ADDRESS) > 0 for bucket in buckets)


async def test_connections_of_an_address_are_counted_across_processes(processes: Start) -> None:
    settings = small(max_connections_per_address=3)
    a, b = await processes("a", settings), await processes("b", settings)
    ca, cb = a.limits.connections, b.limits.connections
    assert ca.acquire(ADDRESS) and ca.acquire(ADDRESS)
    await a.shared.sent()
    assert cb.acquire(ADDRESS)
    await b.shared.sent()
    # b's connection reached the limit: a hears it and asks for the total.
    await wait_until(lambda: ca.others(ADDRESS) == 1)
    assert not ca.acquire(ADDRESS)
    assert not cb.acquire(ADDRESS)
    ca.release(ADDRESS)
    await a.shared.sent()
    # A connection closed at the limit: b hears it too, and has room again.
    await wait_until(lambda: cb.others(ADDRESS) == 1)
    assert cb.acquire(ADDRESS)
    assert ca.count(ADDRESS) == 1 and cb.count(ADDRESS) == 2


async def test_a_process_that_stops_releases_its_connections(processes: Start) -> None:
    settings = small(max_connections_per_address=2)
    a, b = await processes("a", settings), await processes("b", settings)
    assert a.limits.connections.acquire(ADDRESS) and a.limits.connections.acquire(ADDRESS)
    await a.shared.sent()
    await wait_until(lambda: not b.limits.connections.acquire(ADDRESS))
    await a.stop()  # leaves the live set: its counts stop counting at once
    await wait_until(lambda: b.limits.connections.acquire(ADDRESS))


async def test_counts_lost_by_redis_are_sent_again(processes: Start, redis_server: RedisServer) -> None:
    """Redis lost the counts (a flush, a failover that lost the last writes): the next
    heartbeat finds the process missing from the live set and sends its counts again."""
    settings = small(max_connections_per_address=5)
    a, b = await processes("a", settings, lease=0.3), await processes("b", settings, lease=0.3)
    for _ in range(3):
        assert a.limits.connections.acquire(ADDRESS)
    await a.shared.sent()
    redis_server.flush()

    async def total() -> int:
        redis = b.store.redis
        counts = await redis.hgetall(address_key(ADDRESS))
        alive = {pid for pid in await redis.zrange(LIVE, 0, -1)}
        return sum(int(n) for pid, n in counts.items() if pid in alive)

    async with asyncio.timeout(WAIT):
        while await total() != 3:
            await asyncio.sleep(0.05)


async def test_redis_unreachable_limits_each_process_on_its_own(
    processes: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail open to this process's limits: every check answers at once, exactly as in
    memory mode, and the exchange with Redis gives up within its timeout."""
    settings = small(
        session_rate_per_address=0.0, session_burst_per_address=3.0, max_connections_per_address=2
    )
    caplog.set_level(logging.WARNING, logger="server.cluster.redis_limits")
    nowhere = f"redis://:not-a-real-password@127.0.0.1:{free_port()}/0"
    a = await processes("a", settings, url=nowhere, listen=False)
    assert [a.limits.sessions_per_address.take(ADDRESS) == 0 for _ in range(4)] == [True, True, True, False]
    assert [a.limits.connections.acquire(ADDRESS) for _ in range(3)] == [True, True, False]
    async with asyncio.timeout(WAIT):
        await a.shared.sent()
    warnings = [r.getMessage() for r in caplog.records if r.name == "server.cluster.redis_limits"]
    assert len(warnings) == 1 and "limits on its own" in warnings[0]
    assert "not-a-real-password" not in caplog.text


# -- two real server processes ---------------------------------------------------


async def post_session(http: aiohttp.ClientSession, node: Node, user: str) -> int:
    async with http.post(f"{node.url}/api/streaming/session", json={"userId": user}) as resp:
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
        return resp.status


async def test_two_processes_share_one_per_address_budget(
    nodes: StartNodes, http: aiohttp.ClientSession
) -> None:
    pair = await nodes(2, SESSION_RATE_PER_ADDRESS="0", SESSION_BURST_PER_ADDRESS="6")
    statuses = [await post_session(http, pair[turn % 2], f"user-{turn}") for turn in range(16)]
    allowed = statuses.count(200)
    assert statuses.count(429) == 16 - allowed
    assert 6 <= allowed <= 7, statuses  # 12 with a budget per process
    # Both processes refuse from now on.
    assert [await post_session(http, node, "late") for node in pair] == [429, 429]


async def test_two_processes_share_one_per_user_budget(
    nodes: StartNodes, http: aiohttp.ClientSession
) -> None:
    pair = await nodes(2, SESSION_RATE_PER_USER="0", SESSION_BURST_PER_USER="4")
    statuses = [await post_session(http, pair[turn % 2], "alice") for turn in range(12)]
    assert 4 <= statuses.count(200) <= 5, statuses  # 8 with a budget per process
    assert [await post_session(http, node, "bob") for node in pair] == [200, 200], "per user"


class Held:
    """Connections a test keeps open (SSE streams and plain WebSockets), by process."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.open: list[tuple[Node, aiohttp.ClientResponse | aiohttp.ClientWebSocketResponse]] = []

    def at(self, node: Node) -> int:
        return sum(1 for where, _ in self.open if where is node)

    async def sse(self, node: Node, session_id: str) -> int:
        resp = await self.http.get(f"{node.url}/api/streaming/{session_id}/events")
        if resp.status != 200:
            resp.release()
            return resp.status
        self.open.append((node, resp))
        return 200

    async def websocket(self, node: Node, session_id: str) -> int:
        try:
            ws = await self.http.ws_connect(f"{node.url}/ws/stream/{session_id}")
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        self.open.append((node, ws))
        return 200

    async def close(self, index: int) -> None:
        """Close one (a WebSocket: the server sees an SSE stream go only at its next write)."""
        _, held = self.open.pop(index)
        if isinstance(held, aiohttp.ClientWebSocketResponse):
            await held.close()
        else:
            held.close()

    async def close_all(self) -> None:
        while self.open:
            await self.close(0)


@pytest.fixture
async def held(http: aiohttp.ClientSession) -> AsyncIterator[Held]:
    connections = Held(http)
    yield connections
    await connections.close_all()


async def eventually_open(open_one: Callable[[], Awaitable[int]]) -> None:
    """Open a connection as a client told ``Retry-After`` would: again until it is let in."""
    async with asyncio.timeout(WAIT):
        while await open_one() != 200:
            await asyncio.sleep(0.1)


async def test_connections_per_address_count_across_processes(
    nodes: StartNodes, http: aiohttp.ClientSession, held: Held
) -> None:
    a, b = await nodes(2, MAX_CONNECTIONS_PER_ADDRESS="3")
    session_id = await create(http, a)
    assert await held.websocket(a, session_id) == 200
    assert await held.websocket(a, session_id) == 200
    assert await held.sse(b, session_id) == 200
    # The third reached the limit: from now on both processes refuse this address.
    await eventually_refused(lambda: held.websocket(a, session_id))
    assert await held.sse(b, session_id) == 429
    assert len(held.open) in (3, 4), "at most one more than the limit"  # 6 with a count per process
    while len(held.open) > 2:
        await held.close(0)  # a's WebSockets
    await eventually_open(lambda: held.websocket(b, session_id))
    await eventually_refused(lambda: held.websocket(a, session_id))
    assert len(held.open) in (3, 4)


async def eventually_refused(open_one: Callable[[], Awaitable[int]]) -> None:
    """The limit holds at this process once it heard of the others' (at most one late)."""
    async with asyncio.timeout(WAIT):
        while await open_one() != 429:
            await asyncio.sleep(0.05)


async def test_a_dead_process_releases_its_connections(
    nodes: StartNodes, http: aiohttp.ClientSession, held: Held
) -> None:
    a, b = await nodes(2, MAX_CONNECTIONS_PER_ADDRESS="2")
    session_id = await create(http, b)
    assert await held.sse(a, session_id) == 200
    assert await held.websocket(a, session_id) == 200
    await eventually_refused(lambda: held.sse(b, session_id))
    assert held.at(b) <= 1, "at most one more than the limit"
    a.signal(signal.SIGKILL)
    a.wait_exit()
    # Once a's lease (OWNER_LEASE_SECONDS, 1 s here) lapses, its connections no longer count.
    while held.at(b) < 2:
        await eventually_open(lambda: held.websocket(b, session_id))
    assert await held.sse(b, session_id) == 429


# -- through Redis Sentinel, across a failover -------------------------------------


async def test_limits_follow_the_primary_through_a_failover(tmp_path: Path) -> None:
    """Over Sentinel (``REDIS_SENTINELS``) the limits go where the session store goes: to
    the primary, and after a manual failover to the new one."""
    group = start_sentinel_group(tmp_path)
    started: list[Process] = []
    try:
        target = RedisTarget(sentinels=tuple(("127.0.0.1", port) for port in group.sentinels), master=MASTER)
        settings = small(max_connections_per_address=2)
        for pid in ("a", "b"):
            store = RedisStore(target, timeout=1.0)
            limits = Limits.from_settings(settings)
            shared = RedisLimits(store, pid, limits, lease=1.0, timeout=1.0)
            running = shared.run()
            await anext(running)
            following = asyncio.get_running_loop().create_task(store.link.follow())
            started.append(Process(limits, shared, store, running, following))
        a, b = started
        await asyncio.wait_for(asyncio.gather(a.shared.listening.wait(), b.shared.listening.wait()), WAIT)
        assert a.limits.connections.acquire(ADDRESS) and a.limits.connections.acquire(ADDRESS)
        await a.shared.sent()
        await wait_until(lambda: b.limits.connections.others(ADDRESS) == 2)
        assert not b.limits.connections.acquire(ADDRESS)

        old = group.nodes[0]
        redis.Redis(port=group.sentinels[0]).execute_command("SENTINEL", "FAILOVER", MASTER)
        await wait_until(lambda: a.store.link.primary not in (None, ("127.0.0.1", old)), PROMOTION)
        await wait_until(lambda: b.store.link.primary not in (None, ("127.0.0.1", old)), PROMOTION)
        a.limits.connections.release(ADDRESS)
        # b hears it (or, its listener still reconnecting, finds it when it refuses and asks).
        await wait_until(lambda: b.limits.connections.acquire(ADDRESS), PROMOTION)
        # What the new primary holds converges on what the processes hold (a process whose
        # deadline lapsed during the failover, or whose write went to the old primary,
        # sends its counts again).
        new = a.store.link.primary
        assert new is not None
        primary = redis.asyncio.Redis(port=new[1], decode_responses=True)
        try:
            async with asyncio.timeout(PROMOTION):
                while await primary.hgetall(address_key(ADDRESS)) != {"a": "1", "b": "1"}:
                    await asyncio.sleep(0.05)
        finally:
            await primary.aclose()
    finally:
        for process in started:
            await process.stop()
        group.stop()
