"""High availability through Redis Sentinel: real server processes in Redis mode on a
primary, two replicas and three Sentinels (``tests/redis_sentinel.py``), streams running
and viewers on every process, while the primary dies (SIGKILL) or is failed over by hand
and stays up. The streams go on; every viewer ends with ``GET``'s text; no viewer ever
holds two histories spliced (each history is contiguous from ``seq`` 0, a ``stream-reset``
starts the next); new sessions work within seconds of the promotion; and after a manual
failover no write reaches the old primary for longer than the re-check interval."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
import socketio

from providers.demo import demo_tokens
from tests.cluster_nodes import LEASE, Node, create, post, start, status_of
from tests.helpers import WAIT
from tests.redis_sentinel import (
    History,
    SentinelGroup,
    assert_never_spliced,
    sentinel_group_fixture,  # noqa: F401  (fixture)
    sentinel_nodes_fixture,  # noqa: F401  (fixture)
    watch,
)
from tests.server_process import ServerProcess

PROMPT = "Explain streaming"
MAX_TOKENS = 300
#: The outage of a failover (about 3 s) and the rest of a 6 s answer, with room for a busy machine.
FINISH = WAIT + 30
#: Sentinel mode's default ``REDIS_PRIMARY_CHECK_INTERVAL``.
CHECK_INTERVAL = 1.0
#: Writes that only this project's server processes send (the Sentinels send PING, INFO,
#: PUBLISH and REPLICAOF).
WRITES = {"EVALSHA", "EVAL", "SET", "ZADD", "XADD", "HSET", "SADD", "SREM", "DEL", "ZREM", "PEXPIRE"}


def expected_text() -> str:
    return "".join(demo_tokens(PROMPT, MAX_TOKENS))


async def streams_with_viewers(
    http: Any, nodes: list[Node], count: int
) -> tuple[list[str], list[History], list[socketio.AsyncClient]]:
    """``count`` streams, each owned by one of ``nodes`` in turn and watched from every one."""
    sessions, histories, clients = [], [], []
    for index in range(count):
        owner = nodes[index % len(nodes)]
        session_id = await create(http, owner, f"user-{index}", maxTokens=MAX_TOKENS, tokensPerSecond=50)
        sessions.append(session_id)
        for node in nodes:
            client = socketio.AsyncClient(reconnection=False)
            clients.append(client)
            histories.append(await watch(client, node, session_id))
    for index, session_id in enumerate(sessions):
        status, body = await start(http, nodes[index % len(nodes)], session_id, PROMPT)
        assert status == 200, body
    return sessions, histories, clients


async def finish(
    http: Any, node: Node, sessions: list[str], histories: list[History], per_session: int
) -> list[dict[str, Any]]:
    """Wait for every viewer's end; check each against ``GET``; the final statuses."""
    await asyncio.gather(*(h.wait_for(lambda h=h: h.finished, FINISH) for h in histories))
    finals = []
    for index, session_id in enumerate(sessions):
        final = await status_of(http, node, session_id)
        assert final["state"] == "completed", final
        assert final["text"] == expected_text(), "the answer as an undisturbed run gives it"
        for history in histories[index * per_session : (index + 1) * per_session]:
            assert_never_spliced(history, final)
        finals.append(final)
    return finals


async def new_session_works(http: Any, node: Node) -> float:
    """Seconds until a new session can be created and started on ``node``."""
    began = time.monotonic()
    async with asyncio.timeout(WAIT):
        while True:
            status, body = await post(http, f"{node.url}/api/streaming/session", {"userId": "late"})
            if status == 200:
                status, _ = await start(http, node, body["sessionId"], PROMPT)
                if status == 200:
                    return time.monotonic() - began
            await asyncio.sleep(0.05)  # polled: the store answers 503 until it has a primary


def first_chunk_after(histories: list[History], moment: float) -> float:
    return min(when for h in histories for event, _, when in h.events if event == "chunk" and when > moment)


def repairs(nodes: list[Node]) -> list[str]:
    return [
        line
        for node in nodes
        for line in node.process.output.splitlines()
        if "the store lost its log" in line
    ]


async def close(clients: list[socketio.AsyncClient]) -> None:
    for client in clients:
        if client.connected:
            await client.disconnect()


async def test_primary_killed_mid_stream(sentinel_group: SentinelGroup, sentinel_nodes, http):
    a, b = await sentinel_nodes(2)
    sessions, histories, clients = await streams_with_viewers(http, [a, b], 4)
    try:
        await asyncio.gather(*(h.wait_for(lambda h=h: len(h.chunks()) >= 5) for h in histories))
        old = await asyncio.to_thread(sentinel_group.kill_primary)
        killed_at = time.time()
        await asyncio.to_thread(sentinel_group.wait_promotion, old)
        promoted_at = time.time()
        ready_after = await new_session_works(http, b)
        finals = await finish(http, a, sessions, histories, 2)
    finally:
        await close(clients)
    # In flight when it died, a chunk may still reach a viewer: count from a moment later.
    resumed = first_chunk_after(histories, killed_at + 0.2) - killed_at
    epochs = sum(
        1 for final, h in zip(finals, histories[::2], strict=True) if final["epoch"] != first_epoch(h)
    )
    print(
        f"SIGKILL of the primary: promoted after {promoted_at - killed_at:.2f} s; first chunk written on the"
        f" new primary {resumed:.2f} s after the kill; a new session worked {ready_after:.2f} s after the"
        f" promotion; {len(repairs([a, b]))} logs written back ({'; '.join(repairs([a, b]))}); {epochs} of"
        f" {len(sessions)} epochs changed"
    )
    assert ready_after < 5.0


def first_epoch(history: History) -> str | None:
    states = [payload for event, payload, _ in history.events if event == "stream-state"]
    return states[0].get("epoch") if states else None


async def monitor_writes(port: int, password: str | None, seen: list[tuple[float, str, int]]) -> None:
    """Record every write command the server on ``port`` executes (``MONITOR``), with its
    time on that server's clock (this machine's) and the client's port."""
    client = aioredis.Redis(port=port, password=password)
    try:
        async with client.monitor() as monitor:
            async for command in monitor.listen():
                name = str(command.get("command", "")).split(" ", 1)[0].upper()
                if command.get("client_type") == "tcp" and name in WRITES:
                    seen.append((float(command["time"]), name, int(command.get("client_port") or 0)))
    finally:
        await client.aclose()


async def test_manual_failover_with_the_old_primary_alive(
    sentinel_group: SentinelGroup, sentinel_nodes, http
):
    a, b = await sentinel_nodes(2)
    sessions, histories, clients = await streams_with_viewers(http, [a, b], 4)
    writes: list[tuple[float, str, int]] = []
    old = sentinel_group.primary_port()
    monitor = asyncio.create_task(monitor_writes(old, sentinel_group.password, writes))
    try:
        await asyncio.gather(*(h.wait_for(lambda h=h: len(h.chunks()) >= 5) for h in histories))
        subscribed = asyncio.Event()
        announced = asyncio.create_task(sentinel_group.switch_announced(subscribed))
        await subscribed.wait()
        asked_at = time.time()
        assert await asyncio.to_thread(sentinel_group.failover) == old
        new, switched_at = await asyncio.wait_for(announced, WAIT)
        ready_after = await new_session_works(http, a)
        await finish(http, b, sessions, histories, 2)
    finally:
        monitor.cancel()
        await asyncio.gather(monitor, return_exceptions=True)
        await close(clients)
    # Our writes on the old primary: before the switch (acknowledged, and kept or found lost),
    # then none later than the re-check interval after it (the new primary's replication
    # stream to the old one, once demoted, comes from the new primary's port).
    ours = [when for when, _, port in writes if port != new]
    assert ours, "the monitor saw the streams' writes"
    late = max(ours) - switched_at
    print(
        f"SENTINEL FAILOVER: switch announced {switched_at - asked_at:.2f} s after the command; last write"
        f" to the old primary {late:+.3f} s from the switch; a new session worked {ready_after:.2f} s"
        f" after it; {len(repairs([a, b]))} logs written back"
    )
    assert late <= CHECK_INTERVAL, f"a write reached the demoted primary {late:.2f} s after the switch"


async def test_passwords_stay_secret(http):
    """Primary, replicas and Sentinels with passwords (``REDIS_PASSWORD``,
    ``REDIS_SENTINEL_PASSWORD``): the server works through a failover, and neither password
    shows in its logs (debug included) or its answers."""
    password = "sentinel-test-password-0123456789"
    with SentinelGroup(password=password) as group:
        env = {
            **group.env(),
            "OWNER_LEASE_SECONDS": LEASE,
            "LOG_LEVEL": "debug",
            "DEMO_TOKENS_PER_SECOND": "0",
        }
        process = ServerProcess(env)
        await asyncio.to_thread(process.__enter__)
        try:
            (a,) = [Node(process)]
            session_id = await create(http, a, "u", maxTokens=20)
            status, _ = await start(http, a, session_id, PROMPT)
            assert status == 200
            old = await asyncio.to_thread(group.kill_primary)
            await asyncio.to_thread(group.wait_promotion, old)
            await new_session_works(http, a)
            final = await status_of(http, a, session_id)
        finally:
            await asyncio.to_thread(process.__exit__, None, None, None)
            print(process.output)
    assert final["state"] == "completed"
    assert password not in process.output
    assert password not in str(final)
