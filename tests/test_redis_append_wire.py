"""The append's own connection (``RedisStore.send_append``): replies handed over in the
callback that reads them, the same results as ``append``, and every failure answered
``None`` so that the journal sends the batch again through the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.cluster import redis_journal
from server.cluster.redis_store import Append, Fenced, RedisStore, chunk_id, log_key
from tests.redis_server import RedisServer
from tests.test_redis_store import TTL, assert_logged_and_delivered, journal_chunk, owned_journal
from tests.test_redis_store import chunk as store_chunk


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    redis_server.flush()
    store = RedisStore(redis_server.url, timeout=3.0)
    yield store
    await store.close()


def chunk(session: str, seq: int, text: str, fence: str = "1") -> Append:
    """The entry ``seq`` of a log written by this test alone (the one before it checked)."""
    return store_chunk(session, seq, text, fence, after=f"{seq}-0")


async def opened(store: RedisStore) -> None:
    """Ask for the connection and wait until it is open."""
    assert not store.send_append([], TTL, lambda _: None)
    async with asyncio.timeout(5):
        while store._wire is None or not store._wire.open:
            await asyncio.sleep(0.01)


async def send(store: RedisStore, batch: list[Append]) -> list[Any] | None:
    answer: asyncio.Future[list[Any] | None] = asyncio.get_running_loop().create_future()
    assert store.send_append(batch, TTL, answer.set_result)
    return await answer


async def test_results_are_those_of_append(store):
    await opened(store)
    for session in ("a", "b"):
        await store.put_session(session, {"userId": "u"}, "p1", TTL)
    results = await send(store, [chunk("a", 0, "x"), chunk("b", 0, "y", fence="7"), chunk("a", 1, "z")])
    assert results is not None
    assert results[0] == chunk_id(0) and results[2] == chunk_id(1)
    assert isinstance(results[1], Fenced)
    assert [fields["c"] for _, fields in await store.redis.xrange(log_key("a"))] == ["x", "z"]
    assert await store.redis.xlen(log_key("b")) == 0


async def test_calls_in_flight_are_answered_in_order(store):
    await opened(store)
    await store.put_session("a", {"userId": "u"}, "p1", TTL)
    loop = asyncio.get_running_loop()
    answers: list[asyncio.Future[list[Any] | None]] = [loop.create_future() for _ in range(3)]
    for seq, answer in enumerate(answers):
        assert store.send_append([chunk("a", seq, str(seq))], TTL, answer.set_result)
    assert await asyncio.gather(*answers) == [[chunk_id(seq)] for seq in range(3)]


async def test_a_script_redis_lost_is_answered_none(store):
    await opened(store)
    await store.put_session("a", {"userId": "u"}, "p1", TTL)
    await store.redis.script_flush()
    assert await send(store, [chunk("a", 0, "x")]) is None
    # The client's path loads the script again; the connection stays usable.
    assert await store.append([chunk("a", 0, "x")], TTL) == [chunk_id(0)]
    assert await send(store, [chunk("a", 1, "y")]) == [chunk_id(1)]


async def test_a_lost_connection_answers_none_and_is_opened_again(store):
    await opened(store)
    await store.put_session("a", {"userId": "u"}, "p1", TTL)
    wire = store._wire
    assert wire is not None
    answer: asyncio.Future[list[Any] | None] = asyncio.get_running_loop().create_future()
    assert store.send_append([chunk("a", 0, "x")], TTL, answer.set_result)
    await store.redis.client_kill_filter(skipme=True, _type="normal")
    results = await answer
    # Killed before or after Redis answered: either no answer to trust, or the write (and
    # then the connection's end may come after the answer).
    assert results is None or results == [chunk_id(0)]
    async with asyncio.timeout(5):
        while wire.open:
            await asyncio.sleep(0.01)
    # Not at once after a failure (the client's path meanwhile), then again.
    assert not store.send_append([chunk("a", 1, "y")], TTL, lambda _: None)
    store._wire_after = 0.0
    await opened(store)
    assert store._wire is not wire


async def test_no_answer_in_time_closes_the_connection(store, redis_server):
    await opened(store)
    wire = store._wire
    assert wire is not None
    wire.timeout = 0.2
    await store.put_session("a", {"userId": "u"}, "p1", TTL)
    blocker = RedisStore(redis_server.url, timeout=3.0)
    try:
        # A script that keeps Redis busy for 0.6 s.
        busy = "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > 600000"
        pause = asyncio.get_running_loop().create_task(blocker.redis.eval(busy, 0))
        await asyncio.sleep(0.05)
        assert await send(store, [chunk("a", 0, "x")]) is None
        assert not wire.open
        await pause
    finally:
        await blocker.close()


async def test_a_failover_closes_the_connection(store):
    await opened(store)
    wire = store._wire
    assert wire is not None
    store.link.generation += 1
    for callback in store.link._on_switch:
        callback()
    assert store._wire is None
    await asyncio.sleep(0)
    assert not wire.open
    assert not store.send_append([chunk("a", 0, "x")], TTL, lambda _: None)


async def test_the_journal_writes_on_it_and_survives_its_loss(store, monkeypatch):
    """The journal's batches go on the append's own connection; killed with batches in
    flight, they go again through the client: every session's entries written once, in
    order, and delivered in order, each once it is written."""
    monkeypatch.setattr(redis_journal, "BATCH", 2)
    monkeypatch.setattr(redis_journal, "IN_FLIGHT", 3)
    await opened(store)
    wired: list[int] = []
    send_append = store.send_append

    def counted(batch, ttl_ms, answered):
        sent = send_append(batch, ttl_ms, answered)
        wired.append(int(sent))
        return sent

    monkeypatch.setattr(store, "send_append", counted)
    journal, sessions, ended = await owned_journal(store)
    writer = asyncio.create_task(journal.run())
    try:
        for seq in range(6):
            for session in sessions:
                journal_chunk(journal, session, seq)
            await asyncio.sleep(0)
            if seq == 2:
                assert journal._wired > 0
                assert store._wire is not None
                store._wire.close()
        for session in sessions:
            assert journal.event(session, "complete", {"finishReason": "stop", "usage": None})
        async with asyncio.timeout(10):
            await journal.flushed()
    finally:
        writer.cancel()
    assert 1 in wired
    await assert_logged_and_delivered(store, sessions, 6)
    assert sorted(ended) == list("abcde")
