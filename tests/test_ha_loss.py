"""Loss is detected, never hidden: what a failover (or a restart) can take from the store,
and what the server does about it.

First the store's scripts against one real redis-server: an append that does not follow the
log's head is refused (``Lost``), a batch sent twice is written once, a reader's finding
reaches the owner, a claim that a failover rolled back never repeats a fence, a repair
writes the lost part back under a new epoch, ``WAIT`` that falls short still delivers.
Then real server processes: a log cut short under them (a rollback, then the connections
dropped, as a failover does), and a real one: the replicas paused so that they miss
appends, the primary killed, a replica promoted. Each time the loss is found, the epoch
changes, every viewer gets ``stream-reset`` and the whole log, and no ``seq`` is ever
reused for other text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio

from providers.demo import demo_tokens
from server.cluster.redis_store import (
    RESET_EVENT,
    Append,
    Fenced,
    Lost,
    RedisStore,
    chunk_id,
    log_key,
    meta_key,
)
from tests.cluster_nodes import Node, create, start, status_of
from tests.helpers import WAIT
from tests.redis_sentinel import (
    History,
    SentinelGroup,
    assert_never_spliced,
    sentinel_group_fixture,  # noqa: F401  (fixture)
    sentinel_nodes_fixture,  # noqa: F401  (fixture)
    watch,
)
from tests.redis_server import RedisServer

TTL = 60_000
PROMPT = "Explain streaming"
MAX_TOKENS = 300
FINISH = WAIT + 30


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    redis_server.flush()
    store = RedisStore(redis_server.url, timeout=3.0)
    yield store
    await store.close()


def chunk(seq: int, text: str, fence: str = "1", session: str = "a") -> Append:
    """Chunk ``seq`` as the journal writes it: after the chunk before it."""
    after = chunk_id(seq - 1) if seq else "0-0"
    return Append(session, fence, chunk_id(seq), ("c", text), ("lastSeq", str(seq)), after)


async def roll_back(store: RedisStore, session: str, keep: int) -> None:
    """What a failover to a lagging replica leaves: the log's first ``keep`` chunks."""
    entries = await store.redis.xrange(log_key(session))
    for entry_id, _ in entries[keep:]:
        await store.redis.xdel(log_key(session), entry_id)
    # The replica never had the rest: its stream's last id is the last entry it kept.
    await store.redis.execute_command("XSETID", log_key(session), chunk_id(keep - 1))
    await store.redis.hset(meta_key(session), mapping={"head": chunk_id(keep - 1), "lastSeq": str(keep - 1)})


async def test_an_append_after_a_rolled_back_log_is_refused(store):
    await store.put_session("a", {"userId": "u", "epoch": "e1"}, "p1", TTL)
    assert await store.append([chunk(seq, f"t{seq}") for seq in range(5)], TTL) == [
        chunk_id(s) for s in range(5)
    ]
    await roll_back(store, "a", 3)
    (result,) = await store.append([chunk(5, "t5")], TTL)
    assert isinstance(result, Lost)
    assert result.head == (3, 0) and result.epoch == "e1" and not result.flagged
    assert await store.redis.xlen(log_key("a")) == 3, "nothing of a refused write goes in"
    # A write that says nothing new (meta alone) is refused too: the log is behind it.
    (probe,) = await store.append([Append("a", "1", "", (), (), chunk_id(4))], TTL)
    assert isinstance(probe, Lost)


async def test_a_batch_sent_again_is_written_once(store):
    await store.put_session("a", {"userId": "u", "epoch": "e1"}, "p1", TTL)
    event = Append("a", "1", "1-1", ("e", "stream-state", "p", "{}"), ("state", "paused"), chunk_id(0))
    batch = [chunk(0, "x"), event]
    assert await store.append(batch, TTL) == [chunk_id(0), "1-1"]
    # The answer was lost and the writer sends the same batch, and more, again.
    assert await store.append([*batch, chunk(1, "y")], TTL) == [chunk_id(0), "1-1", chunk_id(1)]
    assert [entry_id for entry_id, _ in await store.redis.xrange(log_key("a"))] == ["1-0", "1-1", "2-0"]


async def test_a_reader_finding_reaches_the_owner(store):
    await store.put_session("a", {"userId": "u", "epoch": "e1"}, "p1", TTL)
    await store.append([chunk(0, "x")], TTL)
    new = await store.mark_lost("a", "e1")
    assert new is not None and new != "e1"
    assert await store.mark_lost("a", "e1") == new, "the epoch changes once, whoever finds it"
    (result,) = await store.append([chunk(1, "y")], TTL)
    assert isinstance(result, Lost) and result.flagged and result.epoch == new
    assert await store.mark_lost("gone", "e1") is None


async def test_a_claim_rolled_back_then_made_again_never_repeats_a_fence(store):
    await store.put_session("a", {"userId": "u", "epoch": "e1"}, "dead", TTL)
    first = await store.claim("a", "dead", "1", "p1")
    assert first is not None and first.startswith("2:")
    assert await store.claim("a", "dead", "1", "p1") == first, "a claim sent again answers the same"
    # A failover loses that claim; another process claims the session on the new primary.
    await store.redis.hset(meta_key("a"), mapping={"owner": "dead", "fence": "1"})
    second = await store.claim("a", "dead", "1", "p2")
    assert second is not None and second.startswith("2:") and second != first
    (result,) = await store.append([chunk(0, "x", fence=first)], TTL)
    assert isinstance(result, Fenced), "the rolled-back owner can no longer write"


async def test_a_repair_writes_the_lost_part_back_under_a_new_epoch(store):
    await store.put_session("a", {"userId": "u", "epoch": "e1"}, "p1", TTL)
    await store.append([chunk(seq, f"t{seq}") for seq in range(5)], TTL)
    await roll_back(store, "a", 3)
    reset = ("e", RESET_EVENT, "p", '{"epoch":"e2"}')
    lost = [(chunk_id(3), ("c", "t3")), (chunk_id(4), ("c", "t4"))]
    args = ("a", "1", chunk_id(2), "e1", "e2", {"lastSeq": "4"}, [("3-1", reset), *lost], TTL)
    assert await store.repair(*args) == "OK"
    entries = await store.redis.xrange(log_key("a"))
    assert [entry_id for entry_id, _ in entries] == ["1-0", "2-0", "3-0", "3-1", "4-0", "5-0"]
    meta = await store.redis.hgetall(meta_key("a"))
    assert meta["epoch"] == "e2" and meta["head"] == "5-0" and "lost" not in meta
    assert await store.append([chunk(5, "t5")], TTL) == [chunk_id(5)]
    # Told another head or another epoch than the store has, a repair writes nothing.
    assert await store.repair(*args) == "EPOCH e2"
    assert await store.repair("a", "1", chunk_id(2), "e2", "e3", {}, [], TTL) == "HEAD 6-0"
    assert await store.repair("a", "9", chunk_id(5), "e2", "e3", {}, [], TTL) == "FENCED"


async def test_wait_that_falls_short_still_delivers(redis_server: RedisServer):
    redis_server.flush()
    store = RedisStore(redis_server.url, timeout=3.0, wait_replicas=1, wait_timeout_ms=10)
    try:
        await store.put_session("a", {"userId": "u", "epoch": "e1"}, "p1", TTL)
        assert await store.append([chunk(0, "x")], TTL) == [chunk_id(0)]
        assert store.unreplicated == 1, "no replica here: counted, and written"
    finally:
        await store.close()


# -- real server processes -------------------------------------------------------------


def expected_text() -> str:
    return "".join(demo_tokens(PROMPT, MAX_TOKENS))


def first_epoch(history: History) -> str:
    states = [payload for event, payload, _ in history.events if event == "stream-state"]
    return str(states[0]["epoch"])


def repairs(nodes: list[Node]) -> list[str]:
    return [
        line
        for node in nodes
        for line in node.process.output.splitlines()
        if "the store lost its log" in line
    ]


async def watched_streams(http: Any, nodes: list[Node]) -> tuple[list[str], list[History], list[Any]]:
    """One stream owned by each node, watched from every node."""
    sessions, histories, clients = [], [], []
    for index, owner in enumerate(nodes):
        session_id = await create(http, owner, f"user-{index}", maxTokens=MAX_TOKENS, tokensPerSecond=50)
        sessions.append(session_id)
        for node in nodes:
            client = socketio.AsyncClient(reconnection=False)
            clients.append(client)
            histories.append(await watch(client, node, session_id))
    for owner, session_id in zip(nodes, sessions, strict=True):
        status, body = await start(http, owner, session_id, PROMPT)
        assert status == 200, body
    return sessions, histories, clients


async def check_rebuilt(http: Any, node: Node, sessions: list[str], histories: list[History]) -> int:
    """Every viewer ends with GET's text, never spliced; every session lost part of its log
    and changed epoch, and each of its viewers started over. Returns the chunks they saw."""
    await asyncio.gather(*(h.wait_for(lambda h=h: h.finished, FINISH) for h in histories))
    per_session = len(histories) // len(sessions)
    for index, session_id in enumerate(sessions):
        final = await status_of(http, node, session_id)
        assert final["state"] == "completed", final
        assert final["text"] == expected_text()
        for history in histories[index * per_session : (index + 1) * per_session]:
            assert_never_spliced(history, final)
            assert final["epoch"] != first_epoch(history), "the loss changed the epoch"
            assert history.resets(), "every viewer was told its history was rebuilt"
            assert history.resets()[-1]["epoch"] == final["epoch"]
    return sum(len(h.chunks()) for h in histories)


async def test_a_log_rolled_back_under_running_servers(nodes, http, redis_server: RedisServer):
    """A rollback (the log's end deleted, as a failover to a lagging replica leaves it),
    then every connection dropped, as a failover drops them."""
    a, b = await nodes(2, REDIS_TIMEOUT="1")
    sessions, histories, clients = await watched_streams(http, [a, b])
    store = RedisStore(redis_server.url, timeout=3.0)
    try:
        await asyncio.gather(*(h.wait_for(lambda h=h: len(h.chunks()) >= 20) for h in histories))
        # One transaction: the end of each log gone and every connection dropped at once.
        rollback = store.redis.pipeline(transaction=True)
        rollback.eval(
            """
            for _, key in ipairs(KEYS) do
              local meta, log = 'stream:{' .. key .. '}:meta', 'stream:{' .. key .. '}:log'
              local entries = redis.call('XRANGE', log, '-', '+')
              for i = 6, #entries do redis.call('XDEL', log, entries[i][1]) end
              redis.call('XSETID', log, entries[5][1])
              redis.call('HSET', meta, 'head', entries[5][1])
            end
            """,
            len(sessions),
            *sessions,
        )
        rollback.client_kill_filter(_type="normal", skipme=True)
        rollback.client_kill_filter(_type="pubsub")
        await rollback.execute()
        seen = await check_rebuilt(http, a, sessions, histories)
    finally:
        await store.close()
        for client in clients:
            if client.connected:
                await client.disconnect()
    assert len(repairs([a, b])) >= len(sessions)
    print(f"rolled back: {len(repairs([a, b]))} logs written back; viewers received {seen} chunks in all")


async def test_replicas_miss_appends_then_the_primary_dies(
    sentinel_group: SentinelGroup, sentinel_nodes, http
):
    a, b = await sentinel_nodes(2)
    sessions, histories, clients = await watched_streams(http, [a, b])
    try:
        await asyncio.gather(*(h.wait_for(lambda h=h: len(h.chunks()) >= 5) for h in histories))
        with sentinel_group.replicas_paused():
            counts = [len(h.chunks()) for h in histories]
            # Written to the primary only, and delivered: the promoted replica will not have these.
            await asyncio.gather(
                *(
                    h.wait_for(lambda h=h, n=n: len(h.chunks()) >= n + 10)
                    for h, n in zip(histories, counts, strict=True)
                )
            )
            old = await asyncio.to_thread(sentinel_group.kill_primary)
            killed_at = time.time()
        await asyncio.to_thread(sentinel_group.wait_promotion, old)
        promoted_after = time.time() - killed_at
        await check_rebuilt(http, a, sessions, histories)
    finally:
        for client in clients:
            if client.connected:
                await client.disconnect()
    found = repairs([a, b])
    assert len(found) >= len(sessions), found
    resumed = min(
        when for h in histories for event, _, when in h.events if event == "chunk" and when > killed_at + 0.2
    )
    print(
        f"replicas paused, primary killed: promoted after {promoted_after:.2f} s, first chunk on the new"
        f" primary {resumed - killed_at:.2f} s after the kill; {'; '.join(found)}"
    )
