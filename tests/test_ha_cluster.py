"""Redis mode on a Redis Cluster (``REDIS_CLUSTER_URL``): real server processes on three
primaries with a replica each (``tests/redis_cluster.py``).

Two processes serve sessions whose keys live on different shards (created on one, started and watched on the
other: commands over sharded pub/sub, viewers through the announced reads); a killed
owner's stream is continued by the other process, contiguous; collaborative documents
converge across processes; the per-address limit is shared. Then a primary inside the
cluster dies with streams running on it and viewers on every process: the streams go on
once its replica takes over, no viewer ever holds two histories spliced, new sessions work,
and the streams of the other shards do not wait for it; a manual ``CLUSTER FAILOVER`` (the
old primary stays up) loses nothing. Last, an injected loss (the replica paused so that it
misses appends, then the primary killed): the loss is found, the epoch changes, every
viewer of that stream starts over, never a ``seq`` reused for other text.

The store alone first: one append spans every shard, ``WAIT`` asks each node that took
writes, and the limits' announcements reach every process through the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio

from providers.demo import demo_tokens
from server.cluster.redis_limits import RedisLimits
from server.cluster.redis_store import Append, RedisStore, RedisTarget, chunk_id, log_key, meta_key
from server.guards.ratelimit import Limits
from tests.cluster_nodes import Node, StartNodes, assert_contiguous, create, post, start, status_of
from tests.helpers import WAIT, make_settings, wait_until
from tests.redis_cluster import (
    RedisCluster,
    cluster_processes_fixture,  # noqa: F401  (fixture)
    fresh_cluster_fixture,  # noqa: F401  (fixture)
    process_starter,
    redis_cluster_fixture,  # noqa: F401  (fixture)
    stop_processes,
)
from tests.redis_sentinel import History, assert_never_spliced, watch
from tests.server_process import ServerProcess
from tests.test_collab_cluster import ws
from tests.test_collab_peer import new_document

PROMPT = "Explain streaming"
ADDRESS = "203.0.113.7"
MAX_TOKENS = 300
TTL = 60_000
#: A failover inside the cluster (about 2-3 s) and the rest of a 6 s answer, on a busy machine.
FINISH = WAIT + 30


def expected_text(max_tokens: int = MAX_TOKENS) -> str:
    return "".join(demo_tokens(PROMPT, max_tokens))


async def shard_of(cluster: RedisCluster, session_id: str) -> int:
    return await asyncio.to_thread(cluster.primary_of, meta_key(session_id))


# -- the store alone -------------------------------------------------------------------


@pytest.fixture
async def store(redis_cluster: RedisCluster) -> AsyncIterator[RedisStore]:
    await asyncio.to_thread(redis_cluster.flush)
    store = RedisStore(RedisTarget(cluster=redis_cluster.urls), timeout=3.0)
    yield store
    await store.close()


async def test_one_append_writes_sessions_on_every_shard(store: RedisStore, redis_cluster: RedisCluster):
    sessions = [f"s{index}" for index in range(24)]
    assert len({await shard_of(redis_cluster, s) for s in sessions}) == 3, "the sessions span every shard"
    for session in sessions:
        await store.put_session(session, {"userId": "u", "epoch": "e1"}, "p1", TTL)
    batch = [
        Append(
            session, "1", chunk_id(seq), ("c", f"{session}:{seq}"), ("lastSeq", str(seq)), chunk_id(seq - 1)
        )
        for seq in range(3)
        for session in sessions
    ]
    assert await store.append(batch, TTL) == [item.entry_id for item in batch]
    for session in sessions:
        entries = await store.redis.xrange(log_key(session))
        assert [fields["c"] for _, fields in entries] == [f"{session}:{seq}" for seq in range(3)]
    # Sent again (an answer lost on the way), it is written once.
    assert await store.append(batch, TTL) == [item.entry_id for item in batch]
    assert [await store.redis.xlen(log_key(s)) for s in sessions] == [3] * len(sessions)


async def test_wait_for_replicas_asks_each_node_that_took_writes(redis_cluster: RedisCluster):
    await asyncio.to_thread(redis_cluster.flush)
    store = RedisStore(
        RedisTarget(cluster=redis_cluster.urls), timeout=3.0, wait_replicas=1, wait_timeout_ms=2000
    )
    try:
        sessions = [f"w{index}" for index in range(12)]
        for session in sessions:
            await store.put_session(session, {"userId": "u", "epoch": "e1"}, "p1", TTL)
        batch = [
            Append(session, "1", chunk_id(0), ("c", "x"), ("lastSeq", "0"), "0-0") for session in sessions
        ]
        assert await store.append(batch, TTL) == [chunk_id(0)] * len(sessions)
        assert store.unreplicated == 0, "every shard's replica had its writes"
    finally:
        await store.close()


async def test_a_limit_reached_at_one_process_is_heard_at_the_other(redis_cluster: RedisCluster):
    """The limits' announcements (pub/sub ``limit:reached``, published by their scripts
    whatever slot their keys are in) reach every process through the cluster."""
    await asyncio.to_thread(redis_cluster.flush)
    settings = make_settings(session_rate_per_address=0.0, session_burst_per_address=4.0)
    running = []
    try:
        processes = []
        for pid in ("a", "b"):
            store = RedisStore(RedisTarget(cluster=redis_cluster.urls), timeout=1.0)
            limits = Limits.from_settings(settings)
            shared = RedisLimits(store, pid, limits, lease=5.0, timeout=1.0)
            running.append((shared.run(), store))
            await anext(running[-1][0])
            await asyncio.wait_for(shared.listening.wait(), WAIT)
            processes.append((limits, shared))
        (a, a_shared), (b, _) = processes
        assert all(a.sessions_per_address.take(ADDRESS) == 0 for _ in range(4))
        await a_shared.sent()
        # b asked nothing: it heard the bucket empty, and asked what is left.
        await wait_until(lambda: b.sessions_per_address.tokens(ADDRESS) < 1)
        assert b.sessions_per_address.take(ADDRESS) > 0
    finally:
        for steps, store in running:
            with contextlib.suppress(StopAsyncIteration):
                await anext(steps)
            await store.close()


# -- server processes on the cluster ---------------------------------------------------


async def test_every_process_serves_sessions_on_every_shard(
    cluster_processes: StartNodes, redis_cluster: RedisCluster, http: Any, viewers: Any
):
    a, b = await cluster_processes(2)
    sessions: list[str] = []
    shards: set[int] = set()
    while len(sessions) < 4 or len(shards) < 3:
        session_id = await create(http, (a, b)[len(sessions) % 2], f"user-{len(sessions)}", maxTokens=80)
        sessions.append(session_id)
        shards.add(await shard_of(redis_cluster, session_id))
    recorders = []
    for session_id in sessions:
        for node in (a, b):
            recorders.append((await viewers(node, session_id))[1])
    for index, session_id in enumerate(sessions):
        # Started on the process that does not own it: the command goes over sharded pub/sub.
        assert await start(http, (b, a)[index % 2], session_id, PROMPT) == (200, {"status": "started"})
    for index, session_id in enumerate(sessions):
        on_a, on_b = recorders[2 * index : 2 * index + 2]
        await on_a.wait_finished()
        await on_b.wait_finished()
        final = await status_of(http, a, session_id)
        assert final == await status_of(http, b, session_id), "GET answers the same on every process"
        assert final["state"] == "completed" and final["text"] == expected_text(80)
        assert_contiguous(on_a, final["chunks"])
        assert_contiguous(on_b, final["chunks"])
        assert on_a.text == on_b.text == final["text"]


async def test_a_paused_stream_on_another_process(cluster_processes: StartNodes, http: Any, viewers: Any):
    a, b = await cluster_processes(2)
    session_id = await create(http, a, maxTokens=300, tokensPerSecond=150)
    client_b, on_b = await viewers(b, session_id)
    await start(http, a, session_id, PROMPT)
    await on_b.wait_for(lambda: len(on_b.chunks) >= 5)
    namespace = f"/stream/{session_id}"
    ack = await client_b.call("pause-stream", namespace=namespace, timeout=WAIT)
    assert ack["ok"] is True and ack["state"] == "paused"
    assert (await status_of(http, b, session_id))["chunks"] == ack["lastSeq"] + 1, (
        "the ack follows the effect"
    )
    ack = await client_b.call("resume-stream", namespace=namespace, timeout=WAIT)
    assert ack == {"ok": True, "state": "streaming"}
    await on_b.wait_finished()
    final = await status_of(http, a, session_id)
    assert_contiguous(on_b, final["chunks"])
    assert on_b.text == final["text"] == expected_text()


async def test_a_killed_owner_is_continued_by_the_other_process(
    cluster_processes: StartNodes, http: Any, viewers: Any
):
    a, b = await cluster_processes(2)
    session_id = await create(http, a, maxTokens=400, tokensPerSecond=100)
    _, on_b = await viewers(b, session_id)
    await start(http, a, session_id, PROMPT)
    await on_b.wait_for(lambda: len(on_b.chunks) >= 10)
    a.kill()
    await on_b.wait_finished(timeout=FINISH)
    final = await status_of(http, b, session_id)
    assert on_b.errors == [] and final["state"] == "completed"
    assert_contiguous(on_b, final["chunks"])
    assert on_b.text == final["text"] == expected_text(400)
    assert f"session {session_id[:8]}: took it over" in b.process.output


async def test_collaborators_on_two_processes_converge(cluster_processes: StartNodes, collaborators: Any):
    a, b = await cluster_processes(2)
    document_id = new_document()
    on_a = await collaborators(ws(a), document_id)
    on_b = await collaborators(ws(b), document_id)
    await on_a.command("paragraph", text="from A")
    await on_b.command("paragraph", text="from B")
    await on_a.command("wait", contains="from B")
    await on_b.command("wait", contains="from A")
    assert (await on_a.dump())["json"] == (await on_b.dump())["json"]


async def test_two_processes_share_one_per_address_budget(cluster_processes: StartNodes, http: Any):
    pair = await cluster_processes(2, SESSION_RATE_PER_ADDRESS="0", SESSION_BURST_PER_ADDRESS="6")
    statuses = []
    for turn in range(16):
        status, _ = await post(
            http, f"{pair[turn % 2].url}/api/streaming/session", {"userId": f"user-{turn}"}
        )
        statuses.append(status)
    assert 6 <= statuses.count(200) <= 7, statuses  # 12 with a budget per process
    assert statuses.count(429) == 16 - statuses.count(200)


# -- a primary of the cluster dies -----------------------------------------------------


async def watched_streams(
    http: Any, nodes: list[Node], count: int
) -> tuple[list[str], list[History], list[socketio.AsyncClient]]:
    """``count`` streams, owned by each node in turn, each watched from every node."""
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
    http: Any, node: Node, sessions: list[str], histories: list[History]
) -> list[dict[str, Any]]:
    """Wait for every viewer's end; each ends with ``GET``'s text, never spliced."""
    await asyncio.gather(*(h.wait_for(lambda h=h: h.finished, FINISH) for h in histories))
    per_session = len(histories) // len(sessions)
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
            await asyncio.sleep(0.05)  # polled: a session on the dead shard answers 503 until it moves


def chunks_between(histories: list[History], begin: float, end: float) -> int:
    return sum(1 for h in histories for event, _, when in h.events if event == "chunk" and begin < when < end)


def first_chunk_after(histories: list[History], moment: float) -> float:
    return min(when for h in histories for event, _, when in h.events if event == "chunk" and when > moment)


def repairs(nodes: list[Node]) -> list[str]:
    return [
        line
        for node in nodes
        for line in node.process.output.splitlines()
        if "the store lost its log" in line
    ]


def first_epoch(history: History) -> str:
    states = [payload for event, payload, _ in history.events if event == "stream-state"]
    return str(states[0]["epoch"])


async def close(clients: list[socketio.AsyncClient]) -> None:
    for client in clients:
        if client.connected:
            await client.disconnect()


async def test_a_primary_killed_inside_the_cluster(fresh_cluster: RedisCluster, http: Any):
    started: list[ServerProcess] = []
    a, b = await process_starter(fresh_cluster, started)(2)
    try:
        sessions, histories, clients = await watched_streams(http, [a, b], 6)
        shards = [await shard_of(fresh_cluster, s) for s in sessions]
        victim = shards[0]
        hit = [h for index, h in enumerate(histories) if shards[index // 2] == victim]
        spared = [h for index, h in enumerate(histories) if shards[index // 2] != victim]
        try:
            await asyncio.gather(*(h.wait_for(lambda h=h: len(h.chunks()) >= 5) for h in histories))
            await asyncio.to_thread(fresh_cluster.kill, victim)
            killed_at = time.time()
            await asyncio.to_thread(fresh_cluster.wait_failover, victim)
            promoted_at = time.time()
            ready_after = await new_session_works(http, b)
            finals = await finish(http, a, sessions, histories)
        finally:
            await close(clients)
    finally:
        await stop_processes(started)
    # In flight when it died, a chunk may still reach a viewer: count from a moment later.
    resumed = first_chunk_after(hit, killed_at + 0.2) - killed_at
    meanwhile = chunks_between(spared, killed_at + 0.2, promoted_at)
    epochs = sum(
        1 for final, h in zip(finals, histories[::2], strict=True) if final["epoch"] != first_epoch(h)
    )
    print(
        f"SIGKILL of a cluster primary ({len(hit) // 2} of {len(sessions)} streams on it): its replica took"
        f" over after {promoted_at - killed_at:.2f} s; first chunk of those streams {resumed:.2f} s after the"
        f" kill; the other streams' viewers got {meanwhile} chunks meanwhile; a new session worked"
        f" {ready_after:.2f} s after the takeover; {len(repairs([a, b]))} logs written back; {epochs} of"
        f" {len(sessions)} epochs changed"
    )
    if spared:
        assert meanwhile > 0, "the streams of the other shards went on during the failover"


async def test_a_manual_failover_inside_the_cluster(fresh_cluster: RedisCluster, http: Any):
    """``CLUSTER FAILOVER`` on a replica while its primary stays up: the primary stops
    writes until the replica has them, then answers ``MOVED``; the subscriptions of its
    slots move with them (the node unsubscribes them). Nothing is lost or written back."""
    started: list[ServerProcess] = []
    a, b = await process_starter(fresh_cluster, started)(2)
    try:
        sessions, histories, clients = await watched_streams(http, [a, b], 4)
        shards = [await shard_of(fresh_cluster, s) for s in sessions]
        victim = shards[0]
        hit = [h for index, h in enumerate(histories) if shards[index // 2] == victim]
        try:
            await asyncio.gather(*(h.wait_for(lambda h=h: len(h.chunks()) >= 5) for h in histories))
            replica = fresh_cluster.replicas_of(victim)[0]
            asked_at = time.time()
            await asyncio.to_thread(fresh_cluster.client(replica).execute_command, "CLUSTER FAILOVER")
            await asyncio.to_thread(fresh_cluster.wait_failover, victim)
            switched_after = time.time() - asked_at
            finals = await finish(http, a, sessions, histories)
        finally:
            await close(clients)
    finally:
        await stop_processes(started)
    assert fresh_cluster.role(victim) == "slave", "the old primary follows its replica now"
    assert repairs([a, b]) == [], "nothing was lost"
    assert all(final["epoch"] == first_epoch(h) for final, h in zip(finals, histories[::2], strict=True))
    gap = max(max(b - a for a, b in itertools.pairwise(chunk_times(h))) for h in hit)
    print(
        f"CLUSTER FAILOVER: the slots moved {switched_after:.2f} s after the command; the longest wait"
        f" between two chunks of its {len(hit) // 2} streams at any viewer {gap:.2f} s; nothing written back"
    )


async def test_the_password_stays_secret(http: Any):
    """Every node with a password, given in ``REDIS_CLUSTER_URL``: the server works through a
    primary's failover, and the password shows neither in its logs (debug included) nor in
    its answers."""
    password = "cluster-test-password-0123456789"
    with RedisCluster(password=password) as cluster:
        url = ",".join(f"redis://:{password}@{u.removeprefix('redis://')}" for u in cluster.urls)
        started: list[ServerProcess] = []
        start_processes = process_starter(cluster, started)
        try:
            (a,) = await start_processes(
                1, REDIS_CLUSTER_URL=url, LOG_LEVEL="debug", DEMO_TOKENS_PER_SECOND="0"
            )
            session_id = await create(http, a, "u", maxTokens=20)
            assert (await start(http, a, session_id, PROMPT))[0] == 200
            victim = await shard_of(cluster, session_id)
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.to_thread(cluster.wait_failover, victim)
            await new_session_works(http, a)
            final = await status_of(http, a, session_id)
        finally:
            await stop_processes(started)
    assert final["state"] == "completed"
    output = started[0].output
    assert "redis cluster: the primaries moved" in output, "the failover was seen"
    assert password not in output
    assert password not in str(final)


def chunk_times(history: History) -> list[float]:
    return [when for event, _, when in history.events if event == "chunk"]


async def test_a_replica_misses_appends_then_its_primary_dies(fresh_cluster: RedisCluster, http: Any):
    started: list[ServerProcess] = []
    a, b = await process_starter(fresh_cluster, started)(2)
    try:
        sessions, histories, clients = await watched_streams(http, [a, b], 2)
        victim = await shard_of(fresh_cluster, sessions[0])
        lost = [await shard_of(fresh_cluster, s) == victim for s in sessions]
        replica = fresh_cluster.node(fresh_cluster.replicas_of(victim)[0])
        try:
            await asyncio.gather(*(h.wait_for(lambda h=h: len(h.chunks()) >= 5) for h in histories))
            replica.signal(signal.SIGSTOP)
            try:
                fresh_cluster.client(victim).client_kill_filter(_type="replica")
                counts = [len(h.chunks()) for h in histories[:2]]
                # Written to the primary only, and delivered: its replica will not have these.
                await asyncio.gather(
                    *(
                        h.wait_for(lambda h=h, n=n: len(h.chunks()) >= n + 10)
                        for h, n in zip(histories[:2], counts, strict=True)
                    )
                )
                await asyncio.to_thread(fresh_cluster.kill, victim)
                killed_at = time.time()
            finally:
                replica.signal(signal.SIGCONT)
            await asyncio.to_thread(fresh_cluster.wait_failover, victim)
            finals = await finish(http, a, sessions, histories)
        finally:
            await close(clients)
    finally:
        await stop_processes(started)
    for index, final in enumerate(finals):
        for history in histories[2 * index : 2 * index + 2]:
            if lost[index]:
                assert final["epoch"] != first_epoch(history), "the loss changed the epoch"
                assert history.resets(), "every viewer was told its history was rebuilt"
                assert history.resets()[-1]["epoch"] == final["epoch"]
            else:
                assert final["epoch"] == first_epoch(history) and not history.resets()
    found = repairs([a, b])
    assert len(found) >= sum(lost), found
    resumed = first_chunk_after(histories[:2], killed_at + 0.2) - killed_at
    print(
        f"replica paused, its primary killed: first chunk on the promoted replica {resumed:.2f} s after"
        f" the kill; {'; '.join(found)}"
    )
